"""The `mlx-embedgemma` command on the tiny model: embed (arguments, files, stdin, .npy), info.

Click is 8.2+ here: ``result.stdout`` is stdout alone, ``result.output`` stdout and stderr together.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import mlx.core as mx
import numpy as np
import pytest
from click.testing import CliRunner

from mlx_embedgemma import load
from mlx_embedgemma.cli import main



@pytest.fixture(scope="module")
def model(tiny_matryoshka):
    return load(tiny_matryoshka)


def invoke(*args: str, input: str | None = None):
    return CliRunner().invoke(main, [str(a) for a in args], input=input)


def jsonl_rows(text: str) -> np.ndarray:
    records = [json.loads(line) for line in text.splitlines()]
    assert [r["index"] for r in records] == list(range(len(records)))
    return np.array([r["embedding"] for r in records], np.float32)


# --- embed -----------------------------------------------------------------------------------------


def test_embed_texts_prints_jsonl_in_order(tiny_matryoshka, model):
    result = invoke("embed", tiny_matryoshka, "a", "b", "--dim", "32")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 2
    assert [json.loads(line)["index"] for line in lines] == [0, 1]
    rows = jsonl_rows(result.stdout)
    assert rows.shape == (2, 32)
    np.testing.assert_allclose(rows, model.encode(["a", "b"], dim=32), atol=1e-6)


def test_embed_defaults_to_the_full_size(tiny_f32):
    result = invoke("embed", tiny_f32, "mars")
    assert result.exit_code == 0, result.output
    np.testing.assert_allclose(jsonl_rows(result.stdout), load(tiny_f32).encode(["mars"]), atol=1e-6)


def test_embed_from_a_text_file_one_text_per_line(tiny_matryoshka, model, tmp_path):
    texts = ["the quick brown fox", "mars is red", "üñíçødé 中文", "venus"]
    path = tmp_path / "texts.txt"
    path.write_text("\n".join(texts) + "\n", encoding="utf-8")
    result = invoke("embed", tiny_matryoshka, "--input", path, "--dim", "16")
    assert result.exit_code == 0, result.output
    np.testing.assert_allclose(jsonl_rows(result.stdout), model.encode(texts, dim=16), atol=1e-6)


def test_embed_from_jsonl_reads_the_text_field(tiny_matryoshka, model, tmp_path):
    texts = ["mars is red", "venus is hot", "the quick brown fox"]
    path = tmp_path / "texts.jsonl"
    path.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(texts)), encoding="utf-8")
    result = invoke("embed", tiny_matryoshka, "--input", path)
    assert result.exit_code == 0, result.output
    np.testing.assert_allclose(jsonl_rows(result.stdout), model.encode(texts), atol=1e-6)


def test_embed_from_jsonl_names_a_bad_line(tiny_matryoshka, tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "ok"}\n{"body": "no text field"}\n', encoding="utf-8")
    result = invoke("embed", tiny_matryoshka, "--input", path)
    assert result.exit_code != 0
    assert "line 2" in result.output and "'text'" in result.output


@pytest.mark.parametrize("args", [[], ["--input", "-"]])
def test_embed_from_stdin(tiny_matryoshka, model, args):
    result = invoke("embed", tiny_matryoshka, *args, input="mars is red\nvenus\r\nüñíçødé 中文\n")
    assert result.exit_code == 0, result.output
    expected = model.encode(["mars is red", "venus", "üñíçødé 中文"])
    np.testing.assert_allclose(jsonl_rows(result.stdout), expected, atol=1e-6)


def test_embed_to_npy(tiny_matryoshka, model, tmp_path):
    out = tmp_path / "out.npy"
    result = invoke("embed", tiny_matryoshka, "a", "b", "c", "--dim", "32", "--output", out)
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    saved = np.load(out)
    assert saved.shape == (3, 32) and saved.dtype == np.float32
    np.testing.assert_allclose(saved, model.encode(["a", "b", "c"], dim=32), atol=1e-6)


def test_embed_empty_input_to_npy_gives_an_empty_matrix(tiny_matryoshka, tmp_path):
    out = tmp_path / "empty.npy"
    result = invoke("embed", tiny_matryoshka, "--output", out, "--dim", "16", input="")
    assert result.exit_code == 0, result.output
    assert np.load(out).shape == (0, 16)


def test_embed_to_jsonl_file(tiny_matryoshka, model, tmp_path):
    out = tmp_path / "out.jsonl"
    result = invoke("embed", tiny_matryoshka, "a", "b", "--output", out)
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    np.testing.assert_allclose(jsonl_rows(out.read_text(encoding="utf-8")), model.encode(["a", "b"]), atol=1e-6)


def test_embed_with_prompt_name_equals_encode_query(tiny_matryoshka, model):
    texts = ["which planet is red?", "mars"]
    result = invoke("embed", tiny_matryoshka, *texts, "--prompt-name", "query")
    assert result.exit_code == 0, result.output
    np.testing.assert_allclose(jsonl_rows(result.stdout), model.encode_query(texts), atol=1e-6)
    assert not np.allclose(jsonl_rows(result.stdout), model.encode(texts), atol=1e-3)


def test_embed_unknown_prompt_name_lists_names(tiny_matryoshka):
    result = invoke("embed", tiny_matryoshka, "a", "--prompt-name", "nope")
    assert result.exit_code != 0
    assert "nope" in result.output and "STS, document, query" in result.output
    assert result.stdout == ""


def test_embed_wrong_dim_lists_sizes(tiny_matryoshka):
    result = invoke("embed", tiny_matryoshka, "a", "--dim", "100")
    assert result.exit_code != 0
    assert not isinstance(result.exception, ValueError)  # a message, not a traceback
    assert "64, 32, 16" in result.output


def test_embed_texts_and_input_together_are_refused(tiny_matryoshka, tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("x\n", encoding="utf-8")
    result = invoke("embed", tiny_matryoshka, "a", "--input", path)
    assert result.exit_code == 2
    assert "not both" in result.output


def test_embed_missing_model_says_to_convert(tmp_path):
    missing = tmp_path / "nowhere"
    result = invoke("embed", missing, "a")
    assert result.exit_code != 0
    assert str(missing) in result.output and "convert" in result.output


# --- info ------------------------------------------------------------------------------------------


def info_rows(text: str) -> dict[str, str]:
    rows = {}
    for line in text.splitlines():
        key, _, value = line.partition("  ")
        rows[key.strip()] = value.strip()
    return rows


def test_info_reports_mlx_device_and_native_kernels():
    result = invoke("info")
    assert result.exit_code == 0, result.output
    rows = info_rows(result.stdout)
    assert rows["mlx"] == mx.__version__
    assert rows["device"] == str(mx.default_device())
    from mlx_embedgemma import native

    assert rows["native CPU kernels"].startswith(native.isa() if native.available() else "not in use")
    assert "storage" not in rows


@pytest.mark.parametrize("fixture, storage", [("tiny_f32", "float32"), ("tiny_q4", "recipe uniform-4bit-g32: 4-bit affine, group 32")])
def test_info_model_reports_storage_and_dims(request, fixture, storage):
    folder = request.getfixturevalue(fixture)
    result = invoke("info", folder)
    assert result.exit_code == 0, result.output
    rows = info_rows(result.stdout)
    assert rows["storage"] == storage
    assert rows["dims"] == ", ".join(map(str, load(folder).dims))
    assert rows["dims"].split(", ")[0] == "64"  # the tiny model's full size
    assert rows["max tokens"] == "80"
    assert rows["prompts"] == "STS, document, query"


def test_info_missing_model_fails_with_a_message(tmp_path):
    result = invoke("info", tmp_path / "nowhere")
    assert result.exit_code == 1
    assert "does not exist" in result.output


# --- the installed console script ------------------------------------------------------------------


def test_console_script_embeds(tiny_matryoshka, model, tmp_path):
    script = shutil.which("mlx-embedgemma", path=os.path.dirname(sys.executable))
    if script is None:
        pytest.skip("the mlx-embedgemma console script is not installed next to this Python")
    proc = subprocess.run(
        [script, "embed", str(tiny_matryoshka), "a", "b", "--dim", "32"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 2 and [json.loads(line)["index"] for line in lines] == [0, 1]
    np.testing.assert_allclose(jsonl_rows(proc.stdout), model.encode(["a", "b"], dim=32), atol=1e-6)
