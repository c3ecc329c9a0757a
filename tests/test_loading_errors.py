"""Broken model folders: each gives a ModelFolderError (or FileNotFoundError) naming the file and the fix.

Every folder is a copy of the tiny converted model with one thing broken. Nothing but safetensors and
JSON is ever read, and no code from the folder runs.
"""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest

from mlx_embedgemma import ModelFolderError, load


def copy(folder: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(folder, tmp_path / folder.name))


def edit_config(folder: Path, change) -> None:
    path = folder / "config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    change(config)
    path.write_text(json.dumps(config), encoding="utf-8")


def refused(folder: Path, *fragments: str, error=ModelFolderError) -> str:
    with pytest.raises(error) as info:
        load(folder)
    message = str(info.value)
    for fragment in fragments:
        assert fragment.lower() in message.lower(), f"{fragment!r} not in {message!r}"
    return message


# --- weight file ----------------------------------------------------------------------------------


def test_missing_weights_file(tiny_f32, tmp_path):
    folder = copy(tiny_f32, tmp_path)
    (folder / "model.safetensors").unlink()
    refused(folder, str(folder / "model.safetensors"), "missing", "re-convert")


@pytest.mark.parametrize("keep", [0.5, 0.999, 8], ids=["half", "last-bytes", "header-only"])
@pytest.mark.parametrize("fixture", ["tiny_f32", "tiny_q4"])
def test_truncated_weights_file(request, fixture, tmp_path, keep):
    folder = copy(request.getfixturevalue(fixture), tmp_path)
    path = folder / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep) if keep < 1 else keep])
    refused(folder, str(path), "corrupt or truncated", "re-convert")


def test_missing_tokenizer(tiny_f32, tmp_path):
    folder = copy(tiny_f32, tmp_path)
    (folder / "tokenizer.model").unlink()
    refused(folder, str(folder / "tokenizer.model"), "missing", "re-convert", error=FileNotFoundError)


def test_corrupt_tokenizer(tiny_f32, tmp_path):
    folder = copy(tiny_f32, tmp_path)
    (folder / "tokenizer.model").write_bytes(b"not a sentencepiece model")
    refused(folder, str(folder / "tokenizer.model"), "not a valid SentencePiece model", error=ValueError)


def test_tokenizer_that_does_not_match_the_vocab(tiny_f32, tmp_path):
    folder = copy(tiny_f32, tmp_path)
    edit_config(folder, lambda c: c.update(vocab_size=100))
    refused(folder, str(folder / "tokenizer.model"), "but", "vocab_size of 100", "belongs to another model", "re-convert")


# --- config.json ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change, named",
    [
        ({"hidden_size": None}, "hidden_size"),
        ({"hidden_size": -64}, "hidden_size must be an integer in 1..65536, got -64"),
        ({"hidden_size": 10**12}, "hidden_size must be an integer in 1..65536"),
        ({"hidden_size": "64"}, "hidden_size must be an integer"),
        ({"num_hidden_layers": 10**6}, "num_hidden_layers must be an integer in 1..1024"),
        ({"num_hidden_layers": 0}, "num_hidden_layers must be an integer in 1..1024, got 0"),
        ({"vocab_size": 10**9}, "vocab_size must be an integer in 1..4194304"),
        ({"intermediate_size": 1.5}, "intermediate_size must be an integer"),
        ({"num_key_value_heads": 3}, "multiple of num_key_value_heads"),
        ({"rms_norm_eps": float("nan")}, "rms_norm_eps must be a positive number"),
        ({"layer_types": ["full_attention"]}, "layer_types must list 4 entries"),
        ({"max_seq_length": 1}, "max_seq_length must be an integer of at least 3"),
        ({"max_seq_length": "80"}, "max_seq_length must be an integer"),
        ({"bos_token_id": 10**9}, "bos_token_id must be a token id in 0..511"),
        ({"eos_token_id": -1}, "eos_token_id must be a token id"),
        ({"matryoshka_dims": [1000]}, "matryoshka_dims must list sizes in 1..64"),
        ({"matryoshka_dims": []}, "matryoshka_dims"),
        ({"prompts": ["query"]}, "prompts must map names to strings"),
        ({"embedding_head": {}}, "embedding_head.dense is empty"),
    ],
    ids=lambda v: next(iter(v)) + "=" + repr(v[next(iter(v))])[:20] if isinstance(v, dict) else None,
)
def test_absurd_or_missing_config_value(tiny_f32, tmp_path, change, named):
    folder = copy(tiny_f32, tmp_path)

    def apply(config):
        for key, value in change.items():
            if value is None:
                del config[key]
            else:
                config[key] = value

    edit_config(folder, apply)
    message = refused(folder, str(folder / "config.json"), "re-convert")
    assert named in message


