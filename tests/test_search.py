"""`mlx-embedgemma index` and `search` end to end on the tiny model, on a folder the test makes.

The tiny model's weights are random, so which chunk "means" the query is not tested: the tests check
structure (chunks, lines, headings, counts), incremental re-indexing, refusals, and self-retrieval (a
chunk's own text, searched with the document prompt, comes first with score 1).
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from mlx_embedgemma import load
from mlx_embedgemma.cli import main
from mlx_embedgemma.search import Chunk, SearchIndex, chunk_document

# The tiny model's context is 80 tokens: some chunks are longer (the index reports it; see the first test).
pytestmark = pytest.mark.filterwarnings("ignore::mlx_embedgemma.embedder.TruncationWarning")

MARS = """# Planets

## Mars
Mars is red.
Dust covers it.

It has two moons.

## Venus
Venus is hot.
"""
TEA = "first note about tea, green and black, hot."
COFFEE = "second note about coffee\nwith two lines here."
NOTES = f"{TEA}\n\n{COFFEE}\n\n\nthird note about water, still or sparkling.\n"  # paragraphs at lines 1, 3, 7


@pytest.fixture(scope="module")
def model(tiny_matryoshka):
    return load(tiny_matryoshka)


@pytest.fixture
def notes(tmp_path) -> Path:
    root = tmp_path / "notes"
    (root / "sub").mkdir(parents=True)
    (root / ".git").mkdir()
    (root / "mars.md").write_text(MARS, encoding="utf-8")
    (root / "sub" / "drinks.txt").write_text(NOTES, encoding="utf-8")
    (root / "sub" / "empty.txt").write_text("", encoding="utf-8")
    (root / ".git" / "config.md").write_text("# hidden\n", encoding="utf-8")
    (root / "picture.png").write_bytes(b"\x89PNG\r\n")
    (root / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    return root


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def rows(db: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(db) as c:
        return c.execute(sql).fetchall()


# --- chunking ---------------------------------------------------------------------------------------


def test_markdown_chunks_follow_headings_and_lines():
    chunks = chunk_document(MARS, markdown=True, max_size=1500, overlap=200)
    assert chunks == [
        Chunk("Planets > Mars", "## Mars\nMars is red.\nDust covers it.\n\nIt has two moons.", 3),
        Chunk("Planets > Venus", "## Venus\nVenus is hot.", 9),
    ]  # "# Planets" alone, with nothing under it, is no chunk


def test_headings_inside_code_fences_are_code():
    text = "# Top\nintro\n\n```sh\n# a comment\n\necho hi\n```\n\n## Next\nbody\n"
    chunks = chunk_document(text, markdown=True, max_size=1500, overlap=200)
    assert [c.heading for c in chunks] == ["Top", "Top > Next"]
    assert "# a comment\n\necho hi" in chunks[0].text


def test_plain_text_chunks_are_paragraphs_packed_with_overlap():
    paragraphs = [f"paragraph {i} " + "word " * 10 for i in range(8)]  # 65 characters each
    text = "\n\n".join(p.strip() for p in paragraphs)
    chunks = chunk_document(text, markdown=False, max_size=200, overlap=70)
    assert all(len(c.text) <= 200 and c.heading == "" for c in chunks)
    assert [c.start_line for c in chunks][0] == 1
    for a, b in zip(chunks, chunks[1:]):  # each chunk starts with the last paragraph of the one before
        assert b.text.split("\n\n")[0] == a.text.split("\n\n")[-1]
    assert "paragraph 7" in chunks[-1].text
    # Every paragraph is in some chunk, and each chunk's line is its first paragraph's.
    held = [int(p.split()[1]) for c in chunks for p in c.text.split("\n\n")]
    assert sorted(set(held)) == list(range(8)) and len(held) > 8
    for c in chunks:
        assert c.start_line == 2 * int(c.text.split()[1]) + 1


def test_a_long_paragraph_is_cut_at_words_with_overlap():
    text = " ".join(f"w{i}" for i in range(400))
    chunks = chunk_document(text, markdown=False, max_size=300, overlap=50)
    assert len(chunks) > 5 and all(len(c.text) <= 300 for c in chunks)
    words = [c.text.split() for c in chunks]
    for a, b in zip(words, words[1:]):
        assert b[0] in a and b[0] != a[0]  # pieces overlap, and go forward
    assert {w for ws in words for w in ws} == {f"w{i}" for i in range(400)}


def test_bad_chunk_sizes_are_refused():
    with pytest.raises(ValueError):
        chunk_document("x", False, max_size=100, overlap=60)


# --- index and search through the command -----------------------------------------------------------


def test_index_then_search_end_to_end(notes, tiny_matryoshka, model, tmp_path):
    db = tmp_path / "notes.db"
    result = invoke("index", notes, "--db", db, "--model", tiny_matryoshka, "--dim", 32, "--chunk-tokens", 65,
                    "--overlap-tokens", 32)
    assert result.exit_code == 0, result.output
    assert "3 new, 0 changed, 0 renamed, 0 unchanged, 0 removed, 1 skipped" in result.stdout
    assert "latin1.txt: not UTF-8 text" in result.output
    assert "longer than the model" not in result.output  # chunks measured in tokens fit the context
    files = sorted(Path(p).relative_to(notes).as_posix() for (p,) in rows(db, "SELECT path FROM files"))
    assert files == ["mars.md", "sub/drinks.txt", "sub/empty.txt"]  # no hidden folders, no other endings
    chunks = rows(db, "SELECT f.path, c.ordinal, c.heading, c.text, c.start_line, c.vector FROM chunks c "
                      "JOIN files f ON f.id = c.file_id ORDER BY f.path, c.ordinal")
    assert len(chunks) == 2 + 3
    drinks = [(c[1], c[3], c[4]) for c in chunks if c[0].endswith("drinks.txt")]
    # Each paragraph is ~40 of the tiny model's tokens: two (66) do not fit 65, so one paragraph a chunk.
    assert drinks == [(0, TEA, 1), (1, COFFEE, 3), (2, "third note about water, still or sparkling.", 7)]
    assert max(model.count_tokens([c[3] for c in chunks], prompt_name="document")) <= model.max_seq_length
    # Stored vectors are the model's document embeddings at the chosen size.
    texts = [c[3] for c in chunks]
    stored = np.array([np.frombuffer(c[5], "<f4") for c in chunks])
    np.testing.assert_allclose(stored, model.encode_document(texts, dim=32), atol=1e-6)
    meta = dict(rows(db, "SELECT key, value FROM meta"))
    assert meta["dim"] == "32" and meta["document_prompt"] == model.prompts["document"] and meta["model_name"] == "tiny-matryoshka"
    assert (meta["store"], meta["chunk_unit"], meta["chunk_size"], meta["chunk_overlap"]) == ("float32", "tokens", "65", "32")

    # Self-retrieval: a chunk's own text under the document prompt is the top hit, score 1.
    result = invoke("search", COFFEE, "--db", db, "--mode", "vector", "--prompt-name", "document", "-k", 3, "--json")
    assert result.exit_code == 0, result.output
    hits = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(hits) == 3 and [h["rank"] for h in hits] == [1, 2, 3]
    assert hits[0]["path"] == str(notes / "sub" / "drinks.txt") and hits[0]["line"] == 3 and hits[0]["chunk"] == 1
    assert hits[0]["score"] == pytest.approx(1.0, abs=1e-5)
    assert hits[0]["score"] >= hits[1]["score"] >= hits[2]["score"]

    # A query (query prompt by default): scores are the cosine of the query vector with each chunk.
    result = invoke("search", "which planet is red?", "--db", db, "--mode", "vector", "--json", "-k", 10)
    assert result.exit_code == 0, result.output
    hits = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(hits) == 5  # k larger than the store: everything, ranked
    expected = model.similarity(model.encode_query("which planet is red?", dim=32), stored)[0]
    assert [h["score"] for h in hits] == pytest.approx(sorted(expected.tolist(), reverse=True), abs=1e-5)

    # The human-readable form: rank, score, file:line, heading, snippet.
    result = invoke("search", "## Mars\nMars is red.\nDust covers it.\n\nIt has two moons.", "--db", db, "-k", 1,
                    "--mode", "vector", "--prompt-name", "document")
    assert result.exit_code == 0, result.output
    first, snippet = result.stdout.splitlines()[:2]
    assert first.split()[0] == "1" and "mars.md:3" in first and "[Planets > Mars]" in first
    assert snippet.strip().startswith("## Mars Mars is red.")


def test_reindex_skips_unchanged_updates_changed_and_drops_deleted(notes, tiny_matryoshka, model, tmp_path):
    db = tmp_path / "notes.db"
    assert invoke("index", notes, "--db", db, "--model", tiny_matryoshka).exit_code == 0
    before = dict(rows(db, "SELECT f.path || ':' || c.ordinal, c.id FROM chunks c JOIN files f ON f.id = c.file_id"))

    # Nothing changed: nothing embedded. The model comes from the store this time.
    result = invoke("index", notes, "--db", db)
    assert result.exit_code == 0, result.output
    assert "0 new, 0 changed, 0 renamed, 3 unchanged, 0 removed" in result.stdout and "0 chunks embedded" in result.stdout

    # Same content, new mtime: not re-embedded either.
    os.utime(notes / "mars.md", ns=(1, 1))
    result = invoke("index", notes, "--db", db)
    assert "0 new, 0 changed, 0 renamed, 3 unchanged" in result.stdout and "0 chunks embedded" in result.stdout

    # Change one file, delete another, add a third.
    (notes / "mars.md").write_text(MARS.replace("Venus is hot.", "Venus is hot.\n\n## Earth\nEarth is home."), encoding="utf-8")
    (notes / "sub" / "drinks.txt").unlink()
    (notes / "new.markdown").write_text("# New\nfresh text\n", encoding="utf-8")
    result = invoke("index", notes, "--db", db)
    assert result.exit_code == 0, result.output
    assert "1 new, 1 changed, 0 renamed, 1 unchanged, 1 removed" in result.stdout and "4 chunks embedded" in result.stdout
    assert "3 files, 4 chunks" in result.stdout
    after = rows(db, "SELECT f.path, c.heading, c.text FROM chunks c JOIN files f ON f.id = c.file_id ORDER BY f.path, c.ordinal")
    assert [(Path(p).name, h) for p, h, _ in after] == [
        ("mars.md", "Planets > Mars"), ("mars.md", "Planets > Venus"), ("mars.md", "Planets > Earth"), ("new.markdown", "New")]
    assert not any("drinks" in p for p, _, _ in after)
    assert rows(db, "SELECT COUNT(*) FROM chunks WHERE file_id NOT IN (SELECT id FROM files)") == [(0,)]
    assert not set(before.values()) & {i for (i,) in rows(db, "SELECT id FROM chunks")}  # mars.md's chunks are new rows

    result = invoke("search", "## Earth\nEarth is home.", "--db", db, "--mode", "vector", "--prompt-name", "document", "-k", 1, "--json")
    hit = json.loads(result.stdout)
    assert hit["heading"] == "Planets > Earth" and hit["score"] == pytest.approx(1.0, abs=1e-5) and hit["line"] == 12


def test_refuses_another_size_or_model_unless_rebuilt(notes, tiny_matryoshka, tiny_q4, tmp_path):
    db = tmp_path / "notes.db"
    assert invoke("index", notes, "--db", db, "--model", tiny_matryoshka, "--dim", 16).exit_code == 0
    result = invoke("index", notes, "--db", db, "--dim", 32)
    assert result.exit_code == 1 and "16-d vectors" in result.output and "--rebuild" in result.output
    result = invoke("index", notes, "--db", db, "--model", tiny_q4)
    assert result.exit_code == 1 and "another model" in result.output and "--rebuild" in result.output
    result = invoke("search", "tea", "--db", db, "--model", tiny_q4)
    assert result.exit_code == 1 and "another model" in result.output
    result = invoke("index", notes, "--db", db, "--chunk-tokens", 40)
    assert result.exit_code == 1 and "chunks of 65 tokens" in result.output and "--rebuild" in result.output
    result = invoke("index", notes, "--db", db, "--store", "binary")
    assert result.exit_code == 1 and "the float32 store" in result.output

    result = invoke("index", notes, "--db", db, "--model", tiny_q4, "--rebuild")
    assert result.exit_code == 0, result.output
    assert "3 new" in result.stdout
    meta = dict(rows(db, "SELECT key, value FROM meta"))
    assert meta["dim"] == str(load(tiny_q4).network.args.embedding_dim) and meta["model_name"] == tiny_q4.name
    assert invoke("search", "tea", "--db", db, "--model", tiny_q4).exit_code == 0


def test_index_needs_a_model_and_search_needs_an_index(notes, tmp_path, tiny_matryoshka, monkeypatch):
    monkeypatch.delenv("MLX_EMBEDGEMMA_MODEL", raising=False)
    result = invoke("index", notes, "--db", tmp_path / "a.db")
    assert result.exit_code == 2 and "--model" in result.output
    monkeypatch.setenv("MLX_EMBEDGEMMA_MODEL", str(tiny_matryoshka))
    assert invoke("index", notes, "--db", tmp_path / "a.db").exit_code == 0
    empty = tmp_path / "empty.db"
    SearchIndex(empty).close()
    result = invoke("search", "x", "--db", empty)
    assert result.exit_code == 1 and "index a folder" in result.output
    bogus = tmp_path / "bogus.db"
    bogus.write_text("not a database" * 100)
    result = invoke("search", "x", "--db", bogus)
    assert result.exit_code == 1 and "not a search index" in result.output


def test_the_database_file_itself_is_not_indexed(notes, tiny_matryoshka):
    db = notes / "index.txt"  # inside the folder, with an indexed ending
    result = invoke("index", notes, "--db", db, "--model", tiny_matryoshka)
    assert result.exit_code == 0, result.output
    assert "3 new" in result.stdout and not any(p.endswith("index.txt") for (p,) in rows(db, "SELECT path FROM files"))


def test_console_script_index_and_search(notes, tiny_matryoshka, tmp_path):
    script = shutil.which("mlx-embedgemma", path=os.path.dirname(sys.executable))
    if script is None:
        pytest.skip("the mlx-embedgemma console script is not installed next to this Python")
    db = tmp_path / "cli.db"
    run = lambda *a: subprocess.run([script, *map(str, a)], capture_output=True, text=True, timeout=300, cwd=tmp_path)  # noqa: E731
    proc = run("index", notes, "--db", db, "--model", tiny_matryoshka)
    assert proc.returncode == 0, proc.stderr
    proc = run("search", "## Venus\nVenus is hot.", "--db", db, "-k", 2, "--mode", "vector", "--prompt-name", "document")
    assert proc.returncode == 0, proc.stderr
    assert "mars.md:9" in proc.stdout.splitlines()[0] and "[Planets > Venus]" in proc.stdout


# --- keyword and hybrid ranking, bad queries -------------------------------------------------------


@pytest.fixture
def codes_folder(tmp_path) -> Path:
    root = tmp_path / "codes"
    root.mkdir()
    for i in range(6):
        (root / f"note{i}.txt").write_text(f"the note number {i} of the list.\n\nthe weather was fine on day {i}.\n", encoding="utf-8")
    (root / "ticket.md").write_text("# Tickets\nthe fix for XJ4417 is in the parser.\n", encoding="utf-8")
    return root


def search_json(db, query, *options):
    result = invoke("search", query, "--db", db, "--json", *options)
    return result, [json.loads(line) for line in result.stdout.splitlines()]


def test_keyword_and_hybrid_find_a_rare_code(codes_folder, tiny_matryoshka, tmp_path):
    db = tmp_path / "codes.db"
    assert invoke("index", codes_folder, "--db", db, "--model", tiny_matryoshka).exit_code == 0
    result, hits = search_json(db, "XJ4417", "--mode", "keyword")
    assert result.exit_code == 0, result.output
    assert len(hits) == 1 and hits[0]["path"].endswith("ticket.md") and hits[0]["heading"] == "Tickets"
    # Hybrid (the default): in both lists, so first whatever the (random) tiny model thinks of it.
    result, hits = search_json(db, "XJ4417", "-k", 3)
    assert result.exit_code == 0 and hits[0]["path"].endswith("ticket.md") and len(hits) == 3
    assert hits[0]["score"] > 1 / 61  # reciprocal rank fusion: 1/(60+1) from the keywords plus the vector list's share
    # FTS5 syntax in a query is text, never an error or an operator.
    for query in ['"XJ4417', "XJ4417 AND (NEAR", "XJ4417*", "col:XJ4417 ^ -x", "XJ4417 OR NOT'"]:
        result, hits = search_json(db, query, "--mode", "keyword")
        assert result.exit_code == 0, (query, result.output)
        assert hits and hits[0]["path"].endswith("ticket.md"), query


def test_queries_without_rankable_words_say_so(codes_folder, tiny_matryoshka, tmp_path):
    db = tmp_path / "codes.db"
    assert invoke("index", codes_folder, "--db", db, "--model", tiny_matryoshka).exit_code == 0
    result = invoke("search", "?!... --- ***", "--db", db, "--mode", "keyword")
    assert result.exit_code == 1 and "no words to match" in result.output and "--mode vector" in result.output
    # "the" and "of" are in every note: they match, but cannot rank, and the search says so.
    result, hits = search_json(db, "the of", "--mode", "keyword")
    assert result.exit_code == 0 and len(hits) == 7 and "more than half of the chunks" in result.stderr
    assert "barely ranked" in result.stderr and "--mode vector" in result.stderr
    for query, why in [("?!... --- ***", "no words to match"), ("the of", "more than half of the chunks")]:
        result, hits = search_json(db, query)  # hybrid: by meaning only, and a note saying why
        assert result.exit_code == 0 and len(hits) == 7
        assert why in result.stderr and "ranked by meaning only" in result.stderr
        result, hits = search_json(db, query, "--mode", "vector")
        assert result.exit_code == 0 and len(hits) == 7 and not result.stderr


def test_keyword_search_needs_no_model(codes_folder, tiny_matryoshka, tmp_path, monkeypatch):
    db = tmp_path / "codes.db"
    assert invoke("index", codes_folder, "--db", db, "--model", tiny_matryoshka).exit_code == 0
    monkeypatch.setattr("mlx_embedgemma.loading.load", lambda *a, **k: pytest.fail("keyword search loaded the model"))
    result, hits = search_json(db, "parser", "--mode", "keyword")
    assert result.exit_code == 0 and hits[0]["path"].endswith("ticket.md")


# --- compact stores ----------------------------------------------------------------------------------


@pytest.mark.parametrize("store", ["int8", "binary"])
def test_compact_stores_rescore_with_full_vectors(store, notes, tiny_matryoshka, model, tmp_path):
    from mlx_embedgemma.search import quantize

    db = tmp_path / f"{store}.db"
    result = invoke("index", notes, "--db", db, "--model", tiny_matryoshka, "--store", store, "--dim", 16)
    assert result.exit_code == 0, result.output
    chunks = rows(db, "SELECT text, vector, full FROM chunks ORDER BY id")
    texts = [c[0] for c in chunks]
    full = model.encode_document(texts)
    np.testing.assert_allclose(np.array([np.frombuffer(c[2], "<f4") for c in chunks]), full, atol=1e-6)
    first = model.encode_document(texts, dim=16)
    ranges = quantize.calibrate(first)
    expected = quantize.encode(first, store, ranges)
    got = np.array([np.frombuffer(c[1], expected.dtype) for c in chunks])
    # int8 ranges from the float32 vectors round the same way except at a bucket's very edge.
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= (1 if store == "int8" else 0)
    assert invoke("index", notes, "--db", db, "--store", "float32").exit_code == 1  # a store keeps its kind

    # Self-retrieval through the funnel: the chunk itself comes first, with its exact full-size cosine.
    result, hits = search_json(db, texts[2], "--mode", "vector", "--prompt-name", "document", "-k", 3)
    assert result.exit_code == 0 and hits[0]["text"] == texts[2] and hits[0]["score"] == pytest.approx(1.0, abs=1e-5)
    q = model.encode(texts[2], prompt_name="document")
    assert [h["score"] for h in hits] == pytest.approx(sorted((full @ q).tolist(), reverse=True)[:3], abs=1e-5)


def test_int8_ranges_widen_and_recode_everything(tmp_path, tiny_matryoshka, model):
    from mlx_embedgemma.search import quantize

    root = tmp_path / "grow"
    root.mkdir()
    (root / "a.txt").write_text("alpha beta\n\ngamma delta\n", encoding="utf-8")
    db = tmp_path / "grow.db"
    assert invoke("index", root, "--db", db, "--model", tiny_matryoshka, "--store", "int8", "--dim", 32).exit_code == 0
    (root / "b.txt").write_text("\n\n".join(f"note {i}: " + "zeta " * i for i in range(1, 12)), encoding="utf-8")
    assert invoke("index", root, "--db", db).exit_code == 0
    chunks = rows(db, "SELECT full, vector FROM chunks ORDER BY id")
    full = np.array([np.frombuffer(c[0], "<f4") for c in chunks])  # the model's (checked in the test above)
    first = full[:, :32] / np.linalg.norm(full[:, :32], axis=1, keepdims=True)
    ranges = np.frombuffer(bytes.fromhex(dict(rows(db, "SELECT key, value FROM meta"))["int8_ranges"]), np.float32).reshape(2, 32)
    assert quantize.covers(ranges, first)  # every stored vector is inside the ranges...
    got = np.array([np.frombuffer(c[1], np.int8) for c in chunks]).astype(int)
    np.testing.assert_array_equal(got, quantize.encode(first, "int8", ranges))  # ...and coded with them
    assert got.min() == -128 and got.max() == 127  # the ranges are the data's own, not wider


# --- older stores, rebuilds, renames and vanishing folders -------------------------------------------

V1_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE files (id INTEGER PRIMARY KEY, path TEXT UNIQUE NOT NULL, mtime_ns INTEGER NOT NULL, size INTEGER NOT NULL,
                    sha256 TEXT NOT NULL, indexed_at TEXT NOT NULL);
CREATE TABLE chunks (id INTEGER PRIMARY KEY, file_id INTEGER NOT NULL REFERENCES files(id) ON DELETE CASCADE,
                     ordinal INTEGER NOT NULL, heading TEXT NOT NULL, text TEXT NOT NULL, start_line INTEGER NOT NULL,
                     embedding BLOB NOT NULL);
CREATE INDEX chunks_by_file ON chunks(file_id);
"""


