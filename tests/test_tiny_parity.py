"""Our conversion of a tiny random EmbeddingGemma against sentence-transformers (float32, CPU)."""

import numpy as np
from mlx.utils import tree_flatten
import pytest

from mlx_embedgemma import load, native
from tiny_model import MAX_SEQ_LENGTH, PROMPTS, reference_embeddings

TEXTS = [
    "hello",
    "the quick brown fox jumps over the lazy dog",  # ~50 tokens: far longer than the ±4-token window
    "mars is the red planet",
    "",
    "üñíçødé 中文 🚀",
    "venus is earth's twin",
]


def our_ids(model, texts, prompt_name=None):
    prefix = model.prompt_prefix(prompt_name, None)
    return model.tokenizer.encode([prefix + t for t in texts]).ids


def test_inputs_are_longer_than_the_window_and_padded(tiny_f32):
    model = load(tiny_f32)
    lengths = [len(i) for i in our_ids(model, TEXTS)]
    assert max(lengths) > 3 * 9 and min(lengths) < 9 and len(set(lengths)) > 3


KERNELS = ["native", "mlx"] if native.available() else ["mlx"]


@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("prompt_name", [None, "query", "document"])
def test_float32_matches_sentence_transformers_in_padded_batches(tiny_source, tiny_f32, prompt_name, kernels):
    model = load(tiny_f32, kernels=kernels)
    ids = our_ids(model, TEXTS, prompt_name)
    expected = reference_embeddings(tiny_source, ids)
    ours = model.encode(TEXTS, prompt_name=prompt_name, batch_size=len(TEXTS))
    np.testing.assert_allclose(ours, expected, atol=1e-4)


@pytest.mark.parametrize("kernels", KERNELS)
def test_float32_matches_sentence_transformers_one_text_at_a_time(tiny_source, tiny_f32, kernels):
    model = load(tiny_f32, kernels=kernels)
    ids = our_ids(model, TEXTS, "query")
    expected = np.concatenate([reference_embeddings(tiny_source, [seq]) for seq in ids])
    ours = np.stack([model.encode_query(t) for t in TEXTS])
    np.testing.assert_allclose(ours, expected, atol=1e-4)


def test_truncation_keeps_bos_and_eos_and_matches_reference(tiny_source, tiny_f32):
    model = load(tiny_f32)
    long = "the quick brown fox jumps over the lazy dog " * 20
    ids = our_ids(model, [long])[0]
    assert len(ids) == MAX_SEQ_LENGTH and ids[0] == 2 and ids[-1] == 1
    with pytest.warns(UserWarning, match="1 of 1 texts were longer than 80 tokens"):
        ours = model.encode(long)
    np.testing.assert_allclose(ours, reference_embeddings(tiny_source, [ids])[0], atol=1e-4)


def test_prompts_come_from_the_checkpoint(tiny_f32):
    assert load(tiny_f32).prompts == PROMPTS


def test_quantized_tiny_model_stays_close(tiny_f32, tiny_q4):
    full, quant = load(tiny_f32).encode(TEXTS), load(tiny_q4).encode(TEXTS)
    cosines = np.sum(full * quant, axis=1)
    assert np.all(np.isfinite(quant)) and cosines.min() > 0.9


@pytest.mark.skipif(not native.available(), reason=f"native kernels not built: {native.unavailable_reason()}")
@pytest.mark.parametrize("folder", ["tiny_q4", "tiny_f32"])
def test_native_plan_equals_mlx_own_operations(folder, request):
    # The same stored weights through MLX's quantized_matmul / matmul, sdpa and gelu_approx, and through
    # the native kernels, read in place from the file. Both compute in float32 and differ only in
    # summation order: after 4 layers of a 64-wide model that stays far below 1e-5, while a wrong
    # nibble order, scale or mask moves these unit vectors by 1e-2 or more.
    path = request.getfixturevalue(folder)
    ours, theirs = load(path, kernels="native-float32"), load(path, kernels="mlx")
    assert ours.plan.kernels == "native" and ours.plan.weights == "mapped" and theirs.plan.kernels == "mlx"
    assert ours.plan.activations == 32
    np.testing.assert_allclose(ours.encode(TEXTS, batch_size=len(TEXTS)), theirs.encode(TEXTS, batch_size=len(TEXTS)), atol=1e-5)


@pytest.mark.skipif(not native.available(), reason=f"native kernels not built: {native.unavailable_reason()}")
def test_the_plan_chooses_integer_activations_only_for_quantized_blocks_on_a_cpu_with_them(tiny_q4, tiny_f32):
    quantized, floats = load(tiny_q4, kernels="native"), load(tiny_f32, kernels="native")
    assert floats.plan.activations == 32
    assert quantized.plan.activations == (8 if native.has_int8() else 32)
    assert "activations" in quantized.plan.describe() and any("activations" in r for r in quantized.plan.reasons)
    if native.has_int8():
        assert load(tiny_q4, kernels="native-int16").plan.activations == 16
    else:
        with pytest.raises(ValueError, match="integer dot products"):
            load(tiny_q4, kernels="native-int8")


