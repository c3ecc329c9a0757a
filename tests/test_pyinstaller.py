"""Freeze a small app with PyInstaller (onedir, this package's hooks), run it, compare its embeddings.

Slow (about a minute to build on two cores): PyInstaller analyses and copies the whole dependency tree.
Run on Linux with the CPU backend; the macOS-only parts (Metal's mlx.metallib, code signing) are
described in the README and not tested here.
"""

from __future__ import annotations

import ctypes.util
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import mlx_embedgemma
from mlx_embedgemma import load

pytest.importorskip("PyInstaller", reason="PyInstaller is not installed (it is in the test extra)")
pytestmark = pytest.mark.slow

TEXTS = ["which planet is red?", "mars is the red planet", ""]
APP = f'''
"""An app that embeds texts with models given on the command line."""
import sys

import mlx_embedgemma
import numpy as np

vectors = {{f"m{{i}}": mlx_embedgemma.load(path).encode_query({TEXTS!r}) for i, path in enumerate(sys.argv[2:])}}
np.savez(sys.argv[1], **vectors)
print("frozen" if getattr(sys, "frozen", False) else "not frozen")
print("blas:", mlx_embedgemma._blas.status)
'''
# Never part of an app that only embeds (the hook excludes the tools and what they import).
NOT_IN_BUNDLE = ["torch", "transformers", "sentence_transformers", "click", "matplotlib", "huggingface_hub",
                 "mlx_embedgemma.convert", "mlx_embedgemma.benchmarks", "mlx_embedgemma.cli", "mlx.extension"]


@pytest.fixture(scope="module")
def frozen_app(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("pyinstaller")
    (work / "app.py").write_text(textwrap.dedent(APP), encoding="utf-8")
    # An editable install is found through an import hook, which PyInstaller does not follow; pointing it
    # at the folder that holds the package works for both kinds of install.
    package_parent = Path(mlx_embedgemma.__file__).resolve().parents[1]
    proc = subprocess.run(
        [sys.executable, "-m", "PyInstaller", "--onedir", "--noconfirm", "--log-level", "WARN", "--name", "app",
         "--distpath", str(work / "dist"), "--workpath", str(work / "build"), "--specpath", str(work / "spec"),
         "--paths", str(package_parent), str(work / "app.py")],
        capture_output=True, text=True, timeout=900, cwd=work,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return work


def test_frozen_app_embeds_like_the_unfrozen_package(frozen_app, tiny_f32, tiny_q4, tmp_path):
    frozen_app = frozen_app / "dist" / "app"
    out = tmp_path / "vectors.npz"
    proc = subprocess.run([str(frozen_app / "app"), str(out), str(tiny_f32), str(tiny_q4)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "frozen" in proc.stdout.splitlines()[0] and "not frozen" not in proc.stdout
    vectors = np.load(out)
    np.testing.assert_allclose(vectors["m0"], load(tiny_f32).encode_query(TEXTS), atol=1e-6, rtol=0)
    np.testing.assert_allclose(vectors["m1"], load(tiny_q4).encode_query(TEXTS), atol=1e-6, rtol=0)
    if sys.platform == "linux" and ctypes.util.find_library("openblas"):
        # The hook collected the build machine's OpenBLAS, and the app loads that copy, not the system's.
        assert f"loaded {frozen_app / '_internal'}" in proc.stdout, proc.stdout


def test_bundle_holds_mlx_and_not_the_tools(frozen_app):
    build = frozen_app / "build" / "app"
    # Python modules live in the PYZ archive; its table of contents names them all.
    modules = set(re.findall(r"\('([\w.]+)',", (build / "PYZ-00.toc").read_text()))
    assert {"mlx_embedgemma.loading", "mlx_embedgemma.embedder", "mlx.nn"} <= modules
    present = sorted(m for m in modules if any(m == n or m.startswith(n + ".") for n in NOT_IN_BUNDLE))
    assert present == [], f"the bundle carries {present[:10]}"
    frozen_app = frozen_app / "dist" / "app"
    internal = frozen_app / "_internal"
    libs = sorted(internal.rglob("libmlx.*"))
    assert any(p.parent == internal / "mlx" / "lib" for p in libs), libs  # where mlx.core's RPATH looks
    # MLX finds its Metal kernels next to libmlx: collected as binaries, so a .app keeps them together
    # (Linux wheels have none; tests/test_pyinstaller_hooks.py checks the hook on a macOS layout).
    metallibs = sorted(internal.rglob("*.metallib"))
    assert all(m.parent == internal / "mlx" / "lib" for m in metallibs), metallibs
    analysis = (build / "Analysis-00.toc").read_text()
    assert set(re.findall(r"\.metallib',\s*'[^']*',\s*'(\w+)'", analysis)) <= {"BINARY"}
    if sys.platform == "darwin":
        assert metallibs, "the bundle has no mlx.metallib"
    assert not [p for p in internal.iterdir() if p.name.split("-")[0] in ("torch", "transformers")]  # no native parts
    size_mb = sum(p.stat().st_size for p in frozen_app.rglob("*") if p.is_file() and not p.is_symlink()) / 1e6
    assert size_mb < 300, f"the bundle is {size_mb:.0f} MB"