def make_v1_store(db: Path, model, folder: Path) -> list[str]:
    """A store as mlx-embedgemma 0.1.0 wrote it (format 1: float32 vectors, chunks in characters)."""
    from mlx_embedgemma.search.store import file_sha256

    texts = ["the first chunk, about a lighthouse.", "the second chunk, about a harbour."]
    vectors = model.encode_document(texts, dim=32)
    weights = Path(model.path).resolve() / "model.safetensors"
    path = folder / "old.txt"
    path.write_text("\n\n".join(texts), encoding="utf-8")
    st = path.stat()
    with sqlite3.connect(db) as c:
        c.executescript(V1_SCHEMA)
        meta = {"format_version": 1, "model_sha256": file_sha256(weights), "model_name": Path(model.path).name,
                "model_path": str(weights.parent), "model_size": weights.stat().st_size,
                "model_mtime_ns": weights.stat().st_mtime_ns, "dim": 32, "document_prompt": model.prompts["document"],
                "query_prompt_name": "query", "chunk_chars": 40, "overlap_chars": 0, "vector_dtype": "float32"}
        c.executemany("INSERT INTO meta VALUES (?, ?)", [(k, str(v)) for k, v in meta.items()])
        c.execute("INSERT INTO files VALUES (1, ?, ?, ?, 'x', 'then')", (str(path), st.st_mtime_ns, st.st_size))
        c.executemany("INSERT INTO chunks VALUES (?, 1, ?, '', ?, ?, ?)",
                      [(i + 1, i, t, 1 + 2 * i, v.astype("<f4").tobytes()) for i, (t, v) in enumerate(zip(texts, vectors))])
    return texts


