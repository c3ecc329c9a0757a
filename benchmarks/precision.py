"""Size, memory and accuracy of model folders side by side: the table behind README's precision table.

    .venv/bin/python benchmarks/precision.py MODEL [MODEL ...]
        [--results benchmarks/results/precision-linux-x86_64.jsonl] [--memory-scale 0.1] [--table-only]
        [--measure cosine_validation,...]   # only these measurements (default: all)

For each folder (float32, bfloat16, 8-bit, plain 4-bit, the default recipe, ...) it measures what the
results file does not hold yet for those exact weights (keyed by the weights' hash), appends one JSON
record per measurement, and prints the Markdown table from the file:

- size on disk, and bits per weight over the transformer blocks' matrices (scales and biases included);
- peak RSS of a fresh process embedding 128-token documents (memory.py scenario docs128; at
  ``--memory-scale 0.1``, 200 of its 2,000 documents: the peak is reached in the first batches);
- cosine to the float32 sentence-transformers embeddings, per text, on two sets: ../shared/reference
  (38 texts, 8 to 2,048 tokens: the test set, measurement ``cosine_reference``) and the validation set
  (``validation/texts.jsonl``, 60 texts in 21 scripts, long documents, code, tables, logs, repeated and
  short input: what recipes are chosen on, measurement ``cosine_validation``); each record holds every
  text's cosine, the mean, the min and the worst text (its id and kind);
- STS-B Spearman and AIA-BDE NDCG@10 at 768/512/256/128 dims (quality.py), each also shown as the
  difference to the float32 folder's score on the same items.
"""

from __future__ import annotations

import argparse
import json
import re
import platform
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

import mlx_embedgemma
from mlx_embedgemma.benchmarks import quality
from mlx_embedgemma.benchmarks.fingerprint import git_commit, kernel
from mlx_embedgemma.benchmarks.measure import encode_by_prompt

HERE = Path(__file__).resolve().parent
SHARED = HERE.parents[1] / "shared"
VALIDATION = HERE / "validation"
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def block_bits_per_weight(model) -> float:
    """Stored bits per parameter of the blocks' projection matrices, scales and biases included."""
    from mlx_embedgemma.mapped import SafetensorsMap

    header = SafetensorsMap(model.path / "model.safetensors").header
    a = model.network.args
    per_layer = 2 * a.hidden_size * a.num_attention_heads * a.head_dim + 2 * a.hidden_size * a.num_key_value_heads * a.head_dim
    params = a.num_hidden_layers * (per_layer + 3 * a.hidden_size * a.intermediate_size)
    stored = sum(
        info["data_offsets"][1] - info["data_offsets"][0]
        for name, info in header.items()
        if name.startswith("model.layers.") and name.split(".")[-2] in PROJECTIONS
    )
    return 8 * stored / params


def measure_size(model) -> dict:
    size = sum(f.stat().st_size for f in model.path.iterdir() if f.is_file())
    return {"size_mb": round(size / 1e6, 1), "block_bits_per_weight": round(block_bits_per_weight(model), 3)}


def text_set(name: str) -> tuple[list[dict], np.ndarray]:
    """Rows (id, kind, prompt_name, text, n_tokens) and reference embeddings of a scoring set."""
    if name == "reference":
        lines, reference = SHARED / "reference" / "public.jsonl", np.load(SHARED / "reference" / "public.npy")
    else:
        lines, reference = VALIDATION / "texts.jsonl", np.load(VALIDATION / "reference.npy")
    rows = [json.loads(line) for line in lines.read_text(encoding="utf-8").splitlines() if line.strip()]
    for r in rows:  # the test set has ids but no kinds: its ids name them ("misc07", "long-apache-full")
        r.setdefault("kind", re.sub(r"\d+$", "", r["id"]))
    return rows, reference


