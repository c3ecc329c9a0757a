"""MLX for PyInstaller (pyinstaller-hooks-contrib 2026.9 has no hook for it).

- ``libmlx`` (mlx/lib) is collected where the wheel keeps it, and ``mlx.metallib`` (macOS: the Metal
  kernels) beside it, as a binary (see ``metallib_binaries``): MLX looks for the metallib next to the
  library it was loaded from, so the two must stay together (mlx 0.32.x was reported unable to find it
  in bundles that separated them).
- ``mlx.core`` imports a few Python modules from C++ (``mlx._reprlib_fix``, ``mlx.__array_api_info``),
  which PyInstaller's bytecode scan cannot see. The build helper ``mlx.extension`` (setuptools) and the
  distributed launcher are left out.
"""

from PyInstaller.utils.hooks import collect_dynamic_libs, collect_submodules, get_package_paths

from mlx_embedgemma.__pyinstaller import metallib_binaries

binaries = collect_dynamic_libs("mlx") + metallib_binaries(get_package_paths("mlx")[1])
hiddenimports = collect_submodules(
    "mlx", filter=lambda name: not name.startswith(("mlx.extension", "mlx._distributed_utils", "mlx.__main__"))
)
