"""Training rows from JSONL: ``anchor``, ``positive`` and optionally ``negative`` (a string or a list).

Every problem names the line and the fix; nothing malformed is trained on. Duplicate pairs are dropped
with a warning (they add nothing but weight), texts over the length limit are reported before training.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

FIELDS = ("anchor", "positive", "negative")
# Problems listed in one error before the rest are summarized.
SHOWN = 5


class DataError(ValueError):
    """The training or validation file cannot be used as it is; the message names the lines and the fix."""


class DataWarning(UserWarning):
    """Something in the data is probably not what was meant (duplicates, texts that will be truncated)."""


@dataclass(frozen=True)
class Example:
    anchor: str
    positive: str
    negatives: tuple[str, ...] = ()
    line: int = 0  # 1-based line in its file, for messages

    @property
    def texts(self) -> tuple[str, ...]:
        return (self.anchor, self.positive, *self.negatives)


def read_examples(path: str | Path) -> list[Example]:
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"{path} does not exist; pass a JSONL file with one {{\"anchor\": ..., \"positive\": ...}} object per line")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text ({e}); save it as UTF-8 JSONL") from None
    examples, problems, unknown = [], [], set()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            example, extra = _parse(line, number)
        except DataError as e:
            problems.append(str(e))
            continue
        unknown |= extra
        examples.append(example)
    if problems:
        raise DataError(f"{path}: {listing(problems)}")
    if not examples:
        raise DataError(f"{path} has no rows; write one {{\"anchor\": ..., \"positive\": ...}} object per line")
    if unknown:
        warnings.warn(f"{path}: fields {sorted(unknown)} are not used (only {', '.join(FIELDS)}); rename them if they hold training text", DataWarning, stacklevel=2)
    widths = {len(e.negatives) for e in examples}
    if len(widths) > 1:
        first = {w: next(e.line for e in examples if len(e.negatives) == w) for w in sorted(widths)}
        raise DataError(
            f"{path}: rows have different numbers of negatives ({', '.join(f'{w} on line {n}' for w, n in first.items())}); "
            "give every row the same number (or none)"
        )
    return _without_duplicates(path, examples)


def _parse(line: str, number: int) -> tuple[Example, set[str]]:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"line {number} is not valid JSON ({e.msg}); fix or remove it") from None
    if not isinstance(row, dict):
        raise DataError(f"line {number} is a JSON {type(row).__name__}, not an object with \"anchor\" and \"positive\"")
    missing = [k for k in ("anchor", "positive") if k not in row]
    if missing:
        raise DataError(f"line {number} lacks {' and '.join(repr(k) for k in missing)}; every row needs \"anchor\" and \"positive\"")
    negatives = row.get("negative", [])
    negatives = [negatives] if isinstance(negatives, str) else negatives
    if not isinstance(negatives, list):
        raise DataError(f"line {number}: \"negative\" must be a string or a list of strings")
    for name, value in [("anchor", row["anchor"]), ("positive", row["positive"])] + [("negative", n) for n in negatives]:
        if not isinstance(value, str):
            raise DataError(f"line {number}: {name!r} must be a string, got {type(value).__name__}")
        if not value.strip():
            raise DataError(f"line {number}: {name!r} is empty; remove the row or fill it in")
    return Example(row["anchor"], row["positive"], tuple(negatives), number), set(row) - set(FIELDS)


def _without_duplicates(path: Path, examples: list[Example]) -> list[Example]:
    first: dict[tuple[str, str], int] = {}
    kept, repeats = [], []
    for e in examples:
        key = (e.anchor, e.positive)
        if key in first:
            repeats.append(f"line {e.line} repeats line {first[key]}")
            continue
        first[key] = e.line
        kept.append(e)
    if repeats:
        warnings.warn(
            f"{path}: {len(repeats)} duplicate (anchor, positive) pairs dropped: {listing(repeats)}. "
            "Remove them from the file to silence this",
            DataWarning,
            stacklevel=3,
        )
    return kept


def check_lengths(examples: Sequence[Example], lengths: Sequence[Sequence[int]], max_length: int, what: str) -> None:
    """Warn, naming lines, about texts whose tokens (prompt, <bos> and <eos> included) exceed ``max_length``.

    ``lengths[i]`` holds the token counts of ``examples[i].texts``.
    """
    names = ("anchor", "positive")
    long = [
        f"line {e.line} {names[k] if k < 2 else 'negative'} ({n} tokens)"
        for e, counts in zip(examples, lengths)
        for k, n in enumerate(counts)
        if n > max_length
    ]
    if long:
        warnings.warn(
            f"{what}: {len(long)} texts are over --max-length {max_length} and will be truncated: {listing(long)}. "
            "Raise --max-length (memory grows with it) or shorten them",
            DataWarning,
            stacklevel=2,
        )


def listing(problems: Sequence[str]) -> str:
    """The first few problems, and how many more there are."""
    more = f" (and {len(problems) - SHOWN} more)" if len(problems) > SHOWN else ""
    return "; ".join(problems[:SHOWN]) + more
