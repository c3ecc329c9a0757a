"""Folders in the mlx-embeddings / mlx-community layout: loading them, and writing them with `convert`.

The folders are built here from the tiny model's known weights (our own conversions of the tiny
checkpoint), laid out as described in mlx_embedgemma/community.py, so each can be compared with our
own conversion of the same weights.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from click.testing import CliRunner

from mlx_embedgemma import ModelFolderError, load, native
from mlx_embedgemma.cli import main

TEXTS = ["hello world", "the quick brown fox jumps over the lazy dog", "", "üñíçødé 中文 🚀", "mars is the red planet"]


def community_folder(ours: Path, dest: Path, source: Path, tensors: dict[str, mx.array] | None = None,
                     tokenizer: str = "tokenizer.model", prompts: bool = True) -> Path:
    """An mlx-community style folder holding the tensors of our folder ``ours`` (or ``tensors``)."""
    dest.mkdir()
    config = json.loads((source / "config.json").read_text(encoding="utf-8"))  # the Hugging Face text config
    ours_config = json.loads((ours / "config.json").read_text(encoding="utf-8"))
    if "quantization" in ours_config:
        q = ours_config["quantization"]
        config["quantization"] = {"group_size": q["group_size"], "bits": q["bits"]}
    (dest / "config.json").write_text(json.dumps(config), encoding="utf-8")
    if tensors is None:
        shutil.copyfile(ours / "model.safetensors", dest / "model.safetensors")
    else:
        mx.save_safetensors(str(dest / "model.safetensors"), tensors)
    if tokenizer == "tokenizer.model":
        shutil.copyfile(source / "tokenizer.model", dest / "tokenizer.model")
    elif tokenizer == "tokenizer.json":
        write_tokenizer_json(source / "tokenizer.model", dest / "tokenizer.json")
    shutil.copyfile(source / "tokenizer_config.json", dest / "tokenizer_config.json")  # model_max_length 80
    if prompts:
        shutil.copyfile(source / "config_sentence_transformers.json", dest / "config_sentence_transformers.json")
    return dest


def write_tokenizer_json(sp_model: Path, path: Path) -> None:
    """The tiny SentencePiece unigram model as a Hugging Face tokenizer.json (the tiny source's is a stub).

    Built from the pieces and scores, with normalizers that do what SentencePiece's default training
    options (nmt_nfkc, remove extra whitespace, dummy prefix) do to the texts used here. Like the real
    model's, it adds a special token one past the embedding table.
    """
    import sentencepiece as spm
    from tokenizers import Regex, Tokenizer, models, normalizers

    sp = spm.SentencePieceProcessor(model_file=str(sp_model))
    vocab = [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.vocab_size())]
    tok = Tokenizer(models.Unigram(vocab, unk_id=sp.unk_id(), byte_fallback=True))
    tok.normalizer = normalizers.Sequence([
        normalizers.NFKC(), normalizers.Strip(), normalizers.Replace(Regex(" {2,}"), " "),
        normalizers.Prepend("▁"), normalizers.Replace(" ", "▁"),
    ])
    tok.add_special_tokens(["<image_soft_token>"])
    tok.save(str(path))


@pytest.fixture(scope="module")
def expected(tiny_f32, tiny_q4):
    return {name: load(folder).encode_query(TEXTS) for name, folder in (("f32", tiny_f32), ("q4", tiny_q4))}


@pytest.mark.parametrize("variant", ["f32", "q4"])
def test_community_folder_gives_our_embeddings(request, tiny_source, tmp_path, expected, variant):
    ours = request.getfixturevalue(f"tiny_{variant}")
    model = load(community_folder(ours, tmp_path / "community", tiny_source))
    assert model.config["layout"] == "mlx-community"
    assert model.max_seq_length == 80 and set(model.prompts) == {"query", "document", "STS"}
    np.testing.assert_array_equal(model.encode_query(TEXTS), expected[variant])


def test_float_dense_head_and_shards_are_read_off_the_tensors(tiny_source, tiny_q4, tmp_path, expected):
    """Quantized blocks with a float Dense head, in two shards: which modules are quantized comes from the
    tensors, whatever config.json says."""
    tensors = dict(mx.load(str(tiny_q4 / "model.safetensors")))
    for k in (0, 1):
        name = f"dense.{k}"
        scales, biases = (tensors.pop(f"{name}.{p}").astype(mx.float32) for p in ("scales", "biases"))
        tensors[f"{name}.weight"] = mx.dequantize(tensors.pop(f"{name}.weight"), scales, biases, 32, 4)
    folder = community_folder(tiny_q4, tmp_path / "community", tiny_source, tensors=tensors)
    (folder / "model.safetensors").unlink()
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[: len(names) // 2], "model-00002-of-00002.safetensors": names[len(names) // 2 :]}
    for file, part in shards.items():
        mx.save_safetensors(str(folder / file), {k: tensors[k] for k in part})
    index = {"metadata": {}, "weight_map": {k: file for file, part in shards.items() for k in part}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index), encoding="utf-8")

    # Float activations in both: the quantized head of tiny_q4 would otherwise take int16 inputs where the
    # kernel has integer dot products, and a float head float ones (backend plan).
    kernels = "native-float32" if native.available() else "auto"
    model = load(folder, kernels=kernels)
    assert model.config["quantization"]["dense.0"] is False and model.config["quantization"]["dense.1"] is False
    # Dequantizing the Dense weights to float32 is exact, so the embeddings are those of tiny_q4.
    np.testing.assert_allclose(model.encode_query(TEXTS), load(tiny_q4, kernels=kernels).encode_query(TEXTS), atol=1e-6)


def test_folder_with_only_tokenizer_json(tiny_source, tiny_f32, tmp_path, expected):
    pytest.importorskip("tokenizers")
    folder = community_folder(tiny_f32, tmp_path / "community", tiny_source, tokenizer="tokenizer.json")
    model = load(folder)
    assert type(model.tokenizer).__name__ == "JsonTokenizer"
    np.testing.assert_array_equal(model.encode_query(TEXTS), expected["f32"])
    with pytest.raises(ValueError, match="<image_soft_token>.*no embedding"):
        model.encode("a picture: <image_soft_token>")


def test_tokenizer_json_without_the_library_says_what_to_install(tiny_source, tiny_f32, tmp_path):
    folder = community_folder(tiny_f32, tmp_path / "community", tiny_source, tokenizer="tokenizer.json")
    code = f"""
        import sys
        sys.modules["tokenizers"] = None  # as if it were not installed
        import mlx_embedgemma
        try:
            mlx_embedgemma.load({str(folder)!r})
        except ImportError as e:
            print(e)
    """
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "pip install 'mlx-embedgemma[tokenizers]'" in proc.stdout and "tokenizer.model" in proc.stdout


def test_missing_prompts_fall_back_to_embeddinggemmas_with_a_warning(tiny_source, tiny_f32, tmp_path):
    folder = community_folder(tiny_f32, tmp_path / "community", tiny_source, prompts=False)
    with pytest.warns(UserWarning, match="no task prompts"):
        model = load(folder)
    assert model.prompts["query"] == "task: search result | query: " and len(model.prompts) == 14


def test_missing_dense_head_says_to_convert(tiny_source, tiny_f32, tmp_path):
    tensors = {k: v for k, v in mx.load(str(tiny_f32 / "model.safetensors")).items() if not k.startswith("dense.")}
    folder = community_folder(tiny_f32, tmp_path / "community", tiny_source, tensors=tensors)
    with pytest.raises(ModelFolderError, match=r"no Dense head.*dense\.0\.weight.*mlx-embedgemma convert google/embeddinggemma-300m"):
        load(folder)


def test_missing_tokenizer_is_named(tiny_source, tiny_f32, tmp_path):
    folder = community_folder(tiny_f32, tmp_path / "community", tiny_source, tokenizer="none")
    with pytest.raises(FileNotFoundError, match="no tokenizer.*tokenizer.model"):
        load(folder)


def test_causal_gemma_is_not_taken_for_embeddinggemma(tiny_source, tiny_f32, tmp_path):
    folder = community_folder(tiny_f32, tmp_path / "community", tiny_source)
    config = json.loads((folder / "config.json").read_text())
    config["use_bidirectional_attention"] = False
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelFolderError, match="not EmbeddingGemma.*mlx-embedgemma convert"):
        load(folder)


# --- convert --layout mlx-community ----------------------------------------------------------------


def test_convert_writes_the_community_layout_and_loads_it_back(tiny_source, tmp_path, expected):
    out = tmp_path / "community"
    result = CliRunner().invoke(main, ["convert", str(tiny_source), str(out), "--bits", "4", "--group-size", "32",
                                       "--layout", "mlx-community"])
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text())
    assert "format" not in config and config["model_type"] == "gemma3_text"
    assert config["quantization"]["bits"] == 4 and config["quantization"]["group_size"] == 32
    header = mx.load(str(out / "model.safetensors"))
    assert {"dense.0.weight", "dense.1.weight", "model.embed_tokens.scales"} <= set(header)
    for name in ("tokenizer.model", "tokenizer.json", "config_sentence_transformers.json", "modules.json", "1_Pooling/config.json"):
        assert (out / name).is_file(), name
    model = load(out)
    assert model.config["layout"] == "mlx-community"
    # Same weights as the tiny_q4 fixture (same options, deterministic), so the same embeddings.
    np.testing.assert_array_equal(model.encode_query(TEXTS), expected["q4"])
