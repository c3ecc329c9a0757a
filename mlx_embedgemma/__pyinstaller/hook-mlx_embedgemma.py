"""mlx-embedgemma's runtime for PyInstaller: the model code, not the tools.

The converter, the benchmark harness and the CLI (and what they import: click, torch, transformers,
sentence-transformers, matplotlib, huggingface_hub) are development tools, not part of an app that
embeds texts; excluding them keeps a frozen app lean even when the build environment has them.

On Linux the runtime preloads OpenBLAS before MLX (see _blas.py): MLX's CPU wheel otherwise runs its
matmuls on the reference BLAS, ~30x slower. The library is dlopen'ed by name, which PyInstaller cannot
see, so it is collected here when the build machine has it; the frozen app loads that copy first.
"""

import ctypes.util
import sys

from PyInstaller.depend.bindepend import resolve_library_path
from PyInstaller.utils.hooks import collect_data_files

datas = collect_data_files("mlx_embedgemma", includes=["py.typed"])
# Imported on first use by mlx_embedgemma.__getattr__, so listed rather than left to the import scan.
hiddenimports = ["mlx_embedgemma.loading", "mlx_embedgemma.embedder"]
excludedimports = [
    "mlx_embedgemma.convert", "mlx_embedgemma.benchmarks", "mlx_embedgemma.cli", "mlx_embedgemma.__pyinstaller",
    "click", "torch", "transformers", "sentence_transformers", "matplotlib", "huggingface_hub",
]
binaries = []
if sys.platform == "linux":
    name = ctypes.util.find_library("openblas")
    path = name and resolve_library_path(name)
    if path:
        binaries.append((path, "."))