def test_a_format_1_store_is_migrated_and_keeps_its_vectors(tmp_path, tiny_matryoshka, model):
    folder = tmp_path / "old"
    folder.mkdir()
    db = tmp_path / "v1.db"
    texts = make_v1_store(db, model, folder)
    before = rows(db, "SELECT id, embedding FROM chunks ORDER BY id")
    result, hits = search_json(db, "harbour", "--mode", "keyword")  # the full-text index is built on the way
    assert result.exit_code == 0, result.output
    assert [h["text"] for h in hits] == [texts[1]]
    assert rows(db, "SELECT id, vector FROM chunks ORDER BY id") == before  # the same vectors, moved
    meta = dict(rows(db, "SELECT key, value FROM meta"))
    assert (meta["format_version"], meta["store"], meta["chunk_unit"], meta["chunk_size"]) == ("2", "float32", "chars", "40")
    result, hits = search_json(db, texts[0], "--mode", "vector", "--prompt-name", "document")
    assert hits[0]["text"] == texts[0] and hits[0]["score"] == pytest.approx(1.0, abs=1e-5)
    # Its files are still current; measured in characters until it is rebuilt.
    result = invoke("index", folder, "--db", db)
    assert result.exit_code == 0 and "1 unchanged" in result.stdout, result.output
    result = invoke("index", folder, "--db", db, "--chunk-tokens", 40)
    assert result.exit_code == 1 and "chunks of 40 chars" in result.output and "--rebuild" in result.output


