"""Conversion under faults: SIGKILL mid-write, a full disk, a read-only OUTPUT folder, a read-only source.

In every case no OUTPUT is left half-written, an existing OUTPUT is untouched and the source is never
modified. Where the fault can be real here (a small tmpfs, a read-only mount: root only), it is; the
same paths are also driven by failing writes, so they are tested on every machine.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from mlx_embedgemma import load
from mlx_embedgemma.cli import main
from mlx_embedgemma.convert import OutputExistsError, OutputWriteError, convert
from processes import kill_when
from test_convert_errors import assert_nothing_written, leftovers, tree_digest


@pytest.fixture
def src(tiny_source, tmp_path) -> Path:
    return Path(shutil.copytree(tiny_source, tmp_path / "source"))


def existing_output(out: Path) -> dict[str, str]:
    out.mkdir(parents=True)
    (out / "marker.txt").write_text("keep me", encoding="utf-8")
    return tree_digest(out)


# --- SIGKILL mid-write -----------------------------------------------------------------------------


def script() -> str:
    path = shutil.which("mlx-embedgemma", path=os.path.dirname(sys.executable))
    if path is None:
        pytest.skip("the mlx-embedgemma console script is not installed next to this Python")
    return path


def kill_while_writing(cmd: list[str], out: Path, cwd: Path) -> bool:
    """Run ``cmd``; SIGKILL it once its hidden work folder holds a file. False if it finished first."""
    return kill_when(cmd, cwd, lambda: out.parent.exists() and any(any(p.iterdir()) for p in leftovers(out) if p.is_dir()), 0.001)


@pytest.mark.parametrize("force", [False, True], ids=["new-output", "existing-output"])
def test_sigkill_mid_write_leaves_no_output_and_the_next_run_cleans_up(src, tmp_path, force):
    out = tmp_path / "converted" / "model"
    source_before = tree_digest(src)
    cmd = [script(), "convert", str(src), str(out), "--no-quantize"] + (["--force"] if force else [])
    for _ in range(10):
        if out.exists():
            shutil.rmtree(out)
        old = existing_output(out) if force else None
        if kill_while_writing(cmd, out, tmp_path):
            break
    else:
        pytest.fail("the conversion finished before it could be killed, 10 times")

    if force:
        assert tree_digest(out) == old  # the previous OUTPUT, as it was
    else:
        assert not out.exists()
    assert tree_digest(src) == source_before
    # SIGKILL skips every cleanup: the hidden work folder stays until the next run into this OUTPUT.
    assert leftovers(out)
    convert(src, out, quantize=False, force=force)
    assert leftovers(out) == []
    assert load(out).encode("mars").shape == (64,)
    assert tree_digest(src) == source_before


def test_kill_between_the_two_renames_of_force_is_undone_by_the_next_run(src, tmp_path):
    """--force moves OUTPUT aside, then renames the new folder in; killed in between, OUTPUT is back next run."""
    out = tmp_path / "converted" / "model"
    old = existing_output(out)
    dead = subprocess.Popen(["true"])
    dead.wait()
    aside = out.parent / f".{out.name}.old-{dead.pid}-abc123"
    aside.mkdir()
    os.replace(out, aside / out.name)
    assert not out.exists()
    with pytest.raises(OutputExistsError):  # the restored OUTPUT exists again, and --force was not given
        convert(src, out, quantize=False)
    assert tree_digest(out) == old
    assert leftovers(out) == []


# --- a full disk -----------------------------------------------------------------------------------


@contextmanager
def mount(target: Path, *args: str):
    """A real mount (root only, where the container allows it); skips the test otherwise."""
    target.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    proc = subprocess.run(["mount", *args, str(target)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount here: {proc.stderr.strip()}")
    try:
        yield target
    finally:
        subprocess.run(["umount", str(target)], check=True)


def test_real_full_disk(src, tmp_path):
    with mount(tmp_path / "small", "-t", "tmpfs", "-o", "size=400k", "tmpfs") as disk:
        out = disk / "model"
        with pytest.raises(OutputWriteError) as info:
            convert(src, out, quantize=False)  # 700 kB of float32 weights
        message = str(info.value)
        assert str(out) in message and "the disk is full" in message and "free some space or choose an OUTPUT on another disk" in message
        assert "Nothing was written" in message
        assert_nothing_written(out)
        assert list(disk.iterdir()) == []


@pytest.mark.parametrize("force", [False, True], ids=["new-output", "existing-output"])
@pytest.mark.parametrize("failing", ["weights", "tokenizer"])
def test_disk_full_while_writing(src, tmp_path, monkeypatch, force, failing):
    import mlx_embedgemma.convert.converter as converter

    out = tmp_path / "converted" / "model"
    old = existing_output(out) if force else None
    source_before = tree_digest(src)
    if failing == "weights":
        save = converter.mx.save_safetensors

        def full_disk(path, *args, **kwargs):
            save(path, *args, **kwargs)
            os.truncate(path, 1000)  # part of the file got out, as on a real full disk
            raise RuntimeError("[write] Unable to write 8 bytes to file.")  # what MLX raises, without errno

        monkeypatch.setattr(converter.mx, "save_safetensors", full_disk)
        monkeypatch.setattr("mlx_embedgemma.convert.output.shutil.disk_usage", lambda _: SimpleNamespace(free=0))
    else:
        def full_disk(a, b):
            Path(b).write_bytes(b"x" * 10)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(b))

        monkeypatch.setattr(converter.shutil, "copyfile", full_disk)
    with pytest.raises(OutputWriteError, match=r"could not write .*the disk is full.*free some space.*Nothing was written") as info:
        convert(src, out, quantize=False, force=force)
    if force:
        assert f"the existing {out} is unchanged" in str(info.value)
        assert tree_digest(out) == old
        assert leftovers(out) == []
    else:
        assert_nothing_written(out)
    assert tree_digest(src) == source_before


def test_cli_reports_a_full_disk_without_a_traceback(src, tmp_path, monkeypatch):
    import mlx_embedgemma.convert.converter as converter

    def full_disk(a, b):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(b))

    monkeypatch.setattr(converter.shutil, "copyfile", full_disk)
    out = tmp_path / "model"
    result = CliRunner().invoke(main, ["convert", str(src), str(out), "--no-quantize"])
    assert result.exit_code == 1
    assert "the disk is full" in result.output and "Traceback" not in result.output
    assert_nothing_written(out)


# --- read-only OUTPUT folder, read-only source --------------------------------------------------------


def test_read_only_output_folder_is_refused_before_any_work(src, tmp_path, monkeypatch):
    parent = tmp_path / "locked"
    if os.geteuid() == 0:  # root ignores permission bits: a read-only mount is the real thing
        context = mount(parent, "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs")
    else:
        parent.mkdir()
        parent.chmod(0o555)
        context = _nothing(parent)
    import mlx_embedgemma.convert.converter as converter

    monkeypatch.setattr(converter, "read_checkpoint", lambda folder: pytest.fail("the source was read"))
    with context:
        result = CliRunner().invoke(main, ["convert", str(src), str(parent / "model"), "--no-quantize"])
        assert result.exit_code == 1
        assert f"cannot write into {parent}" in result.output and "writable folder" in result.output
        assert list(parent.iterdir()) == []
    if os.geteuid() != 0:
        parent.chmod(0o755)


def test_output_folder_that_refuses_writes_despite_its_permissions(src, tmp_path, monkeypatch):
    """Some filesystems (network mounts, ACLs) say writable and then refuse: the error still names the fix."""
    out = tmp_path / "converted" / "model"

    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(out.parent))

    monkeypatch.setattr("mlx_embedgemma.convert.output.tempfile.mkdtemp", refuse)
    with pytest.raises(OutputWriteError, match=r"could not write .*its folder is not writable: choose an OUTPUT in a writable folder"):
        convert(src, out, quantize=False)
    assert_nothing_written(out)


@contextmanager
def _nothing(value):
    yield value


def test_read_only_source_converts_and_stays_unchanged(src, tmp_path):
    before = tree_digest(src)
    for path in [src, *src.rglob("*")]:
        path.chmod(path.stat().st_mode & ~0o222)
    try:
        if os.geteuid() == 0:  # root ignores the bits above: convert from a read-only bind mount too
            with mount(tmp_path / "ro-source", "--bind", "-o", "ro", str(src)) as ro:
                with pytest.raises(OSError):
                    (ro / "probe").write_text("x")  # the mount really is read-only
                convert(ro, tmp_path / "from-mount", quantize=False)
        convert(src, tmp_path / "out", bits=4, group_size=32)
    finally:
        for path in [src, *src.rglob("*")]:
            path.chmod(path.stat().st_mode | 0o200)
    assert tree_digest(src) == before
