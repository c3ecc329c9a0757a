"""The store: one SQLite file holding files, chunks, their vectors and a full-text index.

Tables: ``meta`` (model, sizes, chunking, format), ``files`` (path, size, mtime, sha256), ``chunks``
(heading, text, line; ``vector``: the first-pass code at the store's size and kind; ``full``: for int8
and binary stores, the float32 vector at the model's full size, read only to rescore candidates), and
``chunks_fts``, an FTS5 index over heading and text kept in step by triggers. Python's own ``sqlite3``
only: no loadable extension. Every change of a file is one transaction, so a crash leaves the store as
it was before that file.
"""

from __future__ import annotations

import hashlib
import os
import re
import sqlite3
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from ..embedder import EmbeddingGemma, TruncationWarning
from . import quantize, ranking
from .chunking import (DEFAULT_CHUNK_TOKENS, DEFAULT_EXTENSIONS, DEFAULT_OVERLAP_TOKENS, MARKDOWN_EXTENSIONS, Chunk,
                       chunk_document, token_measure)

FORMAT_VERSION = 2
DOCUMENT_PROMPT = "document"
QUERY_PROMPT = "query"
MODES = ("hybrid", "vector", "keyword")
FLUSH_CHUNKS = 128  # chunks embedded together (across small files) before they are written
FUSION_DEPTH = 50  # results taken from each list before fusing (at least k)

