"""Local search over a folder of text and Markdown files, in one SQLite file.

`mlx-embedgemma index DIR --db FILE` cuts the files into chunks measured in the model's tokens
(:mod:`.chunking`), embeds them with the ``document`` prompt and stores them with a full-text index
(:mod:`.store`), as float32, int8 or binary first-pass codes (:mod:`.quantize`); `--watch` keeps the store
current (:mod:`.watch`). `mlx-embedgemma search` ranks by meaning, by keywords (BM25), or both fused
(:mod:`.ranking`); `mlx-embedgemma mcp` serves the search to agents (:mod:`.mcp_server`). Nothing leaves the
machine. Nothing here imports an optional dependency until it is used.
"""

from .chunking import DEFAULT_EXTENSIONS, MARKDOWN_EXTENSIONS, Chunk, chunk_document

__all__ = ["DEFAULT_EXTENSIONS", "MARKDOWN_EXTENSIONS", "MODES", "Chunk", "Hit", "IndexReport", "Results",
           "SearchIndex", "StoreError", "chunk_document", "rebuild"]


def __getattr__(name: str):
    # The store needs the model (MLX) and sqlite3: imported on first use, so the CLI can read the
    # extension list without them.
    if name in __all__:
        from . import store

        return getattr(store, name)
    raise AttributeError(f"module 'mlx_embedgemma.search' has no attribute {name!r}")
