"""`load()` as an app bundle uses it: from a read-only folder, writing nothing, with no network.

Tests may run as root, for whom a read-only folder is still writable; so besides chmod the folder,
what the process does is recorded with an audit hook (every open for writing, every file-system change,
every socket connection and name lookup), and the folder's files, sizes, times and hashes are compared
before and after.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from mlx_embedgemma import load

TEXTS = ["which planet is red?", "mars is the red planet"]

# Installed before `import mlx_embedgemma`; prints what it saw as the last line, as JSON.
AUDIT = r"""
import json, os, sys
writes, network = [], []
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
CHANGES = {"os.mkdir", "os.rename", "os.replace", "os.remove", "os.rmdir", "os.symlink", "os.link", "os.truncate",
           "os.chmod", "os.chown", "os.utime", "shutil.copyfile", "shutil.copymode", "shutil.move", "shutil.rmtree",
           "shutil.make_archive", "tempfile.mkstemp", "tempfile.mkdtemp"}
NETWORK = {"socket.connect", "socket.bind", "socket.getaddrinfo", "socket.gethostbyname", "urllib.Request",
           "http.client.connect"}

def hook(event, args):
    if event == "open":
        path, mode, flags = (list(args) + [None, None, None])[:3]
        if path == "/dev/null":  # ctypes.util.find_library (the BLAS preload) silences ldconfig with it
            return
        if (isinstance(mode, str) and set(mode) & set("wax+")) or (isinstance(flags, int) and flags & WRITE_FLAGS):
            writes.append(f"open {path} {mode} {flags}")
    elif event == "mmap.__new__" and args[2] != 1:  # (fileno, length, access, offset); 1 = ACCESS_READ
        writes.append(f"writable mmap {args}")
    elif event in CHANGES:
        writes.append(f"{event} {args}")
    elif event in NETWORK:
        network.append(f"{event} {args}")

sys.addaudithook(hook)
"""


def snapshot(folder: Path) -> dict[str, tuple]:
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns, p.stat().st_mode,
                                     hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None)
        for p in sorted(folder.rglob("*"))
    }


def make_read_only(folder: Path) -> None:
    for p in [folder, *folder.rglob("*")]:
        p.chmod(p.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def make_writable(folder: Path) -> None:  # so pytest can delete it
    for p in [folder, *folder.rglob("*")]:
        p.chmod(p.stat().st_mode | stat.S_IWUSR)


@pytest.fixture
def home(tmp_path, tiny_f32, tiny_q4):
    """A home folder with read-only copies of the tiny models in ~/models."""
    home = tmp_path / "home"
    for name, folder in (("tiny-f32", tiny_f32), ("tiny-q4", tiny_q4)):
        shutil.copytree(folder, home / "models" / name)
    make_read_only(home / "models")
    yield home
    make_writable(home / "models")


def test_load_reads_only_from_a_read_only_folder(home, tmp_path, tiny_f32, tiny_q4):
    before = snapshot(home / "models")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    # HOME points at the fake home, so "~" resolves there; hub variables are unset (no offline mode to hide behind).
    env.update(HOME=str(home), PYTHONDONTWRITEBYTECODE="1", HF_HOME=str(tmp_path / "hf-home"))
    code = AUDIT + textwrap.dedent(f"""
        from pathlib import Path
        import mlx_embedgemma
        texts = {TEXTS!r}
        out = {{
            "q4 via ~": mlx_embedgemma.load("~/models/tiny-q4").encode(texts).tolist(),
            "f32 relative": mlx_embedgemma.load("models/tiny-f32").encode(texts).tolist(),
            "f32 Path": mlx_embedgemma.load(Path({str(home)!r}) / "models" / "tiny-f32").encode(texts).tolist(),
        }}
        print(json.dumps({{"writes": writes, "network": network, "out": out}}))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180, cwd=home, env=env)
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert seen["writes"] == [], "load/encode wrote: " + "; ".join(seen["writes"][:10])
    assert seen["network"] == [], "load/encode used the network: " + "; ".join(seen["network"][:10])
    assert snapshot(home / "models") == before
    assert not (tmp_path / "hf-home").exists()
    # The same models as the writable originals.
    np.testing.assert_array_equal(np.array(seen["out"]["q4 via ~"], np.float32), load(tiny_q4).encode(TEXTS))
    f32 = load(tiny_f32).encode(TEXTS)
    np.testing.assert_array_equal(np.array(seen["out"]["f32 relative"], np.float32), f32)
    np.testing.assert_array_equal(np.array(seen["out"]["f32 Path"], np.float32), f32)


def test_audit_hook_sees_writes(tmp_path):
    """The check above would catch a write: the hook reports one made on purpose."""
    code = AUDIT + textwrap.dedent(f"""
        open({str(tmp_path / "x")!r}, "w").close()
        os.mkdir({str(tmp_path / "d")!r})
        print(json.dumps({{"writes": writes}}))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert len(json.loads(proc.stdout.strip().splitlines()[-1])["writes"]) == 2
