"""`mlx-embedgemma check`: the probes the converter stores, and the per-device check against them (tiny model)."""

from __future__ import annotations

import json
import shutil

import mlx.core as mx
import numpy as np
import pytest
from click.testing import CliRunner

from mlx_embedgemma import check
from mlx_embedgemma.cli import main
from mlx_embedgemma.convert.converter import PROBES


def test_the_converter_stores_the_probes_with_the_source_vectors_of_sentence_transformers(tiny_f32, tiny_source):
    from tiny_model import reference_embeddings

    from mlx_embedgemma import load

    probes = check.read_probes(tiny_f32)
    assert [text for _, text in probes.texts] == [text for _, text in PROBES]
    # The reference is the source checkpoint's: sentence-transformers on the same token ids agrees.
    model = load(tiny_f32)
    ids = [model.tokenizer.encode([model.prompt_prefix(name, None) + text]).ids[0] for name, text in probes.texts]
    np.testing.assert_allclose(probes.reference, reference_embeddings(tiny_source, ids), atol=1e-5)
    stored = json.loads((tiny_f32 / check.PROBES_FILE).read_text(encoding="utf-8"))
    assert min(stored["converted_cosines"]) > 0.99999  # float32 to float32
    assert probes.bar == pytest.approx(min(stored["converted_cosines"]) - check.DEVICE_MARGIN, abs=1e-6)


def test_check_passes_a_float32_folder_on_the_cpu_with_cosine_one(tiny_f32):
    result = CliRunner().invoke(main, ["check", str(tiny_f32)])
    assert result.exit_code == 0, result.output
    (row,) = [line for line in result.output.splitlines() if line.startswith("cpu ")]
    mean, low = map(float, row.split()[-5:-3])
    assert mean > 0.99999 and low > 0.99999 and row.endswith("ok")
    assert "all devices agree with the reference" in result.output


def test_check_fails_a_folder_whose_weights_were_changed(tiny_f32, tmp_path):
    broken = shutil.copytree(tiny_f32, tmp_path / "broken")
    weights = mx.load(str(broken / "model.safetensors"))
    name = next(k for k in weights if k.endswith("mlp.down_proj.weight"))
    noise = mx.random.normal(weights[name].shape, key=mx.random.key(0)) * mx.abs(weights[name]).mean()
    weights[name] = weights[name] + noise
    mx.save_safetensors(str(broken / "model.safetensors"), weights, metadata={"format": "mlx"})
    result = CliRunner().invoke(main, ["check", str(broken)])
    assert result.exit_code == 1, result.output
    assert "BELOW THE BAR" in result.output and "FAILED on cpu" in result.output


def test_a_folder_without_probes_says_so_and_how_to_get_them(tiny_f32, tmp_path):
    old = shutil.copytree(tiny_f32, tmp_path / "old")
    (old / check.PROBES_FILE).unlink()
    result = CliRunner().invoke(main, ["check", str(old)])
    assert result.exit_code == 1
    assert "has no probes.json" in result.output and "mlx-embedgemma convert" in result.output
    from mlx_embedgemma import load

    load(old).encode("still loads")  # probes are optional: older folders load as before


def test_devices_are_the_cpu_and_each_gpu_mlx_has_here():
    devices = check.available_devices()
    assert devices[0] == "cpu"
    assert ("metal" in devices) == mx.metal.is_available()
    assert ("cuda" in devices) == (hasattr(mx, "cuda") and mx.cuda.is_available())
