"""Against the real google/embeddinggemma-300m and the sentence-transformers reference embeddings.

Skipped, with the reason, when the checkpoint is absent (see conftest.NO_REAL_MODEL).
"""

import numpy as np
import pytest

from conftest import encode_rows
from mlx_embedgemma import load

REDPLANET = ["redplanet-query", "redplanet-doc0", "redplanet-doc1", "redplanet-doc2", "redplanet-doc3"]
# Model card values (sentence-transformers, float32).
REDPLANET_SIMILARITIES = [0.3008, 0.6361, 0.4927, 0.4889]


@pytest.fixture(scope="module")
def f32_embeddings(real_f32, reference):
    rows, _ = reference
    with pytest.warns(UserWarning, match="1 of"):  # the 2048+-token row is cut, and we say so
        return encode_rows(load(real_f32), rows)


def test_token_ids_equal_the_reference_tokenizer(real_f32, reference):
    model = load(real_f32)
    rows, _ = reference
    for row in rows:
        prefix = model.prompt_prefix(row["prompt_name"], None)
        assert model.tokenizer.encode([prefix + row["text"]]).ids[0] == row["token_ids"], row["id"]


def test_float32_matches_reference_on_every_row(f32_embeddings, reference):
    rows, expected = reference
    cosines = np.sum(f32_embeddings * expected, axis=1)
    worst = int(np.argmin(cosines))
    assert cosines.min() >= 0.9999, f"{rows[worst]['id']} ({rows[worst]['n_tokens']} tokens): {cosines[worst]:.6f}"
    long_rows = [i for i, r in enumerate(rows) if r["n_tokens"] >= 785]
    assert len(long_rows) == 2  # the 785- and 2048-token rows are covered


def test_default_4bit_recipe_holds_its_cosine_bars_on_the_reference(real_q4, reference):
    # The default recipe (convert's default, GPTQ included) against sentence-transformers' float32
    # embeddings: mean >= 0.99 and min >= 0.98 (measured 0.9938 / 0.9873 with this machine's default plan;
    # README "Recipes"). A broken kernel, a wrong weight or a lost GPTQ step falls far below.
    rows, expected = reference
    with pytest.warns(UserWarning, match="1 of"):
        cosines = np.sum(encode_rows(load(real_q4), rows) * expected, axis=1)
    worst = int(np.argmin(cosines))
    assert cosines.mean() >= 0.99 and cosines.min() >= 0.98, (
        f"mean {cosines.mean():.4f}; worst {rows[worst]['id']} ({rows[worst]['n_tokens']} tokens): {cosines[worst]:.4f}")


def _redplanet(embeddings, rows):
    index = {r["id"]: i for i, r in enumerate(rows)}
    q, *docs = (embeddings[index[name]] for name in REDPLANET)
    return np.array(docs) @ q


def test_float32_redplanet_similarities(f32_embeddings, reference):
    rows, _ = reference
    np.testing.assert_allclose(_redplanet(f32_embeddings, rows), REDPLANET_SIMILARITIES, atol=0.002)


@pytest.mark.parametrize("folder,tolerance", [("real_q4", 0.03), ("real_q8", 0.002)])
def test_quantized_redplanet_similarities(folder, tolerance, request, reference):
    # Each similarity near the model card's float32 value: 4-bit recipes have been seen up to 0.022 off
    # (0.002 for 8-bit), a wrong kernel or weight is off by far more. Mars comes first at any width; the
    # whole ranking is asked of 8 bits only: Jupiter and Saturn are 0.0038 apart, a tie at 4 bits (the
    # default before act-order and today's both swap them, the act-order one between them did not).
    rows, _ = reference
    subset = [r for r in rows if r["id"] in REDPLANET]
    sims = _redplanet(encode_rows(load(request.getfixturevalue(folder)), subset), subset)
    np.testing.assert_allclose(sims, REDPLANET_SIMILARITIES, rtol=0, atol=tolerance)
    assert int(np.argmax(sims)) == 1, sims
    if folder == "real_q8":
        assert list(np.argsort(-sims)) == list(np.argsort(-np.array(REDPLANET_SIMILARITIES))), sims


def test_alone_equals_inside_a_padded_batch(real_f32, reference):
    model = load(real_f32)
    rows, _ = reference
    texts = [r["text"] for r in rows if r["n_tokens"] <= 409]  # short ones padded up to 409 tokens
    batch = model.encode_document(texts, batch_size=len(texts), max_batch_tokens=1 << 20)
    alone = np.stack([model.encode_document(t) for t in texts])
    assert np.sum(batch * alone, axis=1).min() >= 0.9999


def test_matryoshka_dims_are_truncated_and_renormalized(f32_embeddings, real_f32, reference):
    model = load(real_f32)
    rows, _ = reference
    row = rows[0]
    for dim in (512, 256, 128):
        ours = model.encode(row["text"], prompt_name=row["prompt_name"], dim=dim)
        expected = f32_embeddings[0][:dim] / np.linalg.norm(f32_embeddings[0][:dim])
        np.testing.assert_allclose(ours, expected, atol=1e-5)
