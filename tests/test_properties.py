"""Property-based tests (hypothesis) on the tiny float32 model with Matryoshka sizes 64/32/16.

Batch composition changes padding and so the shapes of the matrix products: a vector alone and the
same text inside a batch differ by up to ~1.5e-7 here, so they are compared at 1e-6, not bit for bit.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlx_embedgemma import TruncationWarning, load
from tiny_model import SMALL_DIMS

# Any Unicode string (surrogates are excluded by the text strategy's default; they have a test below).
TEXTS = st.text(max_size=60)
PROPERTY = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def model(tiny_matryoshka):
    return load(tiny_matryoshka)


def quiet_encode(model, texts, **options):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TruncationWarning)  # long random strings pass the tiny 80-token limit
        return model.encode(texts, **options)


@PROPERTY
@given(text=TEXTS)
def test_any_unicode_text_gives_a_finite_unit_vector(model, text):
    v = quiet_encode(model, text)
    assert v.shape == (64,) and v.dtype == np.float32
    assert np.all(np.isfinite(v))
    assert abs(float(np.linalg.norm(v)) - 1.0) < 1e-5


@PROPERTY
@given(texts=st.lists(TEXTS, min_size=1, max_size=12), data=st.data())
def test_a_vector_does_not_depend_on_batch_composition_or_order(model, texts, data):
    order = data.draw(st.permutations(range(len(texts))))
    batch_size = data.draw(st.integers(1, 8))
    alone = np.stack([quiet_encode(model, t) for t in texts])
    batched = quiet_encode(model, [texts[i] for i in order], batch_size=batch_size)
    np.testing.assert_allclose(batched, alone[list(order)], rtol=0, atol=1e-6)


@PROPERTY
@given(texts=st.lists(TEXTS, min_size=1, max_size=8), dim=st.sampled_from(SMALL_DIMS[1:]))
def test_matryoshka_truncation_equals_the_dim_option(model, texts, dim):
    full = quiet_encode(model, texts)
    prefix = full[:, :dim]
    np.testing.assert_allclose(quiet_encode(model, texts, dim=dim), prefix / np.linalg.norm(prefix, axis=1, keepdims=True), rtol=0, atol=1e-6)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    before=st.lists(TEXTS, max_size=5),
    text=st.text(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1, max_size=3).flatmap(
        lambda s: st.tuples(TEXTS, TEXTS).map(lambda ab: ab[0] + s + ab[1])
    ),
)
def test_any_text_with_a_surrogate_is_refused_by_index(model, before, text):
    with pytest.raises(ValueError, match=rf"texts\[{len(before)}\] holds a lone surrogate"):
        model.encode([*before, text])
