"""PyInstaller hooks for apps that embed mlx-embedgemma.

PyInstaller finds them through this package's ``pyinstaller40`` entry point (see pyproject.toml), so
``pyinstaller app.py`` needs no ``--collect-all`` flags: hook-mlx.py collects MLX's shared libraries
and Metal kernels, hook-mlx_embedgemma.py this package's runtime (and, on Linux, OpenBLAS).
"""

import os
from pathlib import Path


def get_hook_dirs() -> list[str]:
    return [os.path.dirname(__file__)]


def metallib_binaries(package_dir: Path) -> list[tuple[str, str]]:
    """Every ``*.metallib`` of the package at ``package_dir``, as PyInstaller binaries (source, destination folder).

    As binaries, not data: in a macOS ``.app`` PyInstaller puts binaries in ``Contents/Frameworks`` and
    data in ``Contents/Resources``, and MLX looks for ``mlx.metallib`` in the folder of the ``libmlx`` it
    loaded, so the kernels must go where the library goes. Each keeps its folder within the package
    (``mlx/lib``), which is where ``collect_dynamic_libs`` puts ``libmlx``.
    """
    package_dir = Path(package_dir)
    return [(str(path), str(path.parent.relative_to(package_dir.parent)))
            for path in sorted(package_dir.rglob("*.metallib"))]
