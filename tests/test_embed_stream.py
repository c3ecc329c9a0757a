"""`embed`'s streaming and `--resume` logic, called as a library (no click): mlx_embedgemma/embed_stream.py."""

from __future__ import annotations

import io

import numpy as np
import pytest

from mlx_embedgemma import embed_stream, load
from mlx_embedgemma.embed_stream import CHUNK, StreamError

TEXTS = [f"text number {i} about mars" for i in range(CHUNK + 40)]


@pytest.fixture(scope="module")
def model(tiny_f32):
    return load(tiny_f32)


def test_a_resumed_file_equals_an_uninterrupted_one_and_each_chunk_reaches_the_disk(model, tmp_path, monkeypatch):
    flushed = []
    monkeypatch.setattr(embed_stream, "flush_to_disk", flushed.append)
    whole = tmp_path / "whole.jsonl"
    assert embed_stream.embed_to_file(model, TEXTS, whole, prompt_name=None, dim=64, batch_size=8) == (len(TEXTS), 0)
    assert len(flushed) == 2  # after the first chunk, and at the end

    lines = whole.read_bytes().splitlines(keepends=True)
    cut = tmp_path / "cut.jsonl"
    cut.write_bytes(b"".join(lines[: CHUNK + 5]) + lines[CHUNK + 5][:30])  # killed mid-line in the 2nd chunk
    notes = []
    written, resumed_after = embed_stream.embed_to_file(model, TEXTS, cut, prompt_name=None, dim=64, batch_size=8,
                                                        resume=True, log=notes.append)
    assert (written, resumed_after) == (len(TEXTS) - CHUNK, CHUNK)
    assert cut.read_bytes() == whole.read_bytes()
    assert notes == [f"{cut}: kept the first {CHUNK} of {CHUNK + 5} complete lines (whole chunks of {CHUNK})"]


def test_resuming_with_another_prompt_is_refused_before_appending(model, tmp_path):
    out = tmp_path / "out.jsonl"
    embed_stream.embed_to_file(model, TEXTS, out, prompt_name=None, dim=64, batch_size=8)
    before = out.read_bytes()
    with pytest.raises(StreamError, match="not what text .* embeds to now"):
        embed_stream.embed_to_file(model, TEXTS + ["more"], out, prompt_name="query", dim=64, batch_size=8, resume=True)
    assert out.read_bytes() == before


@pytest.mark.parametrize("output", [None, "out.npy"])
def test_only_a_jsonl_file_can_be_resumed(model, tmp_path, output):
    with pytest.raises(StreamError, match="--resume continues a JSONL --output file"):
        embed_stream.embed_to_file(model, TEXTS, output and tmp_path / output, prompt_name=None, dim=64, batch_size=8,
                                   resume=True)


def test_npy_output_is_the_matrix_of_encode(model, tmp_path):
    out = tmp_path / "out.npy"
    embed_stream.embed_to_file(model, TEXTS[:5], out, prompt_name="query", dim=64, batch_size=2)
    np.testing.assert_allclose(np.load(out), model.encode(TEXTS[:5], prompt_name="query", dim=64), atol=1e-6)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.npy"]  # no partial file left


def test_jsonl_input_errors_name_the_line():
    stream = io.StringIO('{"text": "a"}\n\n{"txt": "b"}\n')
    stream.name = "in.jsonl"
    with pytest.raises(StreamError, match=r"in.jsonl, line 3: expected a JSON object with a 'text' field"):
        list(embed_stream.read_texts(stream))
