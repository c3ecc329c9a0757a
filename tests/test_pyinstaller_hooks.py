"""The PyInstaller hook for MLX on a fake MLX layout (fast; freezing a real app is tests/test_pyinstaller.py).

Linux wheels have no Metal kernels, so the layout of the macOS wheel (libmlx.dylib and mlx.metallib in
mlx/lib) is faked here to check where the hook sends the metallib.
"""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

hooks = pytest.importorskip("PyInstaller.utils.hooks", reason="PyInstaller is not installed (it is in the test extra)")

from mlx_embedgemma.__pyinstaller import get_hook_dirs, metallib_binaries  # noqa: E402


@pytest.fixture
def fake_mlx(tmp_path) -> Path:
    """site-packages/mlx as the macOS wheel lays it out."""
    package = tmp_path / "site-packages" / "mlx"
    for name in ["__init__.py", "core.cpython-311-darwin.so", "lib/libmlx.dylib", "lib/mlx.metallib"]:
        (package / name).parent.mkdir(parents=True, exist_ok=True)
        (package / name).write_bytes(b"")
    return package


def test_the_metallib_is_a_binary_bound_for_libmlx_folder(fake_mlx):
    assert metallib_binaries(fake_mlx) == [(str(fake_mlx / "lib" / "mlx.metallib"), "mlx/lib")]


def test_a_wheel_without_metal_kernels_adds_nothing(fake_mlx):
    (fake_mlx / "lib" / "mlx.metallib").unlink()
    assert metallib_binaries(fake_mlx) == []


def test_the_hook_collects_the_metallib_beside_libmlx_and_not_as_data(fake_mlx, monkeypatch):
    libmlx = (str(fake_mlx / "lib" / "libmlx.dylib"), "mlx/lib")
    monkeypatch.setattr(hooks, "get_package_paths", lambda name: (str(fake_mlx.parent), str(fake_mlx)))
    monkeypatch.setattr(hooks, "collect_dynamic_libs", lambda name: [libmlx])
    monkeypatch.setattr(hooks, "collect_submodules", lambda name, filter=None: [])
    hook = runpy.run_path(str(Path(get_hook_dirs()[0]) / "hook-mlx.py"))
    destinations = {Path(source).name: dest for source, dest in hook["binaries"]}
    assert destinations == {"libmlx.dylib": "mlx/lib", "mlx.metallib": "mlx/lib"}
    assert not [d for d in hook.get("datas", []) if d[0].endswith(".metallib")]
