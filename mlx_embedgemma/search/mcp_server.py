"""`mlx-embedgemma mcp --db FILE`: the store's search as a Model Context Protocol tool, over stdio.

Uses the official Python SDK (``mcp`` >= 2, the ``[mcp]`` extra). One tool, ``search(query, k, mode)``,
answers a list of {file, line, heading, score, text} and the notes of :class:`~.store.Results`; a bad
argument is a tool error (the SDK's ``ToolError``, whose text reaches the caller) naming the fix.
"""

from __future__ import annotations

from pathlib import Path

from typing_extensions import TypedDict  # pydantic needs this one before Python 3.12; the SDK depends on it

from ..embedder import EmbeddingGemma
from .store import MODES, SearchIndex, StoreError

MAX_K = 100


class Result(TypedDict):
    file: str
    line: int
    heading: str
    score: float
    text: str


class Answer(TypedDict):
    results: list[Result]
    notes: list[str]


def build_server(db: str | Path, model: EmbeddingGemma):
    try:
        from mcp.server import MCPServer
        from mcp.server.mcpserver.exceptions import ToolError
    except ImportError:
        raise ImportError("the MCP server needs the official MCP SDK: pip install 'mlx-embedgemma[mcp]'") from None
    store = SearchIndex(db)
    server = MCPServer("mlx-embedgemma", instructions=f"Search the files indexed in {Path(db).name} by meaning and keywords.")

    # Async on purpose: the SDK runs a sync tool on a worker thread, and the store's SQLite connection
    # and the model then run on the event loop's thread, one call at a time.
    @server.tool()
    async def search(query: str, k: int = 10, mode: str = "hybrid") -> Answer:
        """Search the indexed files. mode: hybrid (meaning and keywords, the default), vector (meaning only)
        or keyword (BM25 over the words). Returns the best chunks: file, line, heading, score and text."""
        if not query.strip():
            raise ToolError("the query is empty: give a few words or a question")
        if not 1 <= k <= MAX_K:
            raise ToolError(f"k must be between 1 and {MAX_K}, got {k}")
        if mode not in MODES:
            raise ToolError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        try:
            results = store.search(model, query, k=k, mode=mode)
        except StoreError as e:  # a message for the caller (no words to match...): the SDK hides other errors' text
            raise ToolError(str(e)) from None
        return {
            "results": [{"file": h.path, "line": h.start_line, "heading": h.heading, "score": h.score, "text": h.text}
                        for h in results.hits],
            "notes": results.notes,
        }

    return server


def serve(db: str | Path, model: EmbeddingGemma) -> None:
    build_server(db, model).run("stdio")
