"""Quantization recipes: what they write into config.json, and that GPTQ rounding beats rounding to nearest."""

import json
import subprocess
import sys

import mlx.core as mx
import numpy as np
import pytest

from mlx_embedgemma import load
from mlx_embedgemma.convert import convert, gptq, recipes
from mlx_embedgemma.convert import calibration
from mlx_embedgemma.convert.calibration import calibration_texts


@pytest.fixture(scope="module")
def tiny_default(tmp_path_factory, tiny_source):
    out = tmp_path_factory.mktemp("recipes") / "tiny-default"
    convert(tiny_source, out)
    return out


def test_default_recipe_is_recorded_with_its_overrides(tiny_default):
    config = json.loads((tiny_default / "config.json").read_text())
    assert config["recipe"] == recipes.DEFAULT_RECIPE
    q = config["quantization"]
    assert q["bits"] == 4 and q["group_size"] == 64
    assert q["model.layers.0.self_attn.v_proj"]["bits"] == 8
    assert q["dense.0"]["bits"] == 8 and q["dense.1"]["bits"] == 8


def test_default_recipe_model_stays_close_to_float32(tiny_default, tiny_f32):
    texts = ["hello world", "mars is the red planet", "the quick brown fox jumps over the lazy dog"]
    cosines = np.sum(load(tiny_default).encode(texts) * load(tiny_f32).encode(texts), axis=1)
    assert cosines.min() > 0.95


def test_recipe_and_bits_together_are_refused(tiny_source, tmp_path):
    with pytest.raises(ValueError, match="not both"):
        convert(tiny_source, tmp_path / "out", recipe="q8", bits=4)
    with pytest.raises(ValueError, match="known recipes: q4-mixed"):
        convert(tiny_source, tmp_path / "out", recipe="q3-magic")
    assert not (tmp_path / "out").exists()


def test_pack_matches_mlx_layout():
    w = mx.random.normal((8, 128), key=mx.random.key(1))
    for bits in gptq.PACKABLE_BITS:
        packed, scales, biases = mx.quantize(w, 64, bits)
        codes = np.array(mx.round((mx.dequantize(packed, scales, biases, 64, bits) - mx.repeat(biases, 64, axis=1)) / mx.repeat(scales, 64, axis=1)))
        np.testing.assert_array_equal(gptq.pack(codes.astype(np.uint32), bits), np.array(packed))


def test_gptq_lowers_output_error_against_round_to_nearest():
    rng = np.random.default_rng(0)
    # Correlated inputs with uneven scales, like real activations: where GPTQ's error feedback pays off.
    x = rng.normal(size=(2048, 128)) @ rng.normal(size=(128, 128)) * rng.uniform(0.1, 3, size=128)
    w = rng.normal(size=(64, 128)) * 0.05
    h = x.T @ x
    codes, scales, biases = gptq.quantize(w, h, 4, 64)
    ours = np.array(mx.dequantize(mx.array(codes), mx.array(scales), mx.array(biases), 64, 4), np.float64)
    q = mx.quantize(mx.array(w.astype(np.float32)), 64, 4)
    nearest = np.array(mx.dequantize(*q, 64, 4), np.float64)
    error = lambda d: np.linalg.norm(x @ (d - w).T) / np.linalg.norm(x @ w.T)
    assert error(ours) < 0.8 * error(nearest)


def test_calibration_texts_ship_with_the_converter_and_are_multilingual():
    texts = calibration_texts()
    assert len(texts) == 128 and texts[:64] == calibration_texts(64)
    assert sum(not text.isascii() for _, text in texts) >= 16
    assert {prompt for prompt, _ in texts} >= {"document", "query", "STS"}


def test_shipped_calibration_file_is_what_its_builder_makes_here(tmp_path):
    if not calibration._LOCALES.is_dir() or sys.version_info[:2] != (3, 11):
        pytest.skip("the file was built on Python 3.11 with glibc's locale sources; elsewhere the builder makes another set")
    # In a fresh interpreter, as `python -m mlx_embedgemma.convert.calibration` runs it: which docstrings
    # it finds depends on the modules already imported, and this test process has imported many.
    # Run outside the checkout: there `mlx_embedgemma/` would shadow the installed package, which alone
    # has `convert` inside it.
    code = "import json; from mlx_embedgemma.convert.calibration import build_calibration_texts as b; print(json.dumps(b()))"
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    built = json.loads(run.stdout)
    assert [tuple(pair) for pair in built] == calibration_texts()


def test_cli_help_lists_every_recipe():
    from click.testing import CliRunner

    from mlx_embedgemma.cli import main

    help_text = CliRunner().invoke(main, ["convert", "--help"]).output
    for name in recipes.RECIPES:
        assert name in help_text
    assert f"{recipes.DEFAULT_RECIPE} (default)" in help_text