def test_a_newer_store_is_refused(tmp_path, notes, tiny_matryoshka):
    db = tmp_path / "new.db"
    assert invoke("index", notes, "--db", db, "--model", tiny_matryoshka).exit_code == 0
    with sqlite3.connect(db) as c:
        c.execute("UPDATE meta SET value = '99' WHERE key = 'format_version'")
    result = invoke("search", "x", "--db", db)
    assert result.exit_code == 1 and "format 99, newer" in result.output and "upgrade" in result.output


def test_a_renamed_file_keeps_its_vectors(notes, tiny_matryoshka, tmp_path):
    db = tmp_path / "notes.db"
    assert invoke("index", notes, "--db", db, "--model", tiny_matryoshka).exit_code == 0
    before = rows(db, "SELECT c.id, c.text, c.vector FROM chunks c JOIN files f ON f.id = c.file_id WHERE f.path LIKE '%mars.md'")
    (notes / "mars.md").rename(notes / "planets.md")
    result = invoke("index", notes, "--db", db)
    assert result.exit_code == 0, result.output
    assert "0 new, 0 changed, 1 renamed" in result.stdout and "0 removed" in result.stdout and "0 chunks embedded" in result.stdout
    after = rows(db, "SELECT c.id, c.text, c.vector FROM chunks c JOIN files f ON f.id = c.file_id WHERE f.path LIKE '%planets.md'")
    assert after == before
    result, hits = search_json(db, "Venus", "--mode", "keyword")
    assert hits[0]["path"] == str(notes / "planets.md")


