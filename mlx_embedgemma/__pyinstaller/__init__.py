"""PyInstaller hooks for apps that embed mlx-embedgemma.

PyInstaller finds them through this package's ``pyinstaller40`` entry point (see pyproject.toml), so
``pyinstaller app.py`` needs no ``--collect-all`` flags: hook-mlx.py collects MLX's shared libraries
and Metal kernels, hook-mlx_embedgemma.py this package's runtime (and, on Linux, OpenBLAS).
"""

import os


def get_hook_dirs() -> list[str]:
    return [os.path.dirname(__file__)]
