"""Long streams: encode_iter reads lazily and keeps order; `embed` writes whole lines as it goes and resumes.

On the tiny float32 model. The kill tests run the installed console script in a subprocess.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from mlx_embedgemma import load
from mlx_embedgemma.cli import main
from mlx_embedgemma.embed_stream import CHUNK
from processes import kill_when

WORDS = "the quick brown fox jumps over the lazy dog mars venus earth".split()


def text(i: int) -> str:
    """Texts of 1 to 12 words (never past the tiny model's 80 tokens), all different."""
    return f"{i} " + " ".join(WORDS[: i % len(WORDS) + 1])


@pytest.fixture(scope="module")
def model(tiny_f32):
    return load(tiny_f32)


# --- encode_iter -----------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk_size", [1, 7, 256])
def test_encode_iter_yields_what_encode_gives_in_input_order(model, chunk_size):
    texts = [text(i) for i in range(40)]
    streamed = np.stack(list(model.encode_iter(iter(texts), chunk_size=chunk_size, batch_size=4)))
    np.testing.assert_allclose(streamed, model.encode(texts), atol=1e-6)


def test_encode_iter_reads_an_infinite_stream_lazily(model):
    pulled = []

    def endless():
        for i in itertools.count():
            pulled.append(i)
            yield text(i)

    first = list(itertools.islice(model.encode_iter(endless(), chunk_size=16, prompt_name="query"), 20))
    assert len(first) == 20
    assert len(pulled) == 32  # two chunks of 16, nothing more
    np.testing.assert_allclose(np.stack(first), model.encode([text(i) for i in range(20)], prompt_name="query"), atol=1e-6)


def test_encode_iter_options_are_checked_before_reading(model):
    pulled = []

    def stream():
        pulled.append(1)
        yield "a"

    with pytest.raises(ValueError, match="dim must be one of"):
        model.encode_iter(stream(), dim=3)
    with pytest.raises(ValueError, match="unknown prompt_name"):
        model.encode_iter(stream(), prompt_name="nope")
    with pytest.raises(ValueError, match="chunk_size"):
        model.encode_iter(stream(), chunk_size=0)
    assert pulled == []


@pytest.mark.parametrize("bad", ["one text", b"bytes", 42])
def test_encode_iter_wants_an_iterable_of_texts(model, bad):
    with pytest.raises(TypeError, match="encode_iter takes an iterable|iterable of str"):
        model.encode_iter(bad)


def test_encode_iter_names_a_bad_item_by_its_index_in_the_stream(model):
    texts = [text(i) for i in range(10)] + [None]
    got = []
    with pytest.raises(TypeError, match=r"texts\[10\] is NoneType"):
        for v in model.encode_iter(texts, chunk_size=4):
            got.append(v)
    assert len(got) == 8  # the chunks before the bad item's chunk, complete and in order
    np.testing.assert_allclose(np.stack(got), model.encode(texts[:8]), atol=1e-6)


# --- embed --output FILE.jsonl: complete lines, --resume ---------------------------------------------


def script() -> str:
    path = shutil.which("mlx-embedgemma", path=os.path.dirname(sys.executable))
    if path is None:
        pytest.skip("the mlx-embedgemma console script is not installed next to this Python")
    return path


def embed_cmd(model_dir: Path, inputs: Path, output: Path, *extra: str) -> list[str]:
    return [script(), "embed", str(model_dir), "--input", str(inputs), "--output", str(output), *extra]


def write_inputs(path: Path, n: int) -> Path:
    path.write_text("".join(text(i) + "\n" for i in range(n)), encoding="utf-8")
    return path


def complete_lines(path: Path) -> list[dict]:
    data = path.read_bytes()
    assert data == b"" or data.endswith(b"\n"), "the output ends in a partial line"
    records = [json.loads(line) for line in data.decode("utf-8").splitlines()]
    assert [r["index"] for r in records] == list(range(len(records)))
    return records


def run_and_kill(cmd: list[str], output: Path, after_lines: int, cwd: Path) -> bool:
    """Start ``cmd``, SIGKILL it once ``output`` has ``after_lines`` lines; False if it finished first."""
    return kill_when(cmd, cwd, lambda: output.exists() and output.read_bytes().count(b"\n") >= after_lines, 0.005)


def test_killed_embed_leaves_complete_lines_and_resume_matches_an_uninterrupted_run(tiny_f32, tmp_path):
    full = tmp_path / "full.jsonl"
    for n in (3000, 12000, 48000):  # grow the input until the kill lands mid-run on this machine
        inputs = write_inputs(tmp_path / "texts.txt", n)
        part = tmp_path / "part.jsonl"
        part.unlink(missing_ok=True)
        if run_and_kill(embed_cmd(tiny_f32, inputs, part), part, CHUNK + 10, tmp_path):
            break
    else:
        pytest.fail("embed finished before it could be killed, even on 48,000 texts")
    killed = complete_lines(part)
    assert CHUNK + 10 <= len(killed) < n

    resumed = subprocess.run(embed_cmd(tiny_f32, inputs, part, "--resume"), cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    uninterrupted = subprocess.run(embed_cmd(tiny_f32, inputs, full), cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert uninterrupted.returncode == 0, uninterrupted.stderr
    assert len(complete_lines(full)) == n
    assert part.read_bytes() == full.read_bytes()


def invoke(*args) -> object:
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture
def finished(tiny_f32, tmp_path) -> tuple[Path, Path]:
    """Inputs of 2.5 chunks and the JSONL of an uninterrupted run."""
    inputs = write_inputs(tmp_path / "texts.txt", 2 * CHUNK + CHUNK // 2)
    result = invoke("embed", tiny_f32, "--input", inputs, "--output", tmp_path / "full.jsonl")
    assert result.exit_code == 0, result.output
    return inputs, tmp_path / "full.jsonl"


@pytest.mark.parametrize("cut", ["mid-line", "after a line", "at a chunk boundary", "nothing"])
def test_resume_drops_a_partial_tail_and_finishes_identically(tiny_f32, finished, tmp_path, cut):
    inputs, full = finished
    data = full.read_bytes()
    lines = data.splitlines(keepends=True)
    keep = {
        "mid-line": b"".join(lines[: CHUNK + 3]) + lines[CHUNK + 3][:50],
        "after a line": b"".join(lines[: CHUNK + 3]),
        "at a chunk boundary": b"".join(lines[:CHUNK]),
        "nothing": b"",
    }[cut]
    part = tmp_path / "part.jsonl"
    part.write_bytes(keep)
    result = invoke("embed", tiny_f32, "--input", inputs, "--output", part, "--resume")
    assert result.exit_code == 0, result.output
    assert part.read_bytes() == data


def test_resume_without_an_output_file_starts_fresh(tiny_f32, finished, tmp_path):
    inputs, full = finished
    result = invoke("embed", tiny_f32, "--input", inputs, "--output", tmp_path / "new.jsonl", "--resume")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "new.jsonl").read_bytes() == full.read_bytes()


def test_resume_refuses_another_dim(tiny_f32, finished, tmp_path):
    inputs, full = finished
    config = json.loads((tiny_f32 / "config.json").read_text(encoding="utf-8"))
    config["matryoshka_dims"] = [64, 32]
    other = Path(shutil.copytree(tiny_f32, tmp_path / "with-dims"))
    (other / "config.json").write_text(json.dumps(config), encoding="utf-8")
    before = full.read_bytes()
    result = invoke("embed", other, "--input", inputs, "--output", full, "--resume", "--dim", "32")
    assert result.exit_code == 1
    assert "64-d embeddings, this run makes 32-d" in result.output
    assert full.read_bytes() == before


@pytest.mark.parametrize("change", [("--prompt-name", "query"), ("model", "tiny_q4")])
def test_resume_refuses_another_model_or_prompt(request, tiny_f32, finished, tmp_path, change):
    inputs, full = finished
    part = tmp_path / "part.jsonl"
    part.write_bytes(b"".join(full.read_bytes().splitlines(keepends=True)[:CHUNK]))
    before = part.read_bytes()
    model_dir = request.getfixturevalue(change[1]) if change[0] == "model" else tiny_f32
    extra = list(change) if change[0] != "model" else []
    result = invoke("embed", model_dir, "--input", inputs, "--output", part, "--resume", *extra)
    assert result.exit_code == 1
    assert "another model, prompt or input" in result.output
    assert part.read_bytes() == before


def test_resume_refuses_a_file_that_is_not_one_run(tiny_f32, finished, tmp_path):
    inputs, full = finished
    lines = full.read_bytes().splitlines(keepends=True)
    part = tmp_path / "part.jsonl"
    part.write_bytes(lines[0] + lines[2])
    result = invoke("embed", tiny_f32, "--input", inputs, "--output", part, "--resume")
    assert result.exit_code == 1 and "line 2 has index 2, expected 1" in result.output
    part.write_bytes(b"not json\n")
    result = invoke("embed", tiny_f32, "--input", inputs, "--output", part, "--resume")
    assert result.exit_code == 1 and "line 1 is not an `embed` record" in result.output


def test_resume_refuses_an_output_longer_than_the_input(tiny_f32, finished, tmp_path):
    _, full = finished
    short = write_inputs(tmp_path / "short.txt", CHUNK // 2)
    result = invoke("embed", tiny_f32, "--input", short, "--output", full, "--resume")
    assert result.exit_code == 1 and "the input has only" in result.output


@pytest.mark.parametrize("output", [None, "out.npy"])
def test_resume_needs_a_jsonl_output(tiny_f32, tmp_path, output):
    args = ["embed", tiny_f32, "a", "--resume"] + (["--output", tmp_path / output] if output else [])
    result = invoke(*args)
    assert result.exit_code == 2 and "--resume" in result.output
