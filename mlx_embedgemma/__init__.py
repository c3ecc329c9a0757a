"""EmbeddingGemma-300m on MLX.

    from mlx_embedgemma import load
    model = load("path/to/converted")
    q = model.encode_query("Which planet is known as the Red Planet?", dim=256)
"""

__version__ = "0.1.0"
__all__ = ["load", "EmbeddingGemma", "TruncationWarning", "ModelFolderError", "__version__"]


def __getattr__(name: str):
    # Imported on first use so `import mlx_embedgemma` stays cheap and never pulls the CLI or converter.
    if name in ("load", "ModelFolderError"):
        from . import loading

        return getattr(loading, name)
    if name in ("EmbeddingGemma", "TruncationWarning"):
        from . import embedder

        return getattr(embedder, name)
    raise AttributeError(f"module 'mlx_embedgemma' has no attribute {name!r}")