def test_huge_but_allowed_sizes_fail_before_allocating(tiny_f32, tmp_path):
    """A 4M x 65536 embedding table would be a terabyte: the mismatch is found from shapes alone."""
    folder = copy(tiny_f32, tmp_path)

    def huge(config):
        config.update(vocab_size=1 << 22, hidden_size=1 << 16, intermediate_size=1 << 18)
        config["embedding_head"]["dense"][0]["in_features"] = 1 << 16

    edit_config(folder, huge)
    from mlx_embedgemma.benchmarks.memory import peak_rss_mb  # ru_maxrss is KiB on Linux, bytes on macOS

    before = peak_rss_mb()
    refused(folder, str(folder / "model.safetensors"), "does not match config.json", "model.embed_tokens.weight", "shape")
    grown_mb = peak_rss_mb() - before
    assert grown_mb < 100, f"peak RSS grew {grown_mb:.0f} MB"


def test_not_valid_json(tiny_f32, tmp_path):
    folder = copy(tiny_f32, tmp_path)
    (folder / "config.json").write_text("{", encoding="utf-8")
    refused(folder, str(folder / "config.json"), "not valid JSON", "re-convert")


def test_folder_from_another_tool(tiny_f32, tmp_path):
    folder = copy(tiny_f32, tmp_path)
    # Without our "format" key a Gemma 3 config is read as the mlx-community layout (test_interop.py);
    # another architecture is neither.
    edit_config(folder, lambda c: (c.pop("format"), c.update(model_type="bert")))
    refused(folder, str(folder / "config.json"), "not written by `mlx-embedgemma convert`")


@pytest.mark.parametrize("version, loads", [(None, True), (1, True), (2, False), (0, False), ("1", False)])
def test_format_version(tiny_f32, tmp_path, version, loads):
    folder = copy(tiny_f32, tmp_path)
    edit_config(folder, lambda c: c.pop("format_version") if version is None else c.update(format_version=version))
    if loads:
        assert load(folder).encode("mars").shape == (64,)
    elif version == 2:
        refused(folder, "format_version 2, newer than this mlx-embedgemma understands (1)", "upgrade mlx-embedgemma")
    else:
        refused(folder, "format_version must be a positive integer")


# --- quantization metadata vs the stored tensors ---------------------------------------------------


@pytest.mark.parametrize(
    "change, named",
    [
        (lambda q: q.update(bits=8), "model.layers.0."),
        (lambda q: q.update(group_size=64), "model.layers.0."),
        (lambda q: q.update({"model.layers.1.mlp.up_proj": False}), "model.layers.1.mlp.up_proj.weight"),
        (lambda q: q.update({"model.layers.2.self_attn.q_proj": {"bits": 8, "group_size": 32}}), "model.layers.2.self_attn.q_proj"),
    ],
    ids=["bits", "group-size", "module-unquantized", "module-bits"],
)
def test_quantization_entry_that_does_not_match_the_tensors(tiny_q4, tmp_path, change, named):
    folder = copy(tiny_q4, tmp_path)
    edit_config(folder, lambda c: change(c["quantization"]))
    refused(folder, str(folder / "model.safetensors"), "does not match config.json", named, "re-convert")


def test_quantized_tensors_with_a_float_config(tiny_q4, tmp_path):
    folder = copy(tiny_q4, tmp_path)
    edit_config(folder, lambda c: c.pop("quantization"))
    refused(folder, "does not match config.json", "unexpected tensors", "scales")


def test_unsupported_quantization_entry(tiny_q4, tmp_path):
    folder = copy(tiny_q4, tmp_path)
    edit_config(folder, lambda c: c["quantization"].update(bits=7))
    refused(folder, str(folder / "config.json"), "bits must be one of", "re-convert")


# --- nothing but safetensors, no code ---------------------------------------------------------------


class Trap:
    """Unpickling this writes a file: proof that a pickle was loaded."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "a pickle was loaded"))


def booby_trap(folder: Path, marker: Path) -> None:
    """Pickled weights and remote code next to the real files, as a malicious upload might carry."""
    for name in ("pytorch_model.bin", "model.pt", "model.ckpt"):
        (folder / name).write_bytes(pickle.dumps(Trap(marker)))
    (folder / "modeling_evil.py").write_text(f"open({str(marker)!r}, 'w').write('code ran')\n", encoding="utf-8")
    edit_config(folder, lambda c: c.update(auto_map={"AutoModel": "modeling_evil.EvilModel"}, trust_remote_code=True))


def test_loading_reads_no_pickle_and_runs_no_code(tiny_f32, tmp_path):
    folder = copy(tiny_f32, tmp_path)
    marker = tmp_path / "marker"
    booby_trap(folder, marker)
    assert load(folder).encode("mars").shape == (64,)
    assert not marker.exists()


def test_converting_reads_no_pickle_and_runs_no_code(tiny_source, tmp_path):
    from mlx_embedgemma.convert import convert

    source = Path(shutil.copytree(tiny_source, tmp_path / "source"))
    marker = tmp_path / "marker"
    booby_trap(source, marker)
    convert(source, tmp_path / "out", quantize=False)
    assert not marker.exists()


def test_a_folder_with_only_pickled_weights_is_refused(tiny_f32, tmp_path):
    folder = copy(tiny_f32, tmp_path)
    marker = tmp_path / "marker"
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(Trap(marker)))
    refused(folder, str(folder / "model.safetensors"), "missing")
    assert not marker.exists()
