"""Cutting a document into chunks: Markdown by headings, then paragraphs; plain text by paragraphs.

Sizes are measured by a ``measure`` function: the model's tokenizer for a store (see
:func:`token_measure`), so a chunk plus the document prompt never exceeds the model's context; character
counts (``len``) where no model is at hand.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

MARKDOWN_EXTENSIONS = (".md", ".markdown", ".mdx")
DEFAULT_EXTENSIONS = (*MARKDOWN_EXTENSIONS, ".txt", ".text", ".rst")
DEFAULT_CHUNK_TOKENS = 400
DEFAULT_OVERLAP_TOKENS = 50

Measure = Callable[[str], int]


@dataclass(frozen=True)
class Chunk:
    heading: str  # the Markdown heading path, "Title > Section"; "" in plain text or before any heading
    text: str
    start_line: int  # 1-based line of the chunk's first character in its file


def token_measure(model, prompt_name: str) -> tuple[Measure, int]:
    """(tokens a text adds to the prompt, the most a chunk may have): prompt, `<bos>` and `<eos>` included,
    a chunk of that many tokens is exactly the model's context."""
    prefix = model.prompt_prefix(prompt_name, None)
    overhead = len(model.tokenizer.encode([prefix]).ids[0])
    limit = model.max_seq_length - overhead

    def measure(text: str) -> int:
        encoded = model.tokenizer.encode([prefix + text])
        return limit + 1 if encoded.truncated else len(encoded.ids[0]) - overhead

    return measure, limit


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
    para: list[str] = []
    para_line = 0
    fence: str | None = None

    def flush() -> Iterator[_Block]:
        if para and any(p.strip() for p in para):
            yield _Block(section, " > ".join(t for _, t in stack), "\n".join(para).strip("\n"), para_line)
        para.clear()

    for n, line in enumerate(text.splitlines(), 1):
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


def _longest(fits: Callable[[int], bool], low: int, high: int) -> int:
    """The largest n in [low, high] with fits(n), for a fits that turns false once and stays so; low if none."""
    while low < high:
        mid = (low + high + 1) // 2
        if fits(mid):
            low = mid
        else:
            high = mid - 1
    return low


def _split_long(block: _Block, max_size: int, overlap: int, measure: Measure) -> Iterator[_Block]:
    """A paragraph over ``max_size`` in pieces cut at whitespace (inside a word only when one word is too
    long), each starting with about ``overlap`` of the piece before it."""
    text, start = block.text, 0
    while True:
        end = len(text)
        if measure(text[start:]) > max_size:
            end = _longest(lambda e: measure(text[start:e]) <= max_size, start + 1, len(text))
            cut = max(text.rfind(" ", start + (end - start) // 2, end), text.rfind("\n", start + (end - start) // 2, end))
            end = cut if cut > start else end
        yield _Block(block.section, block.heading, text[start:end].strip(), block.line + text.count("\n", 0, start))
        if end >= len(text):
            return
        nxt = end
        if overlap:
            # The earliest start whose text up to `end` still fits the overlap, moved to the next word.
            nxt = end - _longest(lambda n: measure(text[end - n:end]) <= overlap, 0, end - start - 1)
            space = text.find(" ", nxt, end)
            nxt = space + 1 if nxt > 0 and not text[nxt - 1].isspace() and space != -1 else nxt
        start = max(nxt, start + 1)
        while start < len(text) and text[start].isspace():
            start += 1


def chunk_document(text: str, markdown: bool, max_size: int, overlap: int, measure: Measure = len) -> list[Chunk]:
    """Chunks of at most ``max_size`` (by ``measure``); a paragraph longer than that is cut at whitespace.

    A chunk never spans two Markdown sections; within a section, a chunk starts with the last
    paragraphs of the one before it, up to ``overlap``, so a thought cut at a chunk boundary is found
    from both sides.
    """
    if max_size < 1 or not 0 <= overlap <= max_size // 2:
        raise ValueError("the chunk size must be positive and the overlap at most half of it")
    blocks: list[_Block] = []
    for b in _blocks(text, markdown):
        blocks.extend(_split_long(b, max_size, overlap, measure) if measure(b.text) > max_size else [b])
    chunks: list[Chunk] = []
    current: list[_Block] = []

    def joined(parts: list[_Block]) -> str:
        out = parts[0].text
        for prev, b in zip(parts, parts[1:]):  # blank lines between blocks kept as one, none where none was
            out += ("\n" if b.line <= prev.line + prev.text.count("\n") + 1 else "\n\n") + b.text
        return out

    def emit() -> None:
        if not all(b.is_heading for b in current):  # a heading with nothing under it before the next one
            chunks.append(Chunk(current[0].heading if markdown else "", joined(current), current[0].line))

    def size(parts: list[_Block]) -> int:
        return measure(joined(parts))

    fresh = 0  # blocks in `current` that no earlier chunk holds
    for block in blocks:
        if current and (block.section != current[0].section or size(current + [block]) > max_size):
            if fresh:
                emit()
            carried: list[_Block] = []
            if block.section == current[0].section:
                for b in reversed(current[1:] if len(current) > 1 else []):
                    if size([b, *carried]) > overlap or size([b, *carried, block]) > max_size:
                        break
                    carried.insert(0, b)
            current, fresh = carried, 0
        current.append(block)
        fresh += 1
    if current and fresh:
        emit()
    return chunks
