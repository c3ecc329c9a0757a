"""Semantic search over a folder of text and Markdown files, in one local SQLite file.

`mlx-embedgemma index DIR --db FILE` cuts every text and Markdown file into chunks (Markdown by
headings, then paragraphs; plain text by paragraphs; at most ``chunk_chars`` characters, neighbouring
chunks of a section sharing up to ``overlap_chars`` of paragraphs), embeds them with the model's
``document`` prompt at one Matryoshka size and stores them with the file's size, mtime and sha256.
Running it again re-embeds only files whose content changed and drops files that are gone.
`mlx-embedgemma search "query" --db FILE` embeds the query with the ``query`` prompt at the store's
size and ranks every chunk by cosine similarity (brute force with numpy). Nothing leaves the machine.

A store remembers the model (sha256 of its weights), size and chunking it was made with, and refuses to
mix others in: vectors of two models, or two sizes, cannot be compared.
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

from .embedder import EmbeddingGemma, TruncationWarning

FORMAT_VERSION = 1
DEFAULT_EXTENSIONS = (".md", ".markdown", ".mdx", ".txt", ".text", ".rst")
MARKDOWN_EXTENSIONS = (".md", ".markdown", ".mdx")
DEFAULT_CHUNK_CHARS = 1500
DEFAULT_OVERLAP_CHARS = 200
DOCUMENT_PROMPT = "document"
QUERY_PROMPT = "query"
FLUSH_CHUNKS = 128  # chunks embedded together (across small files) before they are written

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS files (
    id INTEGER PRIMARY KEY,
    path TEXT UNIQUE NOT NULL,
    mtime_ns INTEGER NOT NULL,
    size INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    indexed_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY,
    file_id INTEGER NOT NULL REFERENCES files(id) ON DELETE CASCADE,
    ordinal INTEGER NOT NULL,
    heading TEXT NOT NULL,
    text TEXT NOT NULL,
    start_line INTEGER NOT NULL,
    embedding BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS chunks_by_file ON chunks(file_id);
"""


class IndexError_(ValueError):
    """The store cannot be used as asked (another model or size, a newer format, not a store); says the fix."""


# --- chunking ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Chunk:
    heading: str  # the Markdown heading path, "Title > Section"; "" in plain text or before any heading
    text: str
    start_line: int  # 1-based line of the chunk's first character in its file


@dataclass
class _Block:
    """A paragraph (or fenced code block, or heading line) and the section it belongs to."""

    section: int
    heading: str
    text: str
    line: int
    is_heading: bool = False


_HEADING = re.compile(r"^(#{1,6})[ \t]+(.*?)[ \t]*#*[ \t]*$")
_FENCE = re.compile(r"^[ \t]{0,3}(`{3,}|~{3,})")


def _blocks(text: str, markdown: bool) -> Iterator[_Block]:
    section, stack = 0, []  # stack: (level, title) of the headings above the current line
    lines = text.splitlines()
    para: list[str] = []
    para_line = 0
    fence: str | None = None

    def flush() -> Iterator[_Block]:
        if para and any(p.strip() for p in para):
            yield _Block(section, " > ".join(t for _, t in stack), "\n".join(para).strip("\n"), para_line)
        para.clear()

    for n, line in enumerate(lines, 1):
        if markdown and (m := _FENCE.match(line)):
            marker = m.group(1)
            if fence is None:
                fence = marker[0] * len(marker)
                if not para:
                    para_line = n
                para.append(line)
                continue
            if marker.startswith(fence):
                fence = None
                para.append(line)
                continue
        if fence is not None:
            para.append(line)
            continue
        heading = _HEADING.match(line) if markdown else None
        if heading:
            yield from flush()
            level, title = len(heading.group(1)), heading.group(2).strip()
            while stack and stack[-1][0] >= level:
                stack.pop()
            stack.append((level, title))
            section += 1
            yield _Block(section, " > ".join(t for _, t in stack), line.strip(), n, is_heading=True)
            continue
        if not line.strip():
            yield from flush()
            continue
        if not para:
            para_line = n
        para.append(line)
    yield from flush()


