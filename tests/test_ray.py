"""Ray Data scale-out on a local Ray instance (2 CPUs, small object store) with the tiny models.

The expected vectors are ``model.encode`` on the same texts in one process: the actors must give
the same vectors, in input order, with their ids, whatever the number of actors.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

pytest.importorskip("ray.data")
import pyarrow as pa  # noqa: E402
import ray  # noqa: E402

from mlx_embedgemma import load  # noqa: E402

TEXTS = [f"document {i}: " + "mars is the red planet " * (i % 4) for i in range(40)]


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory):
    # Ray's workers start in the driver's working directory, with it first on sys.path: from a checkout
    # they would import the source folder (no compiled kernels in a non-editable install) instead of the
    # package this process tests, and run another plan. Started elsewhere, they import what we import.
    here = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("ray"))
    try:
        ray.init(num_cpus=2, object_store_memory=200 * 1024**2, include_dashboard=False, log_to_driver=False,
                 configure_logging=False)
    finally:
        os.chdir(here)
    yield
    ray.shutdown()


def table(out) -> pa.Table:
    return pa.concat_tables(list(out.iter_batches(batch_format="pyarrow", batch_size=None)))


def vectors(t: pa.Table, column: str = "embedding") -> np.ndarray:
    """The vectors as float32 rows, NaN where the embedding is null."""
    size = t.schema.field(column).type.list_size
    return np.array([v if v is not None else [np.nan] * size for v in t[column].to_pylist()], np.float32)


@pytest.mark.parametrize("actors", [1, 2])
@pytest.mark.parametrize("folder", ["tiny_f32", "tiny_q4"])
def test_vectors_equal_encode_in_order_with_ids(local_ray, request, folder, actors):
    from mlx_embedgemma.integrations.ray import embed_dataset

    path = request.getfixturevalue(folder)
    ids = [f"doc-{i:03d}" for i in range(len(TEXTS))]
    ds = ray.data.from_items([{"id": i, "text": t, "lang": "en"} for i, t in zip(ids, TEXTS)])
    out = table(embed_dataset(ds, path, prompt_name="document", actors=actors, batch_size=8, keep_columns=["lang"]))
    assert out.column_names == ["id", "lang", "embedding", "error"]
    assert out["id"].to_pylist() == ids
    assert out.schema.field("embedding").type == pa.list_(pa.float32(), 64)
    assert out["error"].null_count == len(TEXTS)
    np.testing.assert_allclose(vectors(out), load(path).encode(TEXTS, prompt_name="document"), atol=2e-6)


def test_a_row_that_cannot_be_embedded_is_reported_with_its_id(local_ray, tiny_f32):
    from mlx_embedgemma.integrations.ray import embed_dataset

    texts = ["mars", None, "venus", "bad \udc80 text", "jupiter"]
    ds = ray.data.from_items([{"id": i * 10, "text": t} for i, t in enumerate(texts)])
    out = table(embed_dataset(ds, tiny_f32, actors=2, batch_size=2))
    assert out["id"].to_pylist() == [0, 10, 20, 30, 40]  # nothing dropped, order kept
    errors = out["error"].to_pylist()
    assert errors[0] is None and errors[2] is None and errors[4] is None
    assert "text is NoneType, not str" in errors[1]
    assert "lone surrogate U+DC80" in errors[3]
    assert out["embedding"].to_pylist()[1] is None and out["embedding"].to_pylist()[3] is None
    good = [0, 2, 4]
    np.testing.assert_allclose(vectors(out)[good], load(tiny_f32).encode([texts[i] for i in good]), atol=2e-6)
    # A column of numbers: every row reported, none dropped.
    out = table(embed_dataset(ray.data.from_items([{"id": i, "text": i * 1.5} for i in range(3)]), tiny_f32))
    assert out["id"].to_pylist() == [0, 1, 2] and out["embedding"].null_count == 3
    assert all(e.startswith("text is float") and "not str: pass only strings" in e for e in out["error"].to_pylist())


@pytest.mark.parametrize("dtype, arrow, scale", [("float16", pa.float16(), 1.0), ("int8", pa.int8(), 127.0)])
def test_dim_and_storage_dtype(local_ray, tiny_matryoshka, dtype, arrow, scale):
    from mlx_embedgemma.integrations.ray import embed_dataset

    ds = ray.data.from_items([{"id": i, "body": t} for i, t in enumerate(TEXTS[:6])])
    out = table(embed_dataset(ds, tiny_matryoshka, text_column="body", dim=32, dtype=dtype))
    assert out.schema.field("embedding").type == pa.list_(arrow, 32)
    expected = load(tiny_matryoshka).encode(TEXTS[:6], dim=32)
    # Within half a step of the storage type (float16 near 1: 2**-11).
    np.testing.assert_allclose(vectors(out).astype(np.float32) / scale, expected, atol=0.5 / scale if dtype == "int8" else 5e-4)


def test_bad_arguments_fail_before_anything_runs(local_ray, tiny_matryoshka):
    from mlx_embedgemma.integrations.ray import embed_dataset

    ds = ray.data.from_items([{"id": 1, "text": "mars"}])
    with pytest.raises(ValueError, match="no column 'body' \\(its columns: id, text\\)"):
        embed_dataset(ds, tiny_matryoshka, text_column="body")
    with pytest.raises(ValueError, match="no column 'doc_id'"):
        embed_dataset(ds, tiny_matryoshka, id_column="doc_id")
    with pytest.raises(ValueError, match="64, 32, 16"):
        embed_dataset(ds, tiny_matryoshka, dim=100)
    with pytest.raises(ValueError, match="unknown prompt_name"):
        embed_dataset(ds, tiny_matryoshka, prompt_name="nope")
    with pytest.raises(ValueError, match="dtype must be one of float32, float16, int8"):
        embed_dataset(ds, tiny_matryoshka, dtype="bfloat16")
    with pytest.raises(ValueError, match="output column names \\['embedding'\\]"):
        embed_dataset(ray.data.from_items([{"id": 1, "text": "a", "embedding": 0}]), tiny_matryoshka, keep_columns=["embedding"])


def test_actors_get_their_share_of_the_cores(local_ray, tiny_f32, monkeypatch):
    """Each actor's environment holds its thread count (2 cores / actors), and its model's plan uses it."""
    import mlx_embedgemma.integrations.ray as module

    class Probe(module.EmbedBatch):
        def __call__(self, batch):
            import os

            env = ",".join(os.environ.get(v, "-") for v in module.THREAD_VARS)
            n = len(batch["text"])
            return {"env": np.array([env] * n), "plan": np.full(n, self.model.plan.threads)}

    monkeypatch.setattr(module, "EmbedBatch", Probe)
    ds = ray.data.from_items([{"id": i, "text": t} for i, t in enumerate(TEXTS[:8])])
    for actors, threads in [(1, 2), (2, 1)]:
        seen = module.embed_dataset(ds, tiny_f32, actors=actors, batch_size=4).to_pandas()
        assert set(seen["env"]) == {",".join([str(threads)] * len(module.THREAD_VARS))}, (actors, seen)
        assert set(seen["plan"]) == {threads}, (actors, seen)


# --- mlx-embedgemma embed-dataset ------------------------------------------------------------------


def write_jsonl(path, rows) -> None:
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def embed_dataset_cli(*args):
    from click.testing import CliRunner

    from mlx_embedgemma.cli import main

    return CliRunner().invoke(main, ["embed-dataset", *map(str, args)])


def test_embed_dataset_writes_one_file_per_input_file_and_resumes(local_ray, tiny_f32, tmp_path):
    import pyarrow.parquet as pq

    corpus = tmp_path / "corpus"
    parts = {"a.jsonl": TEXTS[:12], "sub/b.jsonl": TEXTS[12:30] + [None]}
    for name, texts in parts.items():
        write_jsonl(corpus / name, [{"id": f"{name}-{i}", "text": t} for i, t in enumerate(texts)])
    out = tmp_path / "vectors"
    result = embed_dataset_cli(corpus, out, "--model", tiny_f32, "--actors", "2", "--batch-size", "4", "--prompt-name", "query")
    assert result.exit_code == 0, result.output
    assert "embedded 31 rows into 2 files" in result.stdout
    assert "sub/b.jsonl: row id='sub/b.jsonl-18' not embedded: text is NoneType, not str" in result.output
    model = load(tiny_f32)
    for name, texts in parts.items():
        t = pq.read_table(out / name.replace(".jsonl", ".parquet"))
        assert t.column_names == ["id", "embedding", "error"]
        assert t["id"].to_pylist() == [f"{name}-{i}" for i in range(len(texts))]
        good = [i for i, text in enumerate(texts) if text is not None]
        np.testing.assert_allclose(vectors(t)[good], model.encode([texts[i] for i in good], prompt_name="query"), atol=2e-6)
    assert sorted(p.name for p in out.rglob("*")) == ["a.parquet", "b.parquet", "sub"]  # no partial files left

    # A rerun embeds only the input whose output is missing, and leaves the complete one alone.
    kept = out / "a.parquet"
    before = kept.stat().st_mtime_ns
    (out / "sub" / "b.parquet").unlink()
    (out / "sub" / ".b.parquet.partial").write_bytes(b"what a killed run leaves")
    result = embed_dataset_cli(corpus, out, "--model", tiny_f32, "--prompt-name", "query")
    assert result.exit_code == 0, result.output
    assert "1 of 2 output files are complete" in result.output and "embedded 19 rows into 1 files" in result.stdout
    assert kept.stat().st_mtime_ns == before
    assert pq.read_table(out / "sub" / "b.parquet")["id"].to_pylist() == [f"sub/b.jsonl-{i}" for i in range(19)]
    assert not (out / "sub" / ".b.parquet.partial").exists()
    result = embed_dataset_cli(corpus, out, "--model", tiny_f32, "--prompt-name", "query")
    assert result.exit_code == 0 and "embedded 0 rows into 0 files; 2 files already complete" in result.stdout


def test_embed_dataset_reads_parquet_and_writes_jsonl(local_ray, tiny_matryoshka, tmp_path):
    import json

    import pyarrow.parquet as pq

    pq.write_table(pa.table({"doc": list(range(9)), "body": TEXTS[:9]}), tmp_path / "in.parquet")
    result = embed_dataset_cli(tmp_path / "in.parquet", tmp_path / "out", "--model", tiny_matryoshka, "--text-column", "body",
                               "--id-column", "doc", "--dim", "16", "--format", "jsonl", "--dtype", "float16")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (tmp_path / "out" / "in.jsonl").read_text().splitlines()]
    assert [r["doc"] for r in rows] == list(range(9)) and all(r["error"] is None for r in rows)
    expected = load(tiny_matryoshka).encode(TEXTS[:9], prompt_name="document", dim=16)
    np.testing.assert_allclose(np.array([r["embedding"] for r in rows]), expected, atol=5e-4)


def test_embed_dataset_refuses_bad_input_with_the_fix(local_ray, tiny_f32, tmp_path):
    write_jsonl(tmp_path / "in" / "a.jsonl", [{"id": 1, "body": "mars"}])
    result = embed_dataset_cli(tmp_path / "in", tmp_path / "out", "--model", tiny_f32)
    assert result.exit_code != 0 and "no column 'text' (its columns: id, body)" in result.output
    (tmp_path / "in" / "notes.txt").write_text("x")
    result = embed_dataset_cli(tmp_path / "in", tmp_path / "out", "--model", tiny_f32, "--text-column", "body")
    assert result.exit_code != 0 and "expected Parquet (.parquet) or JSONL" in result.output and "notes.txt" in result.output
    result = embed_dataset_cli(tmp_path / "missing", tmp_path / "out", "--model", tiny_f32)
    assert result.exit_code != 0 and "does not exist" in result.output
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


# --- benchmarks/ray_scale.py -----------------------------------------------------------------------


def test_scale_corpus_has_the_asked_lengths(tiny_f32):
    from mlx_embedgemma.benchmarks.ray_scale import make_corpus

    model = load(tiny_f32)
    texts = make_corpus(model, 30, 40)
    assert len(texts) == 30 and len(set(texts)) == 30
    lengths = model.count_tokens(texts, prompt_name="document")
    assert all(32 <= n <= 40 for n in lengths), lengths
    assert make_corpus(model, 30, 40) == texts  # the same corpus on every run


def test_scale_benchmark_records_each_runner(tiny_f32, tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "ray_scale.py"
    out = tmp_path / "scale.jsonl"
    subprocess.run([sys.executable, str(script), str(tiny_f32), "--count", "24", "--tokens", "40", "--files", "3",
                    "--actors", "2", "--output", str(out)], check=True, capture_output=True, text=True)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["runner"], r["actors"]) for r in records] == [("embed", None), ("embed-dataset", 2)]
    for r in records:
        assert r["corpus"]["texts"] == 24 and r["corpus"]["tokens_max"] <= 40 and r["seconds"] > 0
        assert r["fingerprint"]["model_hash"] and r["kind"] == "scale"
    assert records[1]["max_abs_diff_vs_embed"] < 1e-5 and records[1]["threads_per_actor"] >= 1
