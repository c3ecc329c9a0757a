"""Hard negatives mined with the base model, as sentence-transformers' ``mine_hard_negatives`` does.

For each anchor, the other rows' positives ranked by similarity; its own positive is skipped, and so is
any candidate scored within a margin of the positive: those are likely unlabelled positives, and
training against them would teach the model to push apart what belongs together.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

from .data import DataError, Example

# Candidates scoring above (1 - margin) x the positive's score are skipped (relative_margin in sentence-transformers).
RELATIVE_MARGIN = 0.05


def mine_hard_negatives(
    examples: Sequence[Example], embed_texts: Callable[[list[str], str], np.ndarray], count: int, margin: float = RELATIVE_MARGIN
) -> list[Example]:
    if count < 1:
        raise ValueError(f"--hard-negatives must be a positive integer, got {count}")
    if any(e.negatives for e in examples):
        raise DataError("--hard-negatives: the rows already have negatives; remove the \"negative\" field or the option")
    corpus = sorted({e.positive for e in examples})
    anchors = embed_texts([e.anchor for e in examples], "anchor")
    docs = embed_texts(corpus, "document")
    index = {t: i for i, t in enumerate(corpus)}
    scores = anchors @ docs.T
    # Every positive of an anchor counts as its own, not just the row's.
    own_docs: dict[str, set[int]] = {}
    for e in examples:
        own_docs.setdefault(e.anchor, set()).add(index[e.positive])
    mined = []
    for row, e in enumerate(examples):
        own = scores[row, index[e.positive]]
        taken = own_docs[e.anchor]
        picks = [
            int(c) for c in np.argsort(-scores[row], kind="stable")
            if int(c) not in taken and scores[row, c] <= own * (1 - margin)
        ][:count]
        if len(picks) < count:
            raise DataError(
                f"--hard-negatives {count}: line {e.line} has only {len(picks)} candidates outside the margin; "
                "ask for fewer negatives or add more pairs"
            )
        mined.append(dataclasses.replace(e, negatives=tuple(corpus[c] for c in picks)))
    return mined
