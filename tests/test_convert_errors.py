"""Every way a conversion can fail: a clear error naming the file or tensor, and nothing half-written.

Each broken source is a copy of the session's tiny checkpoint, damaged in tmp_path; the shared fixtures
are never touched.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from click.testing import CliRunner

import mlx_embedgemma
from mlx_embedgemma.cli import main
from mlx_embedgemma.convert import OutputExistsError, SourceError, convert


# --- helpers ---------------------------------------------------------------------------------------


@pytest.fixture
def src(tiny_source, tmp_path) -> Path:
    """A private copy of the tiny checkpoint, free to damage."""
    return Path(shutil.copytree(tiny_source, tmp_path / "source"))


@pytest.fixture
def out(tmp_path) -> Path:
    return tmp_path / "converted" / "model"


def leftovers(out: Path) -> list[Path]:
    """Hidden work folders of a conversion into ``out`` (partial new ones, or a replaced old one)."""
    if not out.parent.exists():
        return []
    return sorted(out.parent.glob(f".{out.name}.partial-*")) + sorted(out.parent.glob(f".{out.name}.old-*"))


def assert_nothing_written(out: Path) -> None:
    assert not out.exists(), f"{out} was created by a failed conversion"
    assert leftovers(out) == [], f"work folders left behind: {leftovers(out)}"


def tree_digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    data = change(data) or data
    path.write_text(json.dumps(data, indent=2), encoding="utf-8")


def rewrite_weights(path: Path, change) -> None:
    weights = dict(mx.load(str(path)))
    change(weights)
    path.unlink()
    mx.save_safetensors(str(path), weights)


def convert_fails(source: Path, out: Path, error=SourceError, **options) -> str:
    with pytest.raises(error) as info:
        convert(source, out, quantize=False, **options)
    assert_nothing_written(out)
    return str(info.value)


# --- missing or malformed files --------------------------------------------------------------------


@pytest.mark.parametrize(
    "missing",
    ["tokenizer.model", "modules.json", "2_Dense/model.safetensors", "config_sentence_transformers.json"],
)
def test_missing_file_is_named(src, out, missing):
    (src / missing).unlink()
    message = convert_fails(src, out)
    assert str(src / missing) in message
    assert "missing" in message


def test_wrong_model_type_is_named(src, out):
    edit_json(src / "config.json", lambda c: c.update(model_type="llama"))
    message = convert_fails(src, out)
    assert "model_type" in message and "'llama'" in message
    assert str(src / "config.json") in message


def test_modules_without_dense_are_refused(src, out):
    edit_json(src / "modules.json", lambda mods: [m for m in mods if not m["type"].endswith("Dense")])
    message = convert_fails(src, out)
    assert "Dense" in message
    assert str(src / "modules.json") in message


@pytest.mark.parametrize(
    "file, tensor",
    [("model.safetensors", "layers.0.self_attn.extra_proj.weight"), ("2_Dense/model.safetensors", "linear.scale")],
)
def test_unexpected_tensor_is_named(src, out, file, tensor):
    rewrite_weights(src / file, lambda w: w.update({tensor: mx.zeros((4, 4))}))
    message = convert_fails(src, out)
    assert f"unexpected tensor {tensor!r}" in message
    assert str(src / file) in message


def test_missing_tensor_is_named(src, out):
    rewrite_weights(src / "model.safetensors", lambda w: w.pop("layers.0.mlp.up_proj.weight"))
    message = convert_fails(src, out)
    assert "missing" in message and "layers.0.mlp.up_proj.weight" in message


def test_shape_mismatch_names_tensor_and_shapes(src, out):
    name = "layers.1.mlp.down_proj.weight"
    shapes = {}

    def transpose(w):
        shapes["expected"] = tuple(w[name].shape)
        w[name] = w[name].T

    rewrite_weights(src / "model.safetensors", transpose)
    expected = shapes["expected"]
    assert expected[0] != expected[1]
    message = convert_fails(src, out)
    assert name in message
    assert f"shape {expected[::-1]}" in message and f"expected {expected}" in message


def test_truncated_safetensors_is_refused(src, out):
    path = src / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    message = convert_fails(src, out)
    assert str(path) in message and "truncated" in message


def test_corrupt_safetensors_header_is_refused(src, out):
    path = src / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[:8] = b"\xde\xad\xbe\xef\xde\xad\xbe\xef"
    path.write_bytes(bytes(data))
    message = convert_fails(src, out)
    assert str(path) in message and "not a valid safetensors file" in message


def test_corrupt_json_is_named(src, out):
    (src / "config_sentence_transformers.json").write_text("{not json", encoding="utf-8")
    message = convert_fails(src, out)
    assert str(src / "config_sentence_transformers.json") in message and "not valid JSON" in message


# --- options ---------------------------------------------------------------------------------------


def test_unsupported_bits_raise_value_error(tiny_source, out):
    with pytest.raises(ValueError, match="bits must be one of"):
        convert(tiny_source, out, bits=7, group_size=32)
    assert_nothing_written(out)


def test_unsupported_group_size_raises_value_error(tiny_source, out):
    with pytest.raises(ValueError, match="group_size must be one of"):
        convert(tiny_source, out, bits=4, group_size=48)
    assert_nothing_written(out)


def test_unsupported_dtype_raises_value_error(tiny_source, out):
    with pytest.raises(ValueError, match="float16"):
        convert(tiny_source, out, quantize=False, dtype="float16")
    assert_nothing_written(out)


# --- existing OUTPUT -------------------------------------------------------------------------------


@pytest.fixture
def existing(out) -> Path:
    out.mkdir(parents=True)
    (out / "marker.txt").write_text("keep me", encoding="utf-8")
    return out


def assert_untouched(existing: Path) -> None:
    assert sorted(p.name for p in existing.iterdir()) == ["marker.txt"]
    assert (existing / "marker.txt").read_text(encoding="utf-8") == "keep me"


def test_existing_output_is_refused_without_force(tiny_source, existing):
    with pytest.raises(OutputExistsError, match="already exists.*--force"):
        convert(tiny_source, existing, quantize=False)
    assert_untouched(existing)
    assert leftovers(existing) == []


def test_force_replaces_existing_output_with_a_complete_model(tiny_source, existing):
    report = convert(tiny_source, existing, quantize=False, force=True)
    assert report.output == existing
    assert not (existing / "marker.txt").exists()
    assert {"config.json", "model.safetensors", "tokenizer.model", "README.md"} <= {p.name for p in existing.iterdir()}
    assert leftovers(existing) == []
    vector = mlx_embedgemma.load(existing).encode("hello")
    assert vector.shape == (64,) and np.isclose(np.linalg.norm(vector), 1.0, atol=1e-5)


@pytest.mark.parametrize("force", [False, True])
def test_failure_while_writing_leaves_output_as_it_was(tiny_source, out, monkeypatch, force):
    import mlx_embedgemma.convert.converter as converter

    def broken_card(*args, **kwargs):
        raise RuntimeError("disk full (simulated)")

    monkeypatch.setattr(converter, "model_card", broken_card)
    if force:
        out.mkdir(parents=True)
        (out / "marker.txt").write_text("keep me", encoding="utf-8")
    with pytest.raises(RuntimeError, match="simulated"):
        convert(tiny_source, out, quantize=False, force=force)
    if force:
        assert_untouched(out)
        assert leftovers(out) == []
    else:
        assert_nothing_written(out)


def test_source_is_never_modified(tiny_source, tmp_path):
    before = tree_digest(tiny_source)
    convert(tiny_source, tmp_path / "q4", bits=4, group_size=32)
    convert(tiny_source, tmp_path / "bf16", quantize=False, dtype="bfloat16")
    assert tree_digest(tiny_source) == before


# --- the command line ------------------------------------------------------------------------------


def test_cli_refuses_bits_it_does_not_offer(tiny_source, out):
    result = CliRunner().invoke(main, ["convert", str(tiny_source), str(out), "--bits", "3"])
    assert result.exit_code == 2
    assert "--bits" in result.output and "'3'" in result.output
    assert_nothing_written(out)


def test_cli_names_a_missing_source(tmp_path, out):
    missing = tmp_path / "no-such-checkpoint"
    result = CliRunner().invoke(main, ["convert", str(missing), str(out)])
    assert result.exit_code != 0
    assert not isinstance(result.exception, SourceError)  # reported as a message, not a traceback
    assert str(missing) in result.output and "no such folder" in result.output
    assert_nothing_written(out)


def test_cli_reports_an_existing_output(tiny_source, existing):
    result = CliRunner().invoke(main, ["convert", str(tiny_source), str(existing), "--no-quantize"])
    assert result.exit_code == 1
    assert "already exists" in result.output
    assert_untouched(existing)


def test_hub_id_offline_fails_with_a_clear_message(monkeypatch, out):
    pytest.importorskip("huggingface_hub")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # never reach for the network in tests
    monkeypatch.setenv("HF_HOME", str(out.parent / "hf-home"))  # and never find a cached copy
    with pytest.raises(SourceError, match="could not download no-such-org/no-such-model from the Hugging Face hub"):
        convert("no-such-org/no-such-model", out)
    assert_nothing_written(out)


def test_hub_id_without_huggingface_hub_says_how_to_install_it(monkeypatch, out):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # makes the import fail
    with pytest.raises(SourceError, match=r"mlx-embedgemma\[hub\]"):
        convert("google/embeddinggemma-300m", out)
    assert_nothing_written(out)
