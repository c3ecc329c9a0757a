"""The input contract of ``encode`` (mlx_embedgemma/inputs.py), case by case, on the tiny float32 model.

Each case gives a finite unit vector per text, or a TypeError/ValueError naming the offending index and
the fix, raised before any text is embedded.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from mlx_embedgemma import TruncationWarning, load
from mlx_embedgemma.embedder import ENCODE_CHUNK


@pytest.fixture(scope="module")
def model(tiny_f32):
    return load(tiny_f32)


@pytest.fixture
def spy(model, monkeypatch) -> list[int]:
    """Sizes of the lists the tokenizer is asked to encode: empty means no work was started."""
    calls: list[int] = []
    encode = model.tokenizer.encode

    def counting(texts):
        calls.append(len(texts))
        return encode(texts)

    monkeypatch.setattr(model.tokenizer, "encode", counting)
    return calls


def assert_unit_rows(x: np.ndarray) -> None:
    assert x.dtype == np.float32 and np.all(np.isfinite(x))
    np.testing.assert_allclose(np.linalg.norm(x, axis=-1), 1.0, atol=1e-5)


# --- texts that are embedded -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    ["", " ", "   \t\n  ", "\n", "a\x00b", "\x00", "\x00" * 10, "\u200b", "\ufeffbom", "🚀" * 5, "e\u0301", "\U0010ffff"],
    ids=repr,
)
def test_odd_but_valid_text_gives_a_unit_vector(model, text):
    v = model.encode(text)
    assert v.shape == (model.embedding_dim,)
    assert_unit_rows(v)
    np.testing.assert_allclose(model.encode(["mars", text, "venus"])[1], v, atol=1e-6)


def test_empty_text_is_bos_and_eos_only_like_the_reference(model):
    assert model.tokenizer.encode([""]).ids == [[model.tokenizer.bos_id, model.tokenizer.eos_id]]
    assert_unit_rows(model.encode(""))


@pytest.mark.parametrize(
    "make",
    [
        lambda t: list(t),
        lambda t: tuple(t),
        lambda t: (x for x in t),
        lambda t: map(str, t),
        lambda t: np.array(t),  # dtype '<U..'
        lambda t: np.array(t, dtype=object),
        lambda t: dict.fromkeys(t),
    ],
    ids=["list", "tuple", "generator", "map", "numpy-unicode", "numpy-object", "dict-keys"],
)
def test_any_iterable_of_strings_is_accepted(model, make):
    texts = ["mars", "", "venus is hot", "中文"]
    expected = model.encode(texts)
    got = model.encode(make(texts))
    assert got.shape == (len(texts), model.embedding_dim)
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_numpy_string_scalar_is_one_text(model):
    np.testing.assert_array_equal(model.encode(np.str_("mars")), model.encode("mars"))


@pytest.mark.parametrize("empty", [[], (), np.array([], dtype=str), iter([])], ids=["list", "tuple", "numpy", "iterator"])
def test_no_texts_give_an_empty_float32_matrix(model, empty, spy):
    out = model.encode(empty)
    assert out.shape == (0, model.embedding_dim) and out.dtype == np.float32
    assert spy == []


def test_a_megabyte_text_is_truncated_with_a_warning(model):
    # How tokenizing time grows with the text's size is measured by benchmarks/tokenize_scaling.py.
    mb = "mars is the red planet. " * (1_000_000 // 24)
    with pytest.warns(TruncationWarning, match=r"1 of 2 texts.*truncated.*indices: \[1\]"):
        out = model.encode(["short", mb])
    assert_unit_rows(out)
    assert model.count_tokens([mb]) == [model.max_seq_length]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TruncationWarning)
        np.testing.assert_allclose(model.encode(mb), out[1], atol=1e-6)


def test_a_hundred_thousand_texts_in_order_with_bounded_token_ids(model, spy):
    texts = [str(i) for i in range(100_000)]
    out = model.encode(texts, batch_size=256, max_batch_tokens=2048)
    assert out.shape == (100_000, model.embedding_dim)
    assert_unit_rows(out)
    assert max(spy) <= ENCODE_CHUNK and sum(spy) == len(texts)  # token ids held for one chunk at a time
    sample = [0, 9, 4095, 4096, 54321, 99_999]
    np.testing.assert_allclose(out[sample], model.encode([texts[i] for i in sample]), atol=1e-6)


# --- texts that are refused ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad, error, message",
    [
        (None, TypeError, r"texts\[2\] is NoneType, not str: pass only strings \(use '' for an empty text\)"),
        (7, TypeError, r"texts\[2\] is int, not str"),
        (float("nan"), TypeError, r"texts\[2\] is float, not str"),
        (b"mars", TypeError, r"texts\[2\] is bytes, not str: decode it first, e\.g\. b\.decode\('utf-8'\)"),
        (bytearray(b"mars"), TypeError, r"texts\[2\] is bytearray, not str: decode it first"),
        (np.bytes_(b"mars"), TypeError, r"texts\[2\] is bytes_, not str: decode it first"),
        (["nested"], TypeError, r"texts\[2\] is list, not str"),
        ("bad \udc80 byte", ValueError, r"texts\[2\] holds a lone surrogate U\+DC80 at position 4.*encode\('utf-8', 'replace'\)"),
        ("\ud83d", ValueError, r"texts\[2\] holds a lone surrogate U\+D83D at position 0"),
    ],
    ids=["None", "int", "nan", "bytes", "bytearray", "numpy-bytes", "list", "surrogate-escape", "half-pair"],
)
def test_one_bad_item_is_named_before_any_work(model, spy, bad, error, message):
    with pytest.raises(error, match=message):
        model.encode(["mars", "venus", bad, "earth"])
    assert spy == []


def test_bad_item_in_a_long_list_is_found_before_any_work(model, spy):
    texts = ["ok"] * (3 * ENCODE_CHUNK)
    texts[-1] = None
    with pytest.raises(TypeError, match=rf"texts\[{len(texts) - 1}\] is NoneType"):
        model.encode(texts)
    assert spy == []


def test_single_text_with_a_surrogate_is_refused(model, spy):
    with pytest.raises(ValueError, match=r"text holds a lone surrogate U\+D800"):
        model.encode("\ud800")
    assert spy == []


@pytest.mark.parametrize(
    "texts, message",
    [
        (None, "iterable of str, got NoneType"),
        (42, "iterable of str, got int"),
        (b"mars", "got bytes: decode it first"),
        (np.array([["a", "b"], ["c", "d"]]), r"2-d array of shape \(2, 2\); pass a 1-D array"),
        (np.array("mars", dtype=object), r"0-d array"),
        (np.array([b"a", b"b"]), r"texts\[0\] is bytes_, not str: decode it first"),
    ],
    ids=["None", "int", "bytes", "2-d-array", "0-d-object-array", "numpy-bytes-array"],
)
def test_whole_input_of_the_wrong_kind_is_refused(model, spy, texts, message):
    with pytest.raises(TypeError, match=message):
        model.encode(texts)
    assert spy == []


def test_count_tokens_follows_the_same_contract(model):
    with pytest.raises(TypeError, match=r"texts\[1\] is NoneType"):
        model.count_tokens(["a", None])
    assert model.count_tokens(["", "\x00"]) == [2, len(model.tokenizer.encode(["\x00"]).ids[0])]


# --- the command line ------------------------------------------------------------------------------


def test_cli_names_the_input_line_of_a_bad_text(tiny_f32, tmp_path):
    from click.testing import CliRunner

    from mlx_embedgemma.cli import main

    path = tmp_path / "texts.jsonl"
    path.write_text('{"text": "ok"}\n{"text": "bad \\udc80"}\n', encoding="utf-8")
    result = CliRunner().invoke(main, ["embed", str(tiny_f32), "--input", str(path)])
    assert result.exit_code == 1
    assert f"{path}, line 2 holds a lone surrogate" in result.output
    raw = tmp_path / "latin1.txt"
    raw.write_bytes(b"ok\ncaf\xe9\n")
    result = CliRunner().invoke(main, ["embed", str(tiny_f32), "--input", str(raw)])
    assert result.exit_code == 1
    assert f"{raw} is not valid UTF-8" in result.output and "convert the file to UTF-8" in result.output
