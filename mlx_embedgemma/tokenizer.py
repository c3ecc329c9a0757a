"""Text -> token ids exactly as the reference (Hugging Face GemmaTokenizer via sentence-transformers).

SentencePiece on the model's own ``tokenizer.model`` gives the reference ids (checked on every row of
the reference set) at a sixth of the memory of the Rust ``tokenizers`` library for this 262k vocab
(≈50 MB RSS instead of ≈285 MB), and loads in 0.07 s instead of 1.2 s.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import sentencepiece as spm

TOKENIZER_FILE = "tokenizer.model"


@dataclass(frozen=True)
class Encoded:
    ids: list[list[int]]
    truncated: list[int]  # indices of the texts that were cut to max_length


class Tokenizer:
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
        self.bos_id, self.eos_id, self.max_length = bos_id, eos_id, max_length

    @property
    def vocab_size(self) -> int:
        return self._sp.vocab_size()

    def encode(self, texts: list[str]) -> Encoded:
        """`<bos>` + ids + `<eos>`; over-long texts keep `<bos>` first and `<eos>` last, like the reference."""
        keep = self.max_length - 2
        pieces = self._sp.encode(texts)
        ids = [[self.bos_id, *p[:keep], self.eos_id] for p in pieces]
        return Encoded(ids, [i for i, p in enumerate(pieces) if len(p) > keep])