@pytest.mark.skipif(not native.available() or not native.has_int8(), reason="no integer dot products on this CPU")
def test_integer_activations_stay_close_to_float_ones(tiny_q4):
    # Rounding each group's activations to int8 moves every projection's input by at most 1/254 of the group's
    # largest value; through the 4 random layers of the tiny model that moves the unit vectors by up to about
    # 1e-2 (here: 8.5e-3), and about 256 times less with the int16 residual (3e-5). A mix-up of weights or
    # activations moves them by 1e-1 or more.
    texts = TEXTS
    exact = load(tiny_q4, kernels="native-float32").encode(texts, batch_size=len(texts))
    for kernels, tolerance in (("native-int16", 1e-4), ("native-int8", 2e-2)):
        got = load(tiny_q4, kernels=kernels).encode(texts, batch_size=len(texts))
        assert np.abs(got - exact).max() <= tolerance, kernels


def test_linear_layers_are_read_in_place_on_the_native_plan(tiny_q4):
    from mlx_embedgemma.native_layers import NativeBlock, NativeLinear

    model = load(tiny_q4)
    if model.plan.kernels != "native":
        pytest.skip(f"this machine's plan is {model.plan.describe()}")
    block = model.network.model.layers[0]
    assert isinstance(block, NativeBlock) and model.plan.blocks == "native"
    up = block._held.linears["mlp.up_proj"]
    assert isinstance(up, NativeLinear) and up._file.map is not None
    assert isinstance(model.network.dense[0], NativeLinear)
    stored = [n for n, _ in tree_flatten(model.network.parameters()) if n.startswith("model.layers.") and "proj" in n]
    assert stored == [], "the plan reads the Linear weights from the file; none should be resident"


@pytest.mark.parametrize("kernels", KERNELS)
def test_blockwise_attention_matches_sentence_transformers(tiny_source, tiny_f32, monkeypatch, kernels):
    # Real inputs switch to query blocks past 512 tokens; tiny blocks make the tiny model take that path.
    from mlx_embedgemma import model as network

    monkeypatch.setattr(network, "QUERY_BLOCK", 4)
    model = load(tiny_f32, kernels=kernels)
    ids = our_ids(model, TEXTS, "document")
    expected = reference_embeddings(tiny_source, ids)
    np.testing.assert_allclose(model.encode_document(TEXTS, batch_size=len(TEXTS)), expected, atol=1e-4)


def test_embedding_table_is_read_from_disk_on_demand(tiny_f32):
    from mlx_embedgemma.mapped import MappedEmbedding

    model = load(tiny_f32)
    assert isinstance(model.network.model.embed_tokens, MappedEmbedding)
    assert not any(name.startswith("model.embed_tokens") for name, _ in tree_flatten(model.network.parameters()))


def test_table_rows_are_read_without_entering_the_resident_set(tmp_path):
    # Rows come by pread, not through the map: on Linux the table's mapping then holds no resident page
    # after a lookup, even of a file just written (whose page-cache folios a fault on the map would map
    # whole). The rows themselves must be exact, for repeated and unsorted ids too.
    import mlx.core as mx

    from mlx_embedgemma.mapped import SafetensorsMap

    table = np.random.default_rng(0).integers(0, 2**32, size=(4096, 96), dtype=np.uint32)
    scales = np.random.default_rng(1).standard_normal((4096, 12)).astype(np.float16)
    path = tmp_path / "model.safetensors"
    mx.save_safetensors(str(path), {"t.weight": mx.array(table), "t.scales": mx.array(scales)})
    file = SafetensorsMap(path)
    ids = np.array([7, 4095, 0, 7, 1234, 3], np.int64)
    np.testing.assert_array_equal(file.rows("t.weight", ids), table[ids])
    np.testing.assert_array_equal(file.rows("t.scales", ids), scales[ids])
    with pytest.raises(IndexError, match="0..4095"):
        file.rows("t.weight", np.array([4096]))
    file.rows("t.weight", np.arange(4096))
    from pathlib import Path

    smaps = Path("/proc/self/smaps")
    if not smaps.exists():
        pytest.skip("resident pages per mapping are read from Linux's /proc/self/smaps")
    rss_kb, inside = None, False
    for line in smaps.read_text().splitlines():
        if line.split()[-1:] == [str(path)] and "-" in line.split()[0]:
            inside = True
        elif inside and line.startswith("Rss:"):
            rss_kb = int(line.split()[1])
            break
    assert rss_kb is not None, "the file is mapped"
    assert rss_kb < 64, f"{rss_kb} kB of a 1.6 MB table resident after reading every row"