CHUNKS_COLUMNS = """(
    id INTEGER PRIMARY KEY,
    file_id INTEGER NOT NULL REFERENCES files(id) ON DELETE CASCADE,
    ordinal INTEGER NOT NULL,
    heading TEXT NOT NULL,
    text TEXT NOT NULL,
    start_line INTEGER NOT NULL,
    vector BLOB NOT NULL,
    full BLOB
)"""

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS files (
    id INTEGER PRIMARY KEY,
    path TEXT UNIQUE NOT NULL,
    mtime_ns INTEGER NOT NULL,
    size INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    indexed_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS chunks {CHUNKS_COLUMNS};
CREATE INDEX IF NOT EXISTS chunks_by_file ON chunks(file_id);
CREATE VIRTUAL TABLE IF NOT EXISTS chunks_fts USING fts5(
    heading, text, content='chunks', content_rowid='id', tokenize='unicode61 remove_diacritics 2');
CREATE TRIGGER IF NOT EXISTS chunks_fts_insert AFTER INSERT ON chunks BEGIN
    INSERT INTO chunks_fts (rowid, heading, text) VALUES (new.id, new.heading, new.text);
END;
CREATE TRIGGER IF NOT EXISTS chunks_fts_delete AFTER DELETE ON chunks BEGIN
    INSERT INTO chunks_fts (chunks_fts, rowid, heading, text) VALUES ('delete', old.id, old.heading, old.text);
END;
"""

# Format 1 (float32 vectors in `chunks.embedding`, chunks measured in characters, no full-text index).
MIGRATE_FROM_1 = f"""
BEGIN;
CREATE TABLE chunks_v2 {CHUNKS_COLUMNS};
INSERT INTO chunks_v2 (id, file_id, ordinal, heading, text, start_line, vector)
    SELECT id, file_id, ordinal, heading, text, start_line, embedding FROM chunks;
DROP TABLE chunks;
ALTER TABLE chunks_v2 RENAME TO chunks;
INSERT OR REPLACE INTO meta (key, value) VALUES ('format_version', '2'), ('store', 'float32'), ('chunk_unit', 'chars');
INSERT OR REPLACE INTO meta (key, value) SELECT 'chunk_size', value FROM meta WHERE key = 'chunk_chars';
INSERT OR REPLACE INTO meta (key, value) SELECT 'chunk_overlap', value FROM meta WHERE key = 'overlap_chars';
DELETE FROM meta WHERE key IN ('chunk_chars', 'overlap_chars', 'vector_dtype');
"""


class StoreError(ValueError):
    """The store cannot be used as asked (another model or size, a newer format, not a store); says the fix."""


@dataclass
class Hit:
    rank: int
    score: float
    path: str
    start_line: int
    heading: str
    text: str
    ordinal: int


@dataclass
class Results:
    hits: list[Hit]
    notes: list[str] = field(default_factory=list)  # what the search could not do as asked, and why


@dataclass
class IndexReport:
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    renamed: list[tuple[str, str]] = field(default_factory=list)  # (old, new): same content, vectors kept
    unchanged: int = 0
    touched: int = 0  # mtime changed, content did not: not re-embedded
    removed: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, why)
    chunks_embedded: int = 0
    truncated: int = 0  # chunks longer than the model's context (only a store chunked by characters has them)
    chunks_total: int = 0
    files_total: int = 0
    seconds: float = 0.0


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def truncate(vectors: np.ndarray, dim: int) -> np.ndarray:
    """The Matryoshka vectors of size ``dim``: the first ``dim`` values, L2-normalized again."""
    cut = vectors[..., :dim]
    return (cut / np.linalg.norm(cut, axis=-1, keepdims=True)).astype(np.float32)


class SearchIndex:
    def __init__(self, db: str | Path):
        self.path = Path(db).expanduser()
        self._codes: tuple[tuple[int, int], np.ndarray, quantize.FirstPass] | None = None  # (version, ids, codes)
        try:
            self.db = sqlite3.connect(self.path, timeout=30)
            self.db.execute("PRAGMA foreign_keys = ON")
            tables = {r[0] for r in self.db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        except sqlite3.DatabaseError as e:
            raise StoreError(f"{self.path} is not a search index ({e}); give another --db") from None
        if tables and "meta" not in tables:
            raise StoreError(f"{self.path} is an SQLite file but not a search index; give another --db")
        meta = dict(self.db.execute("SELECT key, value FROM meta")) if tables else {}
        columns = {r[1] for r in self.db.execute("PRAGMA table_info(chunks)")}
        version = 1 if "embedding" in columns else int(meta.get("format_version", FORMAT_VERSION))
        if version > FORMAT_VERSION:
            raise StoreError(f"{self.path} has format {version}, newer than this mlx-embedgemma ({FORMAT_VERSION}): upgrade it")
        if version == 1:
            self._migrate_from_1()
        try:
            self.db.executescript(SCHEMA)
        except sqlite3.OperationalError as e:  # an SQLite built without FTS5
            raise StoreError(f"this Python's SQLite ({sqlite3.sqlite_version}) cannot make the full-text index ({e}); "
                             "use a Python whose sqlite3 has FTS5 (python.org and Homebrew builds do)") from None
        if version == 1:
            with self.db:
                self.db.execute("INSERT INTO chunks_fts (chunks_fts) VALUES ('rebuild')")

    def _migrate_from_1(self) -> None:
        try:
            self.db.executescript(MIGRATE_FROM_1 + "COMMIT;")
        except sqlite3.DatabaseError as e:
            self.db.rollback()
            raise StoreError(f"{self.path} was made by an older mlx-embedgemma and could not be upgraded ({e}); it is "
                             "unchanged: re-index into a new file with --rebuild") from None

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> "SearchIndex":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def meta(self) -> dict[str, str]:
        return dict(self.db.execute("SELECT key, value FROM meta"))

    def _set_meta(self, values: dict[str, object]) -> None:
        self.db.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                            [(k, str(v)) for k, v in values.items()])

    def counts(self) -> tuple[int, int]:
        files = self.db.execute("SELECT COUNT(*) FROM files").fetchone()[0]
        chunks = self.db.execute("SELECT COUNT(*) FROM chunks").fetchone()[0]
        return files, chunks

    # -- which model -------------------------------------------------------------------------------

    def model_sha256(self, model: EmbeddingGemma) -> str:
        """sha256 of the model's weights, remembered per (path, size, mtime) so searches need not re-hash."""
        weights = Path(model.path).expanduser().resolve() / "model.safetensors"
        st = weights.stat()
        meta = self.meta
        if (meta.get("model_path"), meta.get("model_size"), meta.get("model_mtime_ns")) == (
                str(weights.parent), str(st.st_size), str(st.st_mtime_ns)) and meta.get("model_sha256"):
            return meta["model_sha256"]
        return file_sha256(weights)

    def check_model(self, model: EmbeddingGemma, dim: int | None) -> int:
        """The size to use with ``model``; StoreError if the store holds another model's or size's vectors."""
        meta = self.meta
        if "model_sha256" not in meta:
            return model.check_dim(dim) if dim is not None else model.network.args.embedding_dim
        if self.model_sha256(model) != meta["model_sha256"]:
            raise StoreError(
                f"{self.path} was made with another model ({meta.get('model_name')}, weights sha256 "
                f"{meta['model_sha256'][:12]}, from {meta.get('model_path')}); its vectors cannot be compared with "
                f"{model.path}'s. Use that model, or re-index everything with --rebuild"
            )
        stored = int(meta["dim"])
        if dim is not None and dim != stored:
            raise StoreError(f"{self.path} holds {stored}-d vectors; give --dim {stored} (or no --dim), "
                             f"or re-index everything at {dim} with --rebuild")
        return stored

    def _settings(self, model: EmbeddingGemma, dim: int | None, store: str | None, chunk_tokens: int | None,
                  overlap_tokens: int | None) -> dict[str, object]:
        """The store's settings after this run: the stored ones, or the given ones for a new store."""
        dim = self.check_model(model, dim)
        meta = self.meta
        given = {"store": store, "chunk_size": chunk_tokens, "chunk_overlap": overlap_tokens}
        if "model_sha256" in meta:
            unit = meta["chunk_unit"]
            for key, value in given.items():
                stored = meta[key] if key == "store" else int(meta[key])
                if value is not None and (value != stored or unit != "tokens" and key != "store"):
                    option, what = {"store": ("--store", "the {} store"), "chunk_size": ("--chunk-tokens", "chunks of {}"),
                                    "chunk_overlap": ("--overlap-tokens", "an overlap of {}")}[key]
                    was = what.format(stored if key == "store" else f"{stored} {unit}")
                    raise StoreError(f"{self.path} was made with {was}; leave out {option} to keep it, "
                                     f"or re-index everything with --rebuild")
            return {"dim": dim, "store": meta["store"], "chunk_unit": unit,
                    "chunk_size": int(meta["chunk_size"]), "chunk_overlap": int(meta["chunk_overlap"])}
        store = store or "float32"
        if store not in quantize.STORES:
            raise StoreError(f"--store must be one of {', '.join(quantize.STORES)}, got {store!r}")
        _, limit = token_measure(model, DOCUMENT_PROMPT)
        size = chunk_tokens or min(DEFAULT_CHUNK_TOKENS, limit)
        overlap = overlap_tokens if overlap_tokens is not None else min(DEFAULT_OVERLAP_TOKENS, size // 2)
        if size > limit:
            raise StoreError(f"--chunk-tokens {size} is over the model's context: {model.max_seq_length} tokens, of "
                             f"which the document prompt, <bos> and <eos> take {model.max_seq_length - limit}; "
                             f"give at most {limit}")
        if not 0 <= overlap <= size // 2:
            raise StoreError(f"--overlap-tokens must be at most half of --chunk-tokens ({size // 2}), got {overlap}")
        return {"dim": dim, "store": store, "chunk_unit": "tokens", "chunk_size": size, "chunk_overlap": overlap}

    # -- indexing ----------------------------------------------------------------------------------

    def index_folder(
        self,
        folder: str | Path,
        model: EmbeddingGemma,
        dim: int | None = None,
        store: str | None = None,
        chunk_tokens: int | None = None,
        overlap_tokens: int | None = None,
        extensions: Iterable[str] = DEFAULT_EXTENSIONS,
        batch_size: int = 32,
        progress: Callable[[str], None] | None = None,
    ) -> IndexReport:
        """Bring the store up to date with ``folder``: new and changed files embedded, removed ones dropped."""
        started = time.perf_counter()
        root = Path(folder).expanduser().resolve()
        if not root.is_dir():
            raise FileNotFoundError(f"{root} is not a folder")
        settings = self._settings(model, dim, store, chunk_tokens, overlap_tokens)
        meta = self.meta
        weights = Path(model.path).expanduser().resolve() / "model.safetensors"
        st = weights.stat()
        with self.db:
            self._set_meta({
                "format_version": FORMAT_VERSION, "model_sha256": meta.get("model_sha256") or self.model_sha256(model),
                "model_name": Path(model.path).name, "model_path": str(weights.parent), "model_size": st.st_size,
                "model_mtime_ns": st.st_mtime_ns, "full_dim": model.network.args.embedding_dim,
                "document_prompt": model.prompt_prefix(DOCUMENT_PROMPT, None), "query_prompt_name": QUERY_PROMPT,
                **settings,
            })
        dim, kind = settings["dim"], settings["store"]
        measure = token_measure(model, DOCUMENT_PROMPT)[0] if settings["chunk_unit"] == "tokens" else len

        report = IndexReport()
        exts = tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions)
        known = {row[0]: row[1:] for row in self.db.execute("SELECT path, id, mtime_ns, size, sha256 FROM files")}
        by_sha = {row[3]: path for path, row in known.items()}
        seen: set[str] = set()
        pending: list[tuple[str, os.stat_result, str, list[Chunk], bool]] = []

        def flush() -> None:
            texts = [c.text for *_, chunks, _ in pending for c in chunks]
            vectors = np.empty((0, dim), np.float32)
            if texts:
                # Said once in the report rather than as a warning per batch.
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always", TruncationWarning)
                    vectors = model.encode(texts, prompt_name=DOCUMENT_PROMPT, dim=None if kind != "float32" else dim,
                                           batch_size=batch_size)
                for w in caught:
                    if isinstance(w.message, TruncationWarning):
                        report.truncated += len(w.message.indices)
                    else:
                        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
            row = 0
            now = datetime.now(timezone.utc).isoformat(timespec="seconds")
            with self.db:
                codes = self._codes_for(vectors, kind, dim)
                for path, stat, sha, chunks, is_new in pending:
                    self.db.execute("DELETE FROM files WHERE path = ?", (path,))
                    file_id = self.db.execute(
                        "INSERT INTO files (path, mtime_ns, size, sha256, indexed_at) VALUES (?, ?, ?, ?, ?)",
                        (path, stat.st_mtime_ns, stat.st_size, sha, now)).lastrowid
                    self.db.executemany(
                        "INSERT INTO chunks (file_id, ordinal, heading, text, start_line, vector, full) VALUES (?, ?, ?, ?, ?, ?, ?)",
                        [(file_id, i, c.heading, c.text, c.start_line, codes[row + i].tobytes(),
                          None if kind == "float32" else vectors[row + i].astype("<f4").tobytes())
                         for i, c in enumerate(chunks)])
                    row += len(chunks)
                    (report.added if is_new else report.updated).append(path)
                    report.chunks_embedded += len(chunks)
            pending.clear()

        for path in _walk(root, exts, skip={self.path.resolve()}):
            key = str(path)
            seen.add(key)
            try:
                stat = path.stat()
                old = known.get(key)
                if old is not None and (old[1], old[2]) == (stat.st_mtime_ns, stat.st_size):
                    report.unchanged += 1
                    continue
                data = path.read_bytes()
            except OSError as e:
                report.skipped.append((key, f"cannot be read ({e.strerror or e})"))
                continue
            sha = hashlib.sha256(data).hexdigest()
            if old is not None and old[3] == sha:
                with self.db:
                    self.db.execute("UPDATE files SET mtime_ns = ?, size = ? WHERE id = ?", (stat.st_mtime_ns, stat.st_size, old[0]))
                report.touched += 1
                continue
            moved = by_sha.get(sha)
            if old is None and moved is not None and moved not in seen and not os.path.exists(moved):
                with self.db:  # a rename: same text, same chunks, so the vectors are kept
                    self.db.execute("UPDATE files SET path = ?, mtime_ns = ?, size = ? WHERE path = ?",
                                    (key, stat.st_mtime_ns, stat.st_size, moved))
                del by_sha[sha]
                seen.add(moved)
                report.renamed.append((moved, key))
                continue
            try:
                text = data.decode("utf-8-sig")
            except UnicodeDecodeError:
                report.skipped.append((key, "not UTF-8 text"))
                continue
            chunks = chunk_document(text, path.suffix.lower() in MARKDOWN_EXTENSIONS, settings["chunk_size"],
                                    settings["chunk_overlap"], measure)
            if progress is not None:
                progress(key)
            pending.append((key, stat, sha, chunks, old is None))
            if sum(len(p[3]) for p in pending) >= FLUSH_CHUNKS:
                flush()
        flush()

        if not root.is_dir():  # the folder went away during the walk: what is missing was not deleted
            raise FileNotFoundError(f"{root} disappeared while it was being indexed; the store keeps its files")
        # Files of this folder that are gone (or no longer readable) leave the store.
        unreadable = {path for path, _ in report.skipped}
        gone = [p for p in known if (_under(p, root) and p not in seen) or p in unreadable]
        with self.db:
            for p in gone:
                self.db.execute("DELETE FROM files WHERE path = ?", (p,))
        report.removed = sorted(gone)
        report.files_total, report.chunks_total = self.counts()
        report.seconds = time.perf_counter() - started
        return report

    def _codes_for(self, vectors: np.ndarray, kind: str, dim: int) -> np.ndarray:
        """First-pass codes of new vectors (inside the caller's transaction). For int8, ranges that do not
        cover them are widened from every stored vector, and every stored code is re-made with the new ones."""
        if kind != "int8":
            return quantize.encode(truncate(vectors, dim) if kind == "binary" else vectors, kind)
        first = truncate(vectors, dim)
        ranges = self._int8_ranges(dim)
        if ranges is None or not quantize.covers(ranges, first):
            rows = self.db.execute("SELECT id, full FROM chunks").fetchall()
            old = truncate(np.frombuffer(b"".join(r[1] for r in rows), "<f4").reshape(len(rows), -1), dim) if rows \
                else np.empty((0, dim), np.float32)
            ranges = quantize.calibrate(np.concatenate([old, first]))
            self._set_meta({"int8_ranges": ranges.tobytes().hex()})
            self.db.executemany("UPDATE chunks SET vector = ? WHERE id = ?",
                                [(c.tobytes(), r[0]) for r, c in zip(rows, quantize.encode(old, "int8", ranges))])
        return quantize.encode(first, "int8", ranges)

    # -- searching ---------------------------------------------------------------------------------

    def search(self, model: EmbeddingGemma | None, query: str, k: int = 10, mode: str = "hybrid",
               prompt_name: str = QUERY_PROMPT) -> Results:
        """The ``k`` chunks that best match ``query``: by meaning (``vector``), by words (``keyword``, BM25),
        or both fused by reciprocal rank (``hybrid``). ``model`` may be None for keyword search."""
        if mode not in MODES:
            raise StoreError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        meta = self.meta
        if "model_sha256" not in meta:
            raise StoreError(f"{self.path} is empty: index a folder into it first (mlx-embedgemma index DIR --db {self.path})")
        notes: list[str] = []
        depth = max(k, FUSION_DEPTH) if mode == "hybrid" else k
        lists: list[list[tuple[int, float]]] = []
        if mode != "vector":
            words, note = self._keywords(query)
            if not words and mode == "keyword":
                raise StoreError(note + ": use --mode vector (or hybrid) to search by meaning")
            if note and mode == "hybrid":
                notes.append(note + ": ranked by meaning only")
            elif note:
                notes.append(note + ": these matches are barely ranked; add a rarer word, or use --mode vector")
            if words and not (note and mode == "hybrid"):
                lists.append(self._keyword_hits(words, depth))
        if mode != "keyword":
            if model is None:
                raise StoreError("searching by meaning needs the model: give --model, or use --mode keyword")
            lists.append(self._vector_hits(model, query, depth, prompt_name))
        if len(lists) == 1:
            ranked = lists[0][:k]
        else:
            ranked = ranking.fuse([[i for i, _ in hits] for hits in lists])[:k]
        return Results([self._hit(rank, chunk_id, score) for rank, (chunk_id, score) in enumerate(ranked, 1)], notes)

    def _hit(self, rank: int, chunk_id: int, score: float) -> Hit:
        path, line, heading, text, ordinal = self.db.execute(
            "SELECT f.path, c.start_line, c.heading, c.text, c.ordinal FROM chunks c JOIN files f ON f.id = c.file_id "
            "WHERE c.id = ?", (chunk_id,)).fetchone()
        return Hit(rank, float(score), path, line, heading, text, ordinal)

    def _keywords(self, query: str) -> tuple[list[str], str | None]:
        """The query's words to match (as FTS5 phrases, so no character of the query is FTS5 syntax), and
        what is wrong with them: none at all, or only words in more than half of the chunks, whose BM25
        weight is nil (stop words, in any language). Such common words are left out beside rarer ones."""
        words = list(dict.fromkeys(w.lower() for w in re.findall(r"\w+", query)))
        if not words:
            return [], "the query has no words to match (only punctuation or symbols)"
        total = self.counts()[1]
        rare = [w for w in words if 2 * self._matches(w) <= total]
        if not rare:
            return words, f"every word of the query ({', '.join(words)}) is in more than half of the chunks"
        return rare, None

    def _matches(self, word: str) -> int:
        return self.db.execute("SELECT COUNT(*) FROM chunks_fts WHERE chunks_fts MATCH ?", (f'"{word}"',)).fetchone()[0]

    def _keyword_hits(self, words: list[str], k: int) -> list[tuple[int, float]]:
        match = " OR ".join(f'"{w}"' for w in words)
        rows = self.db.execute("SELECT rowid, -bm25(chunks_fts) FROM chunks_fts WHERE chunks_fts MATCH ? "
                               "ORDER BY bm25(chunks_fts), rowid LIMIT ?", (match, k)).fetchall()
        return [(int(r[0]), float(r[1])) for r in rows]

    def _vector_hits(self, model: EmbeddingGemma, query: str, k: int, prompt_name: str) -> list[tuple[int, float]]:
        meta = self.meta
        dim = self.check_model(model, None)
        ids, first = self._first_pass(meta["store"], dim)
        if not len(ids):
            return []
        full = int(meta["full_dim"]) if first.store != "float32" else dim
        q = model.encode(query, prompt_name=prompt_name, dim=full)
        rows, scores = ranking.funnel(q, first, k, rescore=lambda pool: self._full_vectors(ids[pool], full))
        return [(int(ids[r]), float(s)) for r, s in zip(rows, scores)]

    def _first_pass(self, kind: str, dim: int) -> tuple[np.ndarray, quantize.FirstPass]:
        """Every chunk's id and code, read once and kept until the file changes (by this or another process)."""
        version = (self.db.execute("PRAGMA data_version").fetchone()[0], self.db.total_changes)
        if self._codes is None or self._codes[0] != version:
            rows = self.db.execute("SELECT id, vector FROM chunks ORDER BY id").fetchall()
            dtype = {"float32": "<f4", "int8": np.int8, "binary": np.uint8}[kind]
            codes = np.frombuffer(b"".join(r[1] for r in rows), dtype).reshape(len(rows), quantize.code_bytes(kind, dim) // np.dtype(dtype).itemsize)
            ranges = self._int8_ranges(dim) if kind == "int8" else None
            ids = np.fromiter((r[0] for r in rows), np.int64, len(rows))
            self._codes = (version, ids, quantize.FirstPass(codes, kind, dim, ranges))
        return self._codes[1], self._codes[2]

    def _int8_ranges(self, dim: int) -> np.ndarray | None:
        stored = self.meta.get("int8_ranges")
        return np.frombuffer(bytes.fromhex(stored), np.float32).reshape(2, dim) if stored else None

    def _full_vectors(self, ids: np.ndarray, full: int) -> np.ndarray:
        wanted = [int(i) for i in ids]
        found = dict(self.db.execute(f"SELECT id, full FROM chunks WHERE id IN ({','.join('?' * len(wanted))})", wanted))
        return np.frombuffer(b"".join(found[i] for i in wanted), "<f4").reshape(len(wanted), full)


def rebuild(db: str | Path, build: Callable[[SearchIndex], IndexReport]) -> IndexReport:
    """Build a new store beside ``db`` with ``build`` and put it in place only once it is complete, so the
    old one stays searchable meanwhile and after a crash (the next rebuild clears the partial file)."""
    db = Path(db).expanduser()
    aside = db.with_name(f".{db.name}.rebuild")
    for leftover in (aside, aside.with_name(aside.name + "-journal")):
        leftover.unlink(missing_ok=True)
    with SearchIndex(aside) as new:
        report = build(new)
    if db.exists():
        SearchIndex(db).close()  # opening rolls back what a crashed writer left in its journal, before the swap
    os.replace(aside, db)
    return report


def _under(path: str, root: Path) -> bool:
    return path == str(root) or path.startswith(str(root) + os.sep)


def _walk(root: Path, extensions: tuple[str, ...], skip: set[Path]) -> Iterator[Path]:
    """Text files under ``root`` in a stable order, skipping hidden files and folders (.git, .obsidian...)."""
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith(".") or not name.lower().endswith(extensions):
                continue
            path = Path(folder) / name
            if path.resolve() in skip:
                continue
            yield path
