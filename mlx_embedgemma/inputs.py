"""What ``encode``, ``encode_iter`` and the CLI accept as texts, decided in one place.

Every item either becomes a vector or stops the call with an error that names its index and the fix:

- ``str`` (and numpy's ``str_``): embedded as is. Empty and whitespace-only strings, NUL and other
  control characters are valid text, as in the reference (an empty string is ``<bos><eos>``).
- ``None`` and every other non-string (numbers, bytes, nested lists): ``TypeError``. Bytes are not
  guessed at: the caller knows their encoding.
- A string with a lone surrogate (U+D800..U+DFFF, e.g. from ``errors="surrogateescape"`` decoding):
  ``ValueError``. It is not valid Unicode, has no UTF-8 form for the tokenizer, and replacing it
  silently would embed a text the caller never had.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_SURROGATE = re.compile("[\ud800-\udfff]")


def as_text_list(texts: Iterable[str]) -> list[str]:
    """All of ``texts`` as a list of checked strings, or the error for the first bad one."""
    if isinstance(texts, (bytes, bytearray)):
        raise TypeError("texts must be a str or an iterable of str, got bytes: decode it first, e.g. b.decode('utf-8')")
    if getattr(texts, "ndim", 1) != 1:  # a numpy array: iterating a 2-D one gives rows, a 0-d one fails
        raise TypeError(f"texts is a {texts.ndim}-d array of shape {texts.shape}; pass a 1-D array of strings")
    try:
        items = list(texts)
    except TypeError:
        raise TypeError(f"texts must be a str or an iterable of str, got {type(texts).__name__}") from None
    check_texts(items)
    return items


def check_texts(items: list, start: int = 0) -> None:
    """Raise for the first item that is not embeddable; ``start`` is the index of ``items[0]`` in the whole input."""
    for i, t in enumerate(items, start):
        check_text(t, f"texts[{i}]")


def check_text(text: object, name: str) -> None:
    if not isinstance(text, str):
        if isinstance(text, (bytes, bytearray)):
            hint = "decode it first, e.g. b.decode('utf-8')"
        else:
            hint = "pass only strings (use '' for an empty text)"
        raise TypeError(f"{name} is {type(text).__name__}, not str: {hint}")
    if not text.isascii() and (bad := _SURROGATE.search(text)):
        raise ValueError(
            f"{name} holds a lone surrogate U+{ord(bad.group()):04X} at position {bad.start()}, which is not valid "
            "Unicode: decode the source bytes with the right encoding, or replace such characters, "
            "e.g. text.encode('utf-8', 'replace').decode('utf-8')"
        )
