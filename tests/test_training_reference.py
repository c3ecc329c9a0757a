"""Our training loss and gradients against sentence-transformers' on the same batch of the tiny random model.

Same token ids go to both (ours tokenize with the prompts; the reference gets the ids directly). Float32
tolerance: losses to 1e-5 relative; each compared gradient to 1e-4 of its largest entry (two float32
implementations of a 4-layer network, summing in different orders, differ around 1e-6 relative).
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten

from mlx_embedgemma.convert import mapping
from mlx_embedgemma.training.base import load_base
from mlx_embedgemma.training.data import Example
from mlx_embedgemma.training.trainer import Settings, Trainer

torch = pytest.importorskip("torch")
from tiny_model import reference_features  # noqa: E402  (after the skip: it needs torch)
losses = pytest.importorskip("sentence_transformers.sentence_transformer.losses")

EXAMPLES = [
    Example("which planet is red?", "mars is the red planet", ("venus is earth's twin",)),
    Example("the quick brown fox", "jumps over the lazy dog", ("hello world",)),
    Example("emoji 🚀 text", "中文 字符 and üñíçødé", ("123 456 789",)),
    Example("what is venus?", "venus is earth's twin planet", ("the lazy dog sleeps",)),
    Example("hello", "hello world, mars", ("a fox and a dog",)),
]
# Parameters compared, as named in the sentence-transformers model: a norm, attention and MLP matrices
# of two layers, and both Dense layers.
COMPARED = [
    "0.model.layers.0.self_attn.q_proj.weight",
    "0.model.layers.2.self_attn.v_proj.weight",
    "0.model.layers.1.mlp.up_proj.weight",
    "0.model.layers.3.mlp.gate_proj.weight",
    "0.model.layers.2.post_feedforward_layernorm.weight",
    "0.model.norm.weight",
    "2.linear.weight",
    "3.linear.weight",
]


def our_name(reference_name: str) -> str:
    module, rest = reference_name.split(".", 1)
    if module == "0":
        return mapping.transformer_name(rest.removeprefix("model."), num_layers=4)
    return mapping.dense_name(rest, int(module) - 2)


def ours(tiny_source, **settings):
    trainer = Trainer(load_base(tiny_source), Settings(batch_size=len(EXAMPLES), max_length=80, **settings))
    rows = trainer.prepare(EXAMPLES, "test")
    value, grads, _ = trainer.value_and_grad(rows)
    return rows, float(value.item()), {k: np.array(v) for k, v in tree_flatten(grads)}


def reference(tiny_source, rows, make_loss):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(tiny_source), device="cpu")
    model.train()
    features = [reference_features([r[column] for r in rows]) for column in range(len(rows[0]))]
    loss = make_loss(model)(features, None)
    loss.backward()
    named = dict(model.named_parameters())
    return float(loss.item()), {name: named[name].grad.numpy() for name in COMPARED}


def assert_same(ours_result, reference_result):
    (value, grads), (ref_value, ref_grads) = ours_result, reference_result
    assert value == pytest.approx(ref_value, rel=1e-5)
    for name, expected in ref_grads.items():
        got = grads[our_name(name)]
        assert got.shape == expected.shape, name
        scale = np.abs(expected).max()
        assert scale > 0, f"{name}: the reference gradient is zero, the comparison would prove nothing"
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4 * scale, err_msg=name)


def test_mnrl_loss_and_gradients_match_sentence_transformers(tiny_source):
    rows, value, grads = ours(tiny_source, matryoshka_dims=(64,))
    assert_same((value, grads), reference(tiny_source, rows, lambda m: losses.MultipleNegativesRankingLoss(m)))


def test_matryoshka_mnrl_matches_sentence_transformers(tiny_source):
    dims = (64, 32, 16)
    rows, value, grads = ours(tiny_source, matryoshka_dims=dims)
    expected = reference(tiny_source, rows, lambda m: losses.MatryoshkaLoss(m, losses.MultipleNegativesRankingLoss(m), list(dims)))
    assert_same((value, grads), expected)


def test_cached_mnrl_matches_sentence_transformers_and_the_uncached_gradients(tiny_source):
    rows, value, grads = ours(tiny_source, matryoshka_dims=(64,), mini_batch_size=2)
    expected = reference(tiny_source, rows, lambda m: losses.CachedMultipleNegativesRankingLoss(m, mini_batch_size=2))
    assert_same((value, grads), expected)
    _, uncached_value, uncached = ours(tiny_source, matryoshka_dims=(64,))
    assert value == pytest.approx(uncached_value, rel=1e-6)
    for name in grads:
        np.testing.assert_allclose(grads[name], uncached[name], rtol=0, atol=1e-5 * np.abs(uncached[name]).max(), err_msg=name)


def test_matryoshka_over_cached_mnrl_matches_sentence_transformers(tiny_source):
    dims = (64, 32, 16)
    rows, value, grads = ours(tiny_source, matryoshka_dims=dims, mini_batch_size=3)
    expected = reference(
        tiny_source, rows,
        lambda m: losses.MatryoshkaLoss(m, losses.CachedMultipleNegativesRankingLoss(m, mini_batch_size=3), list(dims)),
    )
    assert_same((value, grads), expected)
