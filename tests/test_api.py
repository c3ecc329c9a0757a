"""The Python API on the tiny float32 model: shapes, norms, Matryoshka sizes, prompts, ordering, errors."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlx_embedgemma import ModelFolderError, load
from mlx_embedgemma.embedder import plan_batches
from tiny_model import SMALL_DIMS

TEXTS = [
    "hello",
    "the quick brown fox jumps over the lazy dog",
    "mars",
    "",
    "hello world, mars is the red planet and venus is earth's twin",
    "üñíçødé 中文 🚀",
    "venus",
]
# No test here means to exceed the tiny model's 80-token limit.
pytestmark = pytest.mark.filterwarnings("error::mlx_embedgemma.embedder.TruncationWarning")
# Smaller sizes for a copy of the tiny model: its 64-d output is its only Matryoshka size otherwise.


@pytest.fixture(scope="module")
def model(tiny_f32):
    return load(tiny_f32)


@pytest.fixture(scope="module")
def matryoshka(tiny_matryoshka):
    return load(tiny_matryoshka)


def norms(x: np.ndarray) -> np.ndarray:
    return np.linalg.norm(x, axis=-1)


# --- shapes and values -----------------------------------------------------------------------------


def test_single_string_gives_a_unit_vector(model):
    v = model.encode("hello")
    assert v.ndim == 1 and v.shape == (model.embedding_dim,)
    assert v.dtype == np.float32
    assert np.isclose(norms(v), 1.0, atol=1e-5)


def test_list_gives_unit_rows(model):
    m = model.encode(TEXTS)
    assert m.shape == (len(TEXTS), model.embedding_dim) and m.dtype == np.float32
    np.testing.assert_allclose(norms(m), 1.0, atol=1e-5)
    assert np.all(np.isfinite(m))
    # Different texts give different embeddings.
    assert len({row.tobytes() for row in m}) == len(TEXTS)


def test_single_string_equals_the_row_of_a_one_item_list(model):
    np.testing.assert_array_equal(model.encode("mars"), model.encode(["mars"])[0])


def test_dims_of_the_tiny_model_come_from_its_config(model, tiny_f32):
    config = json.loads((Path(tiny_f32) / "config.json").read_text(encoding="utf-8"))
    assert model.dims == tuple(config["matryoshka_dims"])
    assert model.network.args.embedding_dim in model.dims  # the full size is always valid
    for d in model.dims:
        assert model.encode("mars", dim=d).shape == (d,)


@pytest.mark.parametrize("fixture", ["model", "matryoshka"])
def test_a_dim_that_is_not_a_matryoshka_size_is_refused(request, fixture):
    m = request.getfixturevalue(fixture)
    with pytest.raises(ValueError, match=re.escape(", ".join(map(str, m.dims)))):
        m.encode("mars", dim=100)
    with pytest.raises(ValueError, match="dim must be one of"):
        m.encode(["mars"], dim=True)


def test_smaller_dim_is_the_renormalized_prefix(matryoshka):
    assert matryoshka.dims == tuple(SMALL_DIMS)
    full = matryoshka.encode(TEXTS)
    for d in SMALL_DIMS:
        got = matryoshka.encode(TEXTS, dim=d)
        assert got.shape == (len(TEXTS), d) and got.dtype == np.float32
        prefix = full[:, :d]
        np.testing.assert_allclose(got, prefix / norms(prefix)[:, None], atol=1e-6)
        np.testing.assert_allclose(norms(got), 1.0, atol=1e-5)
    assert not np.allclose(matryoshka.encode("mars", dim=16), full[2, :16])  # it was renormalized


def test_truncate_dim_sets_the_default_size(tiny_f32, matryoshka):
    small = load(matryoshka.path, truncate_dim=32)
    assert small.embedding_dim == 32
    np.testing.assert_allclose(small.encode(TEXTS), matryoshka.encode(TEXTS, dim=32), atol=1e-6)
    with pytest.raises(ValueError, match="dim must be one of"):
        load(tiny_f32, truncate_dim=100)


# --- prompts ---------------------------------------------------------------------------------------


def test_unknown_prompt_name_lists_known_names(model):
    with pytest.raises(ValueError, match="unknown prompt_name 'nope'.*STS, document, query"):
        model.encode("mars", prompt_name="nope")


def test_prompt_and_prompt_name_together_are_refused(model):
    with pytest.raises(ValueError, match="either prompt_name or prompt"):
        model.encode("mars", prompt="query: ", prompt_name="query")


def test_prompt_string_equals_the_named_prompt(model):
    np.testing.assert_allclose(
        model.encode(TEXTS, prompt=model.prompts["query"]), model.encode(TEXTS, prompt_name="query"), atol=1e-6
    )


def test_encode_query_and_document_use_their_prompts(model):
    plain = model.encode(TEXTS)
    query = model.encode_query(TEXTS)
    document = model.encode_document(TEXTS)
    np.testing.assert_allclose(query, model.encode(TEXTS, prompt_name="query"), atol=1e-6)
    np.testing.assert_allclose(document, model.encode(TEXTS, prompt_name="document"), atol=1e-6)
    assert not np.allclose(query, plain, atol=1e-3)
    assert not np.allclose(query, document, atol=1e-3)


# --- similarity ------------------------------------------------------------------------------------


def test_similarity_of_unit_vectors_is_their_dot_product(model):
    q = model.encode_query(TEXTS[:3])
    d = model.encode_document(TEXTS)
    sim = model.similarity(q, d)
    assert sim.shape == (3, len(TEXTS))
    np.testing.assert_allclose(sim, q @ d.T, atol=1e-5)
    one = model.similarity(q[0], d)
    assert one.shape == (1, len(TEXTS))
    np.testing.assert_allclose(one[0], d @ q[0], atol=1e-5)


def test_similarity_normalizes_its_inputs(model):
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(2, 8)), rng.normal(size=(3, 8))
    expected = (a / norms(a)[:, None]) @ (b / norms(b)[:, None]).T
    np.testing.assert_allclose(model.similarity(a, b), expected, atol=1e-5)


def test_similarity_rejects_mismatched_dims(model):
    with pytest.raises(ValueError, match="64-d with 32-d"):
        model.similarity(np.ones((2, 64)), np.ones((2, 32)))


# --- batching keeps input order --------------------------------------------------------------------


def mixed_lengths() -> list[str]:
    """Texts from 2 to ~70 tokens (the tiny model's limit is 80), long and short interleaved."""
    words = "the quick brown fox jumps over the lazy dog mars venus earth".split()
    return [" ".join(words[: (i * 5) % len(words) + 1]) for i in range(11)] + ["", "a", "the quick brown fox " * 3]


def test_texts_really_have_very_different_lengths(model):
    raw = [len(model.tokenizer._sp.encode(t)) + 2 for t in mixed_lengths()]
    assert max(raw) <= model.max_seq_length  # none is truncated
    assert max(raw) > 10 * min(raw) and len(set(raw)) > 6
    assert raw != sorted(raw, reverse=True)  # so batching (longest first) reorders them


@pytest.mark.parametrize("options", [{}, {"batch_size": 2}, {"max_batch_tokens": 24}, {"batch_size": 3, "max_batch_tokens": 1}])
def test_batches_return_rows_in_input_order(model, options):
    texts = mixed_lengths()
    one_by_one = np.stack([model.encode(t) for t in texts])
    np.testing.assert_allclose(model.encode(texts, **options), one_by_one, atol=1e-5)


def test_progress_counts_every_text(model):
    seen = []
    model.encode(mixed_lengths(), batch_size=4, progress=seen.append)
    assert sum(seen) == len(mixed_lengths()) and max(seen) <= 4


def test_non_positive_batch_limits_are_refused(model):
    with pytest.raises(ValueError, match="batch_size"):
        model.encode(["a"], batch_size=0)
    with pytest.raises(ValueError, match="max_batch_tokens"):
        model.encode(["a"], max_batch_tokens=0)


# --- input types -----------------------------------------------------------------------------------


def test_non_string_item_is_named_by_index(model):
    with pytest.raises(TypeError, match=r"texts\[2\] is int"):
        model.encode(["a", "b", 3])
    with pytest.raises(TypeError, match=r"texts\[1\] is NoneType"):
        model.encode(["a", None])
    with pytest.raises(TypeError, match=r"texts\[0\] is bytes.*decode"):
        model.encode([b"a"])


def test_bytes_are_refused(model):
    with pytest.raises(TypeError, match="bytes"):
        model.encode(b"hello")


def test_non_iterable_is_refused(model):
    with pytest.raises(TypeError, match="iterable of str, got int"):
        model.encode(42)


@pytest.mark.parametrize("fixture, dim", [("model", None), ("matryoshka", 32)])
def test_empty_list_gives_an_empty_matrix(request, fixture, dim):
    m = request.getfixturevalue(fixture)
    out = m.encode([], dim=dim)
    assert out.shape == (0, dim or m.embedding_dim) and out.dtype == np.float32


def test_generator_of_strings_works(model):
    np.testing.assert_allclose(model.encode(t for t in TEXTS), model.encode(TEXTS), atol=1e-6)


def test_count_tokens_includes_bos_and_eos(model):
    sp = model.tokenizer._sp
    assert model.count_tokens([""]) == [2]
    assert model.count_tokens(TEXTS) == [len(sp.encode(t)) + 2 for t in TEXTS]
    prefix = model.prompts["query"]
    assert model.count_tokens(TEXTS, prompt_name="query") == [len(sp.encode(prefix + t)) + 2 for t in TEXTS]
    ids = model.tokenizer.encode(["mars"]).ids[0]
    assert ids[0] == model.tokenizer.bos_id and ids[-1] == model.tokenizer.eos_id


# --- loading ---------------------------------------------------------------------------------------


def test_missing_folder_hints_to_convert(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist.*mlx-embedgemma convert"):
        load(tmp_path / "nowhere")


def test_newer_format_version_asks_to_upgrade(tiny_f32, tmp_path):
    folder = Path(shutil.copytree(tiny_f32, tmp_path / "future"))
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    config["format_version"] = 99
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    with pytest.raises(ModelFolderError, match="format_version 99.*upgrade mlx-embedgemma"):
        load(folder)


def test_folder_without_config_is_not_a_model(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelFolderError, match=r"config\.json is missing.*mlx-embedgemma convert"):
        load(tmp_path / "empty")


def test_missing_tensor_names_the_weights_file(tiny_f32, tmp_path):
    folder = Path(shutil.copytree(tiny_f32, tmp_path / "damaged"))
    path = folder / "model.safetensors"
    weights = dict(mx.load(str(path)))
    del weights["model.layers.0.mlp.up_proj.weight"]
    path.unlink()
    mx.save_safetensors(str(path), weights)
    with pytest.raises(ModelFolderError, match="model.safetensors") as info:
        load(folder)
    assert str(path) in str(info.value) and "model.layers.0.mlp.up_proj.weight" in str(info.value)


# --- plan_batches ----------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 300), max_size=60),
    batch_size=st.integers(1, 16),
    max_tokens=st.integers(1, 1000),
)
def test_plan_batches_covers_every_text_within_limits(lengths, batch_size, max_tokens):
    lengths = np.array(lengths, np.int64)
    batches = list(plan_batches(lengths, batch_size, max_tokens))
    flat = np.concatenate(batches) if batches else np.array([], np.int64)
    assert sorted(flat.tolist()) == list(range(len(lengths)))
    for batch in batches:
        assert 1 <= len(batch) <= batch_size
        padded = len(batch) * int(lengths[batch].max())
        assert padded <= max_tokens or len(batch) == 1