def per_text_cosine(encode, rows: list[dict], reference: np.ndarray) -> dict:
    """Cosine of ``encode(texts, prompt_name)`` to ``reference`` for every row; mean, min and the worst row.

    Texts of one prompt are encoded together (as the model batches them); inputs over the model's limit
    are truncated as in the reference, so truncation warnings are silenced.
    """
    ours = encode_by_prompt(encode, rows, reference.shape)
    cosine = np.sum(ours * reference, axis=1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(reference, axis=1)
    worst = int(np.argmin(cosine))
    return {
        "rows": len(rows), "mean_cosine": round(float(cosine.mean()), 5), "min_cosine": round(float(cosine.min()), 5),
        "worst": {"id": rows[worst]["id"], "kind": rows[worst]["kind"], "n_tokens": rows[worst].get("n_tokens"),
                  "cosine": round(float(cosine[worst]), 5)},
        "cosines": {r["id"]: round(float(c), 5) for r, c in zip(rows, cosine)},
    }


def measure_text_set(model, name: str) -> dict:
    rows, reference = text_set(name)
    if reference.shape[1] != max(model.dims):
        raise ValueError(f"{model.path} gives {max(model.dims)}-d embeddings, the {name} set {reference.shape[1]}-d")
    return {"set": name} | per_text_cosine(lambda texts, p: model.encode(texts, prompt_name=p), rows, reference)


def measure_memory(model, scale: float) -> dict:
    proc = subprocess.run(
        [sys.executable, str(HERE / "memory.py"), str(model.path), "--scenarios", "docs128", "--scale", str(scale)],
        capture_output=True, text=True, check=False,
    )
    if proc.returncode:
        raise RuntimeError(f"memory.py failed on {model.path}:\n{proc.stderr}")
    record = json.loads(proc.stdout.strip().splitlines()[-1])
    return {k: record[k] for k in ("texts", "tokens_per_text", "peak_rss_mb", "mlx_peak_mb", "texts_per_s")} | {"scale": scale}


def measure_quality(model, task: str) -> dict:
    scores = {"sts": quality.sts, "retrieval": quality.retrieval}[task](model, SHARED / "eval", None)
    return {"scores": {str(d): round(s, 3) for d, s in scores.items()}}


def read_results(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


MEASUREMENTS = ("size", "cosine_reference", "cosine_validation", "memory_docs128", "sts", "retrieval")


def run(models: list[str], results: Path, memory_scale: float, only: tuple[str, ...] = MEASUREMENTS,
        again: bool = False) -> None:
    # Keyed by the kernel too: a new activation width or kernel is a new measurement of the same weights.
    # ``again`` measures anyway: memory depends on the code as well as the weights.
    done = set() if again else {(r["weights_sha256"], r["measurement"], r.get("kernel")) for r in read_results(results)}
    measurements = {
        "size": measure_size,
        "cosine_reference": lambda m: measure_text_set(m, "reference"),
        "cosine_validation": lambda m: measure_text_set(m, "validation"),
        "memory_docs128": lambda m: measure_memory(m, memory_scale),
        "sts": lambda m: measure_quality(m, "sts"),
        "retrieval": lambda m: measure_quality(m, "retrieval"),
    }
    for path in models:
        model = mlx_embedgemma.load(path)
        identity = quality.model_identity(model)
        ran_on = kernel(model.plan)
        for name, measure in measurements.items():
            if name not in only or (identity["weights_sha256"], name, ran_on) in done:
                continue
            print(f"{path}: {name} ...", file=sys.stderr, flush=True)
            record = {"model": path, **identity, "measurement": name, **measure(model)}
            record.update(
                machine=f"{platform.system()} {platform.machine()}", mlx_embedgemma=mlx_embedgemma.__version__,
                kernel=ran_on, git_commit=git_commit(), date=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            )
            results.parent.mkdir(parents=True, exist_ok=True)
            with results.open("a", encoding="utf-8") as f:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")


def table(models: list[str], results: Path) -> str:
    """Markdown: one row per weights hash, in the order the models were given (latest record wins)."""
    by_model: dict[str, dict[str, dict]] = {}
    for r in read_results(results):
        by_model.setdefault(r["weights_sha256"], {})[r["measurement"]] = r
    if models:
        order = [quality.model_identity(mlx_embedgemma.load(p))["weights_sha256"] for p in models]
        order = [key for key in order if key in by_model]
    else:
        order = list(by_model)
    baseline = next((by_model[k] for k in order if next(iter(by_model[k].values()))["storage"] == "float32"), None)
    dims = [str(d) for d in quality.DIMS]

    def scores(entry: dict, task: str) -> list[str]:
        if task not in entry:
            return ["–"] * len(dims)
        cells = []
        for d in dims:
            score = entry[task]["scores"][d]
            base = baseline and baseline.get(task, {}).get("scores", {}).get(d)
            cells.append(f"{score:.2f}" + (f" ({score - base:+.2f})" if base is not None and entry is not baseline else ""))
        return cells

    def cosines(entry: dict, name: str) -> list[str]:
        # Older records ("cosine") hold the test set's mean and min only, without per-text values.
        cos = entry.get(name) or (entry.get("cosine") if name == "cosine_reference" else None)
        if not cos:
            return ["–"] * 3
        worst = cos.get("worst")
        return [f"{cos['mean_cosine']:.4f}", f"{cos['min_cosine']:.4f}", f"{worst['kind']} ({worst['id']})" if worst else "–"]

    head = ["storage", "bits/weight (blocks)", "size on disk", "peak RSS (b)", "mean cos", "min cos", "worst text"]
    head += ["val mean cos", "val min cos", "val worst text"]
    head += [f"STS {d}" for d in dims] + [f"NDCG@10 {d}" for d in dims]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key in order:
        e = by_model[key]
        first = next(iter(e.values()))
        size, mem = e.get("size", {}), e.get("memory_docs128", {})
        row = [
            first["storage"].split(":")[0].removeprefix("recipe "),  # "recipe q4-mixed: 4-bit ..." -> "q4-mixed"
            f"{size['block_bits_per_weight']:.2f}" if size else "–",
            f"{size['size_mb']:.0f} MB" if size else "–",
            f"{mem['peak_rss_mb']:.0f} MB" if mem else "–",
        ] + cosines(e, "cosine_reference") + cosines(e, "cosine_validation") + scores(e, "sts") + scores(e, "retrieval")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="*", help="model folders; none with --table-only: every model in the file")
    parser.add_argument("--results", type=Path, default=HERE / "results" / f"precision-{platform.system().lower()}-{platform.machine()}.jsonl")
    parser.add_argument("--memory-scale", type=float, default=0.1, help="fraction of scenario b's 2,000 documents")
    parser.add_argument("--table-only", action="store_true", help="render the table from the results file, measure nothing")
    parser.add_argument("--measure", default=",".join(MEASUREMENTS), help=f"comma-separated subset of {', '.join(MEASUREMENTS)}")
    parser.add_argument("--again", action="store_true", help="measure even what the results file already has for these weights")
    args = parser.parse_args()
    only = tuple(args.measure.split(","))
    if unknown := set(only) - set(MEASUREMENTS):
        parser.error(f"unknown measurements {sorted(unknown)}; known: {', '.join(MEASUREMENTS)}")
    if not args.table_only:
        if not args.models:
            parser.error("give model folders to measure, or --table-only")
        run(args.models, args.results, args.memory_scale, only, args.again)
    print(table(args.models, args.results))


if __name__ == "__main__":
    main()