def test_a_folder_that_vanishes_while_indexed_loses_nothing(notes, tiny_matryoshka, model, tmp_path):
    db = tmp_path / "notes.db"
    assert invoke("index", notes, "--db", db, "--model", tiny_matryoshka).exit_code == 0
    before = rows(db, "SELECT path, sha256 FROM files ORDER BY path")
    (notes / "sub" / "drinks.txt").write_text("changed", encoding="utf-8")
    with SearchIndex(db) as store, pytest.raises(FileNotFoundError, match="disappeared while it was being indexed"):
        store.index_folder(notes, model, progress=lambda path: shutil.rmtree(notes))
    assert {p for p, _ in rows(db, "SELECT path, sha256 FROM files")} == {p for p, _ in before}


def many_notes(folder: Path, n: int = 300) -> Path:
    folder.mkdir()
    for i in range(n):
        (folder / f"n{i:03}.txt").write_text(f"note {i} about the harbour\n\nsecond paragraph {i}\n", encoding="utf-8")
    return folder


def test_an_update_killed_midway_leaves_a_consistent_store(tmp_path, tiny_matryoshka):
    from processes import kill_when

    big = many_notes(tmp_path / "big")
    db = tmp_path / "store.db"
    cmd = [sys.executable, "-m", "mlx_embedgemma.cli", "index", str(big), "--db", str(db), "--model", str(tiny_matryoshka),
           "--batch-size", "4"]
    journal = db.with_name(db.name + "-journal")

    def some_batch_committed() -> bool:
        # The file grows while a commit is being written, journal present; a kill then rolls the store
        # back to empty, which is consistent but tests nothing. Past the size with no journal, a commit finished.
        return db.exists() and db.stat().st_size > 64 * 1024 and not journal.exists()

    assert kill_when(cmd, tmp_path, some_batch_committed, poll_s=0.01)
    assert rows(db, "PRAGMA integrity_check") == [("ok",)]
    files, chunks = rows(db, "SELECT COUNT(*) FROM files")[0][0], rows(db, "SELECT COUNT(*) FROM chunks")[0][0]
    assert 0 < files < 300 and chunks == files  # whole files only: each note is one chunk, and has it
    assert rows(db, "SELECT COUNT(*) FROM files WHERE id NOT IN (SELECT file_id FROM chunks)") == [(0,)]
    with sqlite3.connect(db) as c:  # the full-text index matches the chunks (FTS5 raises if not)
        c.execute("INSERT INTO chunks_fts (chunks_fts, rank) VALUES ('integrity-check', 1)")
    result, hits = search_json(db, "harbour", "--mode", "keyword", "-k", 1)
    assert result.exit_code == 0 and hits
    result = invoke("index", big, "--db", db)  # the next run finishes the job
    assert result.exit_code == 0 and f"{300 - files} new" in result.stdout and "300 files, 300 chunks" in result.stdout


