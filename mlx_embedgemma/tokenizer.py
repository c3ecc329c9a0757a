"""Text -> token ids exactly as the reference (Hugging Face GemmaTokenizer via sentence-transformers).

SentencePiece on the model's own ``tokenizer.model`` gives the reference ids (checked on every row of
the reference set) in a fraction of the memory and load time of the Rust ``tokenizers`` library for
this 262k vocab (the project brief's measurements; README "Memory"). Folders converted by other
tools may carry only ``tokenizer.json``; for those (and only those) the ``tokenizers`` library is used,
an optional dependency. Converting its BPE vocabulary back into a SentencePiece model was the other
option; reading the file with the library that defines its format is the one that cannot drift.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import sentencepiece as spm

TOKENIZER_FILE = "tokenizer.model"
TOKENIZER_JSON = "tokenizer.json"


@dataclass(frozen=True)
class Encoded:
    ids: list[list[int]]
    truncated: list[int]  # indices of the texts that were cut to max_length


class Tokenizer:
    """SentencePiece on ``tokenizer.model``."""

    def __init__(self, path: str | Path, bos_id: int, eos_id: int, max_length: int):
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing; re-convert the model with `mlx-embedgemma convert`")
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.Load(str(path))
        except (OSError, RuntimeError) as e:
            raise ValueError(f"{path} is not a valid SentencePiece model ({e}); re-convert the model") from None
        if max_length < 3:
            raise ValueError(f"max_length must be at least 3 (bos, one token, eos), got {max_length}")
        self.path, self.bos_id, self.eos_id, self.max_length = path, bos_id, eos_id, max_length

    @property
    def vocab_size(self) -> int:
        return self._sp.vocab_size()

    def encode(self, texts: list[str]) -> Encoded:
        keep = self.max_length - 2
        pieces = self._sp.encode(texts)
        return _with_special_tokens(pieces, self.bos_id, self.eos_id, keep)


class JsonTokenizer:
    """The ``tokenizers`` library on a ``tokenizer.json``, for folders without ``tokenizer.model``."""

    def __init__(self, path: Path, bos_id: int, eos_id: int, max_length: int):
        try:
            from tokenizers import Tokenizer as RustTokenizer  # imported only for such folders: it is large
        except ImportError:
            raise ImportError(
                f"{path.parent} has {TOKENIZER_JSON} but no {TOKENIZER_FILE}; reading it needs the tokenizers library: "
                "pip install 'mlx-embedgemma[tokenizers]' (or copy the model's tokenizer.model into the folder, "
                "which is faster and lighter)"
            ) from None
        try:
            self._tok = RustTokenizer.from_file(str(path))
        except Exception as e:  # the library raises its own exception type for malformed files
            raise ValueError(f"{path} is not a valid tokenizer.json ({e})") from None
        if max_length < 3:
            raise ValueError(f"max_length must be at least 3 (bos, one token, eos), got {max_length}")
        self.path, self.bos_id, self.eos_id, self.max_length = path, bos_id, eos_id, max_length

    @property
    def vocab_size(self) -> int:
        # Without added tokens: EmbeddingGemma's tokenizer.json adds <image_soft_token> at 262144, one
        # past the embedding table (SentencePiece never produces it; see encode).
        return self._tok.get_vocab_size(with_added_tokens=False)

    def encode(self, texts: list[str]) -> Encoded:
        pieces = [e.ids for e in self._tok.encode_batch(texts, add_special_tokens=False)]
        beyond = [i for p in pieces for i in p if i >= self.vocab_size]
        if beyond:
            raise ValueError(
                f"the texts contain {self._tok.id_to_token(beyond[0])!r}, a token tokenizer.json adds that has no "
                "embedding in this model; remove it from the text"
            )
        return _with_special_tokens(pieces, self.bos_id, self.eos_id, self.max_length - 2)


def open_tokenizer(folder: Path, bos_id: int, eos_id: int, max_length: int) -> Tokenizer | JsonTokenizer:
    """``tokenizer.model`` when the folder has one (exact and light), else ``tokenizer.json``."""
    if (folder / TOKENIZER_FILE).is_file():
        return Tokenizer(folder / TOKENIZER_FILE, bos_id, eos_id, max_length)
    if not (folder / TOKENIZER_JSON).is_file():
        raise FileNotFoundError(
            f"{folder} has no tokenizer: {folder / TOKENIZER_FILE} is missing, and so is {TOKENIZER_JSON}. Copy the model's {TOKENIZER_FILE} "
            "back into the folder, or re-convert the model with `mlx-embedgemma convert`"
        )
    return JsonTokenizer(folder / TOKENIZER_JSON, bos_id, eos_id, max_length)


def _with_special_tokens(pieces: list[list[int]], bos_id: int, eos_id: int, keep: int) -> Encoded:
    """`<bos>` + ids + `<eos>`; over-long texts keep `<bos>` first and `<eos>` last, like the reference."""
    ids = [[bos_id, *p[:keep], eos_id] for p in pieces]
    return Encoded(ids, [i for i, p in enumerate(pieces) if len(p) > keep])