def _split_long(block: _Block, max_chars: int, overlap: int) -> Iterator[_Block]:
    """A paragraph over ``max_chars`` in pieces cut at whitespace, each repeating about ``overlap`` characters."""
    text, start = block.text, 0
    while True:
        end = len(text)
        if end - start > max_chars:
            end = start + max_chars
            cut = max(text.rfind(" ", start + max_chars // 2, end), text.rfind("\n", start + max_chars // 2, end))
            end = cut if cut > start else end
        yield _Block(block.section, block.heading, text[start:end].strip(), block.line + text.count("\n", 0, start))
        if end >= len(text):
            return
        nxt = end
        if overlap:
            space = text.find(" ", end - overlap, end)  # start the overlap at a word
            nxt = space + 1 if space != -1 else end - overlap
        start = max(nxt, start + 1)
        while start < len(text) and text[start].isspace():
            start += 1


def chunk_document(text: str, markdown: bool, max_chars: int = DEFAULT_CHUNK_CHARS,
                   overlap_chars: int = DEFAULT_OVERLAP_CHARS) -> list[Chunk]:
    """Chunks of at most ``max_chars`` characters (a paragraph longer than that is cut at whitespace).

    A chunk never spans two Markdown sections; within a section, a chunk starts with the last
    paragraphs of the one before it, up to ``overlap_chars`` characters, so a thought cut at a chunk
    boundary is found from both sides.
    """
    if max_chars < 1 or not 0 <= overlap_chars <= max_chars // 2:
        raise ValueError("the chunk size must be positive and the overlap at most half of it")
    blocks: list[_Block] = []
    for b in _blocks(text, markdown):
        blocks.extend(_split_long(b, max_chars, overlap_chars) if len(b.text) > max_chars else [b])
    chunks: list[Chunk] = []
    current: list[_Block] = []

    def emit() -> None:
        if all(b.is_heading for b in current):  # a heading with nothing under it before the next one
            return
        text = current[0].text
        for prev, b in zip(current, current[1:]):  # blank lines between blocks kept as one, none where none was
            text += ("\n" if b.line <= prev.line + prev.text.count("\n") + 1 else "\n\n") + b.text
        chunks.append(Chunk(current[0].heading if markdown else "", text, current[0].line))

    def size(parts: list[_Block]) -> int:
        return sum(len(b.text) for b in parts) + 2 * max(len(parts) - 1, 0)

    fresh = 0  # blocks in `current` that no earlier chunk holds
    for block in blocks:
        if current and (block.section != current[0].section or size(current + [block]) > max_chars):
            if fresh:
                emit()
            carried: list[_Block] = []
            if block.section == current[0].section:
                for b in reversed(current[1:] if len(current) > 1 else []):
                    if size([b, *carried]) > overlap_chars or size([b, *carried, block]) > max_chars:
                        break
                    carried.insert(0, b)
            current, fresh = carried, 0
        current.append(block)
        fresh += 1
    if current and fresh:
        emit()
    return chunks


# --- the store --------------------------------------------------------------------------------------


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
class IndexReport:
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: int = 0
    touched: int = 0  # mtime changed, content did not: not re-embedded
    removed: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, why)
    chunks_embedded: int = 0
    truncated: int = 0  # chunks longer than the model's context, cut as sentence-transformers cuts them
    chunks_total: int = 0
    files_total: int = 0
    seconds: float = 0.0


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


class SearchIndex:
    """One SQLite file: ``meta``, ``files`` and ``chunks`` (float32 unit vectors as BLOBs)."""

    def __init__(self, db: str | Path):
        self.path = Path(db).expanduser()
        try:
            self.db = sqlite3.connect(self.path)
            self.db.execute("PRAGMA foreign_keys = ON")
            self.db.executescript(SCHEMA)
        except sqlite3.DatabaseError as e:
            raise IndexError_(f"{self.path} is not a search index ({e}); give another --db") from None
        version = self.meta.get("format_version")
        if version is not None and int(version) > FORMAT_VERSION:
            raise IndexError_(f"{self.path} has format {version}, newer than this mlx-embedgemma ({FORMAT_VERSION}): upgrade it")

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

    def check_model(self, model: EmbeddingGemma, dim: int | None, rebuild: bool = False) -> int:
        """The size to use with ``model``; IndexError_ if the store holds another model's or size's vectors."""
        meta = self.meta
        if rebuild or "model_sha256" not in meta:
            return model.check_dim(dim) if dim is not None else model.network.args.embedding_dim
        if self.model_sha256(model) != meta["model_sha256"]:
            raise IndexError_(
                f"{self.path} was made with another model ({meta.get('model_name')}, weights sha256 "
                f"{meta['model_sha256'][:12]}, from {meta.get('model_path')}); its vectors cannot be compared with "
                f"{model.path}'s. Use that model, or re-index everything with --rebuild"
            )
        stored = int(meta["dim"])
        if dim is not None and dim != stored:
            raise IndexError_(f"{self.path} holds {stored}-d vectors; give --dim {stored} (or no --dim), "
                              f"or re-index everything at {dim} with --rebuild")
        return stored

    # -- indexing ----------------------------------------------------------------------------------

    def index_folder(
        self,
        folder: str | Path,
        model: EmbeddingGemma,
        dim: int | None = None,
        rebuild: bool = False,
        chunk_chars: int | None = None,
        overlap_chars: int | None = None,
        extensions: Iterable[str] = DEFAULT_EXTENSIONS,
        batch_size: int = 32,
        progress: Callable[[str], None] | None = None,
    ) -> IndexReport:
        """Bring the store up to date with ``folder``: new and changed files embedded, removed ones dropped."""
        started = time.perf_counter()
        root = Path(folder).expanduser().resolve()
        if not root.is_dir():
            raise FileNotFoundError(f"{root} is not a folder")
        dim = self.check_model(model, dim, rebuild)
        meta = self.meta
        if rebuild:
            self.db.execute("DELETE FROM files")  # chunks go with them
            self.db.execute("DELETE FROM meta")
            meta = {}
        elif "chunk_chars" in meta:
            for name, given in (("chunk_chars", chunk_chars), ("overlap_chars", overlap_chars)):
                if given is not None and given != int(meta[name]):
                    raise IndexError_(f"{self.path} was chunked with {name.replace('_', '-')} {meta[name]}; "
                                      f"keep it, or re-index everything with --rebuild")
        chunk_chars = chunk_chars or int(meta.get("chunk_chars", DEFAULT_CHUNK_CHARS))
        overlap_chars = overlap_chars if overlap_chars is not None else int(meta.get("overlap_chars", DEFAULT_OVERLAP_CHARS))
        if chunk_chars < 1 or not 0 <= overlap_chars <= chunk_chars // 2:
            raise ValueError("--chunk-chars must be positive and --overlap-chars at most half of it")
        prefix = model.prompt_prefix(DOCUMENT_PROMPT, None)
        weights = Path(model.path).expanduser().resolve() / "model.safetensors"
        st = weights.stat()
        self._set_meta({
            "format_version": FORMAT_VERSION, "model_sha256": meta.get("model_sha256") or self.model_sha256(model),
            "model_name": Path(model.path).name, "model_path": str(weights.parent), "model_size": st.st_size,
            "model_mtime_ns": st.st_mtime_ns, "dim": dim, "document_prompt": prefix, "query_prompt_name": QUERY_PROMPT,
            "chunk_chars": chunk_chars, "overlap_chars": overlap_chars, "vector_dtype": "float32",
        })
        self.db.commit()

        report = IndexReport()
        exts = tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions)
        known = {row[0]: row[1:] for row in self.db.execute("SELECT path, id, mtime_ns, size, sha256 FROM files")}
        seen: set[str] = set()
        pending: list[tuple[str, os.stat_result, str, list[Chunk], bool]] = []

        def flush() -> None:
            texts = [c.text for *_, chunks, _ in pending for c in chunks]
            vectors = None
            if texts:
                # Said once in the report rather than as a warning per batch.
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always", TruncationWarning)
                    vectors = model.encode(texts, prompt_name=DOCUMENT_PROMPT, dim=dim, batch_size=batch_size)
                for w in caught:
                    if isinstance(w.message, TruncationWarning):
                        report.truncated += len(w.message.indices)
                    else:
                        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
            row = 0
            now = datetime.now(timezone.utc).isoformat(timespec="seconds")
            with self.db:
                for path, stat, sha, chunks, is_new in pending:
                    self.db.execute("DELETE FROM files WHERE path = ?", (path,))
                    file_id = self.db.execute(
                        "INSERT INTO files (path, mtime_ns, size, sha256, indexed_at) VALUES (?, ?, ?, ?, ?)",
                        (path, stat.st_mtime_ns, stat.st_size, sha, now)).lastrowid
                    self.db.executemany(
                        "INSERT INTO chunks (file_id, ordinal, heading, text, start_line, embedding) VALUES (?, ?, ?, ?, ?, ?)",
                        [(file_id, i, c.heading, c.text, c.start_line, vectors[row + i].astype("<f4").tobytes())
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
            try:
                text = data.decode("utf-8-sig")
            except UnicodeDecodeError:
                report.skipped.append((key, "not UTF-8 text"))
                continue
            chunks = chunk_document(text, path.suffix.lower() in MARKDOWN_EXTENSIONS, chunk_chars, overlap_chars)
            if progress is not None:
                progress(key)
            pending.append((key, stat, sha, chunks, old is None))
            if sum(len(p[3]) for p in pending) >= FLUSH_CHUNKS:
                flush()
        flush()

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

    # -- searching ---------------------------------------------------------------------------------

    def search(self, model: EmbeddingGemma, query: str, k: int = 10, prompt_name: str = QUERY_PROMPT) -> list[Hit]:
        """The ``k`` chunks most similar to ``query`` (embedded with ``prompt_name`` at the store's size)."""
        meta = self.meta
        if "model_sha256" not in meta:
            raise IndexError_(f"{self.path} is empty: index a folder into it first (mlx-embedgemma index DIR --db {self.path})")
        dim = self.check_model(model, None)
        rows = self.db.execute("SELECT id, embedding FROM chunks").fetchall()
        if not rows:
            return []
        ids = np.fromiter((r[0] for r in rows), np.int64, len(rows))
        matrix = np.frombuffer(b"".join(r[1] for r in rows), "<f4").reshape(len(rows), dim)
        q = model.encode(query, prompt_name=prompt_name, dim=dim)
        scores = matrix @ q
        k = min(k, len(rows))
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top], kind="stable")]
        hits = []
        for rank, i in enumerate(top, 1):
            path, line, heading, text, ordinal = self.db.execute(
                "SELECT f.path, c.start_line, c.heading, c.text, c.ordinal FROM chunks c JOIN files f ON f.id = c.file_id "
                "WHERE c.id = ?", (int(ids[i]),)).fetchone()
            hits.append(Hit(rank, float(scores[i]), path, line, heading, text, ordinal))
        return hits


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