def test_a_killed_rebuild_leaves_the_old_store_searchable(tmp_path, tiny_matryoshka):
    from processes import kill_when

    big = many_notes(tmp_path / "big")
    small = tmp_path / "small"
    small.mkdir()
    (small / "one.txt").write_text("a lighthouse on the rock", encoding="utf-8")
    db = tmp_path / "store.db"
    assert invoke("index", small, "--db", db, "--model", tiny_matryoshka).exit_code == 0
    before = rows(db, "SELECT path FROM files")
    aside = tmp_path / ".store.db.rebuild"
    cmd = [sys.executable, "-m", "mlx_embedgemma.cli", "index", str(big), "--db", str(db), "--rebuild", "--batch-size", "4"]
    # Killed once the new store has some chunks committed (it grows past its empty size).
    killed = kill_when(cmd, tmp_path, lambda: aside.exists() and aside.stat().st_size > 64 * 1024, poll_s=0.01)
    assert killed, "the rebuild finished before it could be killed: give it more files"
    assert rows(db, "SELECT path FROM files") == before
    result, hits = search_json(db, "lighthouse", "--mode", "keyword")
    assert result.exit_code == 0 and hits[0]["path"].endswith("one.txt")
    # The next rebuild starts over (the partial file is not reused) and replaces the store when done.
    result = invoke("index", big, "--db", db, "--rebuild")
    assert result.exit_code == 0, result.output
    assert "300 new" in result.stdout and rows(db, "SELECT COUNT(*) FROM files") == [(300,)] and not aside.exists()
