"""mlx-embedgemma's runtime for PyInstaller: the model code, not the tools.

The converter, the benchmark harness and the CLI (and what they import: click, torch, transformers,
sentence-transformers, matplotlib, huggingface_hub) are development tools, not part of an app that
embeds texts; excluding them keeps a frozen app lean even when the build environment has them.

The native CPU kernels (mlx_embedgemma/_native/eg_kernels*.so) are opened with ctypes, which PyInstaller
cannot see: they are collected here, into the folder where native.py looks for them.
"""

from pathlib import Path

from PyInstaller.utils.hooks import collect_data_files, get_package_paths

datas = collect_data_files("mlx_embedgemma", includes=["py.typed"])
# Imported on first use by mlx_embedgemma.__getattr__, so listed rather than left to the import scan.
hiddenimports = ["mlx_embedgemma.loading", "mlx_embedgemma.embedder"]
excludedimports = [
    "mlx_embedgemma.convert", "mlx_embedgemma.benchmarks", "mlx_embedgemma.cli", "mlx_embedgemma.__pyinstaller",
    "click", "torch", "transformers", "sentence_transformers", "matplotlib", "huggingface_hub",
]
_, _package = get_package_paths("mlx_embedgemma")
binaries = [(str(p), "mlx_embedgemma/_native") for p in sorted(Path(_package, "_native").glob("eg_kernels*"))
            if p.suffix in (".so", ".pyd", ".dylib")]
