"""`mlx-embedgemma mcp`: the real server process over stdio, driven by the official MCP SDK's own client."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

pytest.importorskip("mcp", reason="the MCP server needs the [mcp] extra (the official MCP SDK)")

from mcp import Client  # noqa: E402
from mcp.client.stdio import StdioServerParameters  # noqa: E402

from mlx_embedgemma.cli import main  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::mlx_embedgemma.embedder.TruncationWarning")


@pytest.fixture(scope="module")
def store(tmp_path_factory, tiny_matryoshka) -> Path:
    folder = tmp_path_factory.mktemp("mcp") / "notes"
    folder.mkdir()
    (folder / "ticket.md").write_text("# Tickets\n\nthe fix for XJ4417 is in the parser.\n", encoding="utf-8")
    for i in range(4):
        (folder / f"n{i}.txt").write_text(f"the weather on day {i} was fine.", encoding="utf-8")
    db = folder.parent / "notes.db"
    result = CliRunner().invoke(main, ["index", str(folder), "--db", str(db), "--model", str(tiny_matryoshka)])
    assert result.exit_code == 0, result.output
    return db


def server(db: Path) -> StdioServerParameters:
    # The store remembers its model: the server needs only --db.
    return StdioServerParameters(command=sys.executable, args=["-m", "mlx_embedgemma.cli", "mcp", "--db", str(db)],
                                 env={"PYTHONPATH": os.pathsep.join(sys.path)})


async def session(db: Path, calls: list[tuple[str, dict]]):
    async with Client(server(db), read_timeout_seconds=120) as client:
        tools = await client.list_tools()
        return tools, [await client.call_tool(name, args) for name, args in calls]


def test_search_tool_over_stdio(store):
    tools, (hybrid, keyword, vector) = asyncio.run(session(store, [
        ("search", {"query": "XJ4417"}),
        ("search", {"query": "XJ4417 parser", "k": 3, "mode": "keyword"}),
        ("search", {"query": "weather", "k": 2, "mode": "vector"}),
    ]))
    (tool,) = tools.tools
    assert tool.name == "search" and set(tool.input_schema["properties"]) == {"query", "k", "mode"}
    assert not hybrid.is_error
    results = hybrid.structured_content["results"]
    assert len(results) == 5 and results[0]["file"].endswith("ticket.md")
    assert set(results[0]) == {"file", "line", "heading", "score", "text"}
    assert results[0]["heading"] == "Tickets" and results[0]["line"] == 1 and "XJ4417" in results[0]["text"]
    assert [r["file"] for r in keyword.structured_content["results"]] == [results[0]["file"]]
    assert len(vector.structured_content["results"]) == 2
    scores = [r["score"] for r in vector.structured_content["results"]]
    assert scores == sorted(scores, reverse=True) and all(-1 <= s <= 1 for s in scores)  # cosines


def test_bad_arguments_are_tool_errors_that_name_the_fix(store):
    _, results = asyncio.run(session(store, [
        ("search", {"query": "x", "mode": "fuzzy"}),
        ("search", {"query": "   "}),
        ("search", {"query": "x", "k": 0}),
        ("search", {"query": "?!", "mode": "keyword"}),
        ("search", {"query": "the"}),  # in most chunks: by meaning only, with a note
    ]))
    for result, words in zip(results[:4], ["hybrid, vector, keyword", "query is empty", "between 1 and", "no words to match"]):
        assert result.is_error and words in result.content[0].text, result
    assert not results[4].is_error and "ranked by meaning only" in results[4].structured_content["notes"][0]
