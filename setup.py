"""The CPU kernels (mlx_embedgemma/_native) as an optional compiled part: everything else is in pyproject.toml.

Built when a C compiler is present; if it is missing or fails, the install goes on without them and the
package runs MLX's own CPU operations (slower; `mlx-embedgemma info` says which kernel is in use).
"""

import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    def run(self):
        try:
            super().run()
        except Exception as e:  # no compiler at all
            print(f"mlx-embedgemma: native CPU kernels not built ({e}); using MLX's CPU operations", file=sys.stderr)

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as e:
            print(f"mlx-embedgemma: native CPU kernels not built ({e}); using MLX's CPU operations", file=sys.stderr)


flags = [] if sys.platform == "win32" else ["-O3", "-std=gnu11", "-fno-math-errno", "-pthread"]
kernels = Extension(
    "mlx_embedgemma._native.eg_kernels",
    sources=["mlx_embedgemma/_native/kernels.c"],
    depends=["mlx_embedgemma/_native/kernels_impl.h", "mlx_embedgemma/_native/kernels_int8.h"],
    extra_compile_args=flags,
    extra_link_args=[] if sys.platform == "win32" else ["-pthread", "-lm"],
    optional=True,
)

setup(ext_modules=[kernels], cmdclass={"build_ext": OptionalBuildExt})
