"""C sources of the CPU kernels (see mlx_embedgemma/native.py); the built library lands here."""
