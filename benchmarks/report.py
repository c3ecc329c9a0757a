"""`mlx-embedgemma bench report`: Markdown tables and PNG plots from any set of bench result files.

Records are grouped by machine (device name, backend, core count) and runner; where one measurement
was recorded more than once, the newest record wins. Plots need matplotlib (`pip install
'mlx-embedgemma[bench]'`); the tables do not.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Iterable

DIMS = (768, 512, 256, 128)
REFERENCE_RUNNER = "sentence-transformers"


def read(files: Iterable[Path]) -> list[dict]:
    records = []
    for path in files:
        for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                raise ValueError(f"{path}, line {n}: not JSON; give files written by `mlx-embedgemma bench --output`") from None
            if isinstance(record, dict) and "kind" in record and "fingerprint" in record:
                records.append(record)
    return latest(records)


def machine(r: dict) -> str:
    f = r["fingerprint"]
    return f"{f['device_name']} ({f['backend']}, {f['cores']} cores)"


def who(r: dict) -> str:
    # Downstream costs do not depend on the model's weights.
    random = " (random weights)" if r["fingerprint"].get("random_weights") and r["kind"] != "downstream" else ""
    return f"{r['runner']} {r['variant']}".strip() + random


def _key(r: dict) -> tuple:
    return (machine(r), r["device"], who(r), r["kind"], r.get("dim"), r.get("doc_tokens"), r.get("batch"),
            r.get("scenario"), r.get("task"))


def latest(records: list[dict]) -> list[dict]:
    newest: dict[tuple, dict] = {}
    for r in records:
        k = _key(r)
        if k not in newest or r["fingerprint"]["date"] >= newest[k]["fingerprint"]["date"]:
            newest[k] = r
    return list(newest.values())


def _table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _by(records: list[dict], kind: str, **match) -> list[dict]:
    return [r for r in records if r["kind"] == kind and all(r.get(k) == v for k, v in match.items())]


def _dims(records: list[dict]) -> list[int]:
    present = {r.get("dim") for r in records}
    return [d for d in DIMS if d in present]


def _grid(records: list[dict], kind: str, row_key, cell, **match) -> tuple[list[str], list[list[str]]]:
    """One row per row_key, one column per dim."""
    chosen = _by(records, kind, **match)
    dims = _dims(chosen)
    rows: dict[tuple, dict[int, dict]] = defaultdict(dict)
    for r in chosen:
        rows[row_key(r)][r["dim"]] = r
    body = [list(k) + [cell(cells[d]) if d in cells else "–" for d in dims] for k, cells in sorted(rows.items())]
    return [str(d) for d in dims], body


def machines_table(records: list[dict]) -> str:
    seen = {}
    for r in records:
        f = r["fingerprint"]
        seen.setdefault((machine(r), r["device"], who(r)), [
            machine(r), r["device"], who(r), r.get("runner_version") or f["package"], f["mlx"], f["os"], f["python"],
            str(f.get("blas") or "–"), str(r.get("threads", f["threads"])), f["git_commit"] or "–", f["date"][:10],
        ])
    head = ["machine", "device", "runner", "runner version", "mlx", "OS", "python", "BLAS", "threads", "commit", "date"]
    return _table(head, [seen[k] for k in sorted(seen)])


def render(records: list[dict]) -> str:
    parts = ["# Benchmark results", "", "Rendered by `mlx-embedgemma bench report`. Each number comes from one "
             "`mlx-embedgemma bench` run; ratios compare runners measured in the same run.", ""]
    parts += ["## Machines and runners", "", machines_table(records), ""]

    dims, rows = _grid(records, "latency", lambda r: (machine(r), r["device"], who(r)),
                       lambda r: f"{r['p50_ms']:.1f} ({r['p95_ms']:.1f})")
    if rows:
        parts += ["## Single-query latency", "", "p50 (p95) in ms over ≥30 runs after warm-up, one ~16-token query.", "",
                  _table(["machine", "device", "runner"] + dims, rows), ""]

    dims, rows = _grid(records, "throughput", lambda r: (machine(r), r["device"], who(r), str(r["doc_tokens"]), str(r["batch"])),
                       lambda r: f"{r['texts_per_s']:.2f} ({r['tokens_per_s']:.0f})")
    if rows:
        rows.sort(key=lambda row: (row[0], row[1], row[2], int(row[3]), int(row[4])))
        parts += ["## Throughput", "", "texts/s (tokens/s) for documents of 128 and 512 tokens at batch 1, 8 and 32.", "",
                  _table(["machine", "device", "runner", "tokens", "batch"] + dims, rows), ""]

    comparison = peers_table(records)
    if comparison:
        parts += ["## Against the other ways to run the model", "",
                  "Same machine, device, texts and thread count; cosine to the sentence-transformers float32 reference "
                  "on `../shared/reference` (38 texts, 8 to 2,048 tokens). Ratios are to sentence-transformers in the same run.",
                  "", comparison, ""]

    dims, rows = _grid(records, "memory", lambda r: (machine(r), r["device"], who(r), f"{r['scenario']} ({r['texts']} texts)"),
                       lambda r: f"{r['peak_rss_mb']:.0f} / {r['mlx_peak_mb']:.0f} MB, {r['cold_start_s']:.2f} s")
    if rows:
        parts += ["## Memory and cold start", "", "Peak RSS of the whole process / MLX peak, and cold start (process start "
                  "to first embedding); a fresh process per cell.", "", _table(["machine", "device", "runner", "scenario"] + dims, rows), ""]

    imports = _by(records, "import")
    if imports:
        rows = [[machine(r), f"{r['import_ms']:.0f} ms", f"{r['rss_mb']:.0f} MB", f"{r['python_rss_mb']:.0f} MB", str(r["modules"])]
                for r in sorted(imports, key=machine)]
        parts += ["## Import", "", "`import mlx_embedgemma` in a fresh interpreter (best of a few): what an app pays "
                  "before loading a model.", "", _table(["machine", "import", "RSS after", "bare Python RSS", "modules added"], rows), ""]
    parts += downstream_section(records)
    dims, rows = _grid(records, "quality", lambda r: (who(r), r["task"], r["metric"]), lambda r: f"{r['score']:.2f}")
    if rows:
        parts += ["## Quality", "", "STS-B Spearman and AIA-BDE NDCG@10 (×100) on `../shared/eval` (see benchmarks/README.md).", "",
                  _table(["model", "task", "metric"] + dims, rows), ""]
    return "\n".join(parts)


def peers_table(records: list[dict]) -> str:
    groups: dict[tuple, dict[str, dict]] = defaultdict(dict)
    full = max((r["dim"] for r in records if r["kind"] == "latency"), default=DIMS[0])  # peers run at full size
    for r in records:
        if r.get("dim") == full and r["kind"] in ("latency", "accuracy", "process") or (
            r["kind"] == "throughput" and r.get("dim") == full and r["doc_tokens"] == 128 and r["batch"] == 32
        ):
            groups[(machine(r), r["device"])].setdefault(who(r), {})[r["kind"]] = r
    if not any(len(g) > 1 for g in groups.values()):
        return ""
    head = ["machine", "device", "runner", "mean / min cosine", "query p50 ms", "128-token docs, batch 32: texts/s",
            "× reference throughput", "query latency ÷ reference", "peak RSS (speed run)"]
    rows = []
    for (mach, device), runners in sorted(groups.items()):
        ref = next((v for k, v in runners.items() if k.startswith(REFERENCE_RUNNER)), {})
        for name, kinds in sorted(runners.items()):
            acc, lat, thr, proc = (kinds.get(k) for k in ("accuracy", "latency", "throughput", "process"))
            ratio = thr and ref.get("throughput") and thr["texts_per_s"] / ref["throughput"]["texts_per_s"]
            lat_ratio = lat and ref.get("latency") and lat["p50_ms"] / ref["latency"]["p50_ms"]
            rows.append([
                mach, device, name,
                f"{acc['mean_cosine']:.4f} / {acc['min_cosine']:.4f}" if acc else "–",
                f"{lat['p50_ms']:.1f}" if lat else "–",
                f"{thr['texts_per_s']:.2f}" if thr else "–",
                f"{ratio:.2f}×" if ratio else "–",
                f"{lat_ratio:.2f}" if lat_ratio else "–",
                f"{proc['peak_rss_mb']:.0f} MB" if proc else "–",
            ])
    return _table(head, rows)


def downstream_section(records: list[dict]) -> list[str]:
    chosen = _by(records, "downstream")
    if not chosen:
        return []
    rows = []
    for r in sorted(chosen, key=lambda r: (machine(r), -r["dim"])):
        b, size = r["bytes_per_vector"], r["index_mb"]
        rows.append([machine(r), str(r["dim"])] + [f"{b[k]:,} B / {size[k]:,.0f} MB" for k in ("float32", "float16", "int8", "binary")]
                    + [f"{r['search_p50_ms']:.2f} ({r['search_p95_ms']:.2f})"])
    n = chosen[0]["index_vectors_for_size"]
    head = ["machine", "dim", "float32", "float16", "int8", "binary", f"top-10 of {chosen[0]['search_vectors']:,}, ms p50 (p95)"]
    return ["## What the dimension changes downstream", "",
            f"Bytes per vector / index size for {n:,} vectors, and exact float32 top-10 search (numpy) over "
            f"{chosen[0]['search_vectors']:,} vectors.", "", _table(head, rows), ""]


def plots(records: list[dict], out: Path) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise RuntimeError("plots need matplotlib: pip install 'mlx-embedgemma[bench]' (or pass --no-plots)") from None

    def series(kind: str, value, **match) -> dict[str, dict[int, float]]:
        lines: dict[str, dict[int, float]] = defaultdict(dict)
        for r in _by(records, kind, **match):
            label = f"{r['fingerprint']['device_name']} {r['device']} · {who(r)}" + (f" · {r['scenario']}" if kind == "memory" else "")
            lines[label][r["dim"]] = value(r)
        return lines

    figures = {
        "latency.png": ("Single-query latency, p50", "ms", series("latency", lambda r: r["p50_ms"])),
        "throughput.png": ("Throughput, 128-token documents, batch 32", "texts/s",
                           series("throughput", lambda r: r["texts_per_s"], doc_tokens=128, batch=32)),
        "memory.png": ("Peak RSS of a fresh process", "MB", series("memory", lambda r: r["peak_rss_mb"])),
        "quality.png": ("Quality on ../shared/eval", "score ×100",
                        {f"{k} · {t}": v for t in ("sts", "retrieval") for k, v in series("quality", lambda r: r["score"], task=t).items()}),
    }
    written = []
    out.mkdir(parents=True, exist_ok=True)
    for name, (title, unit, lines) in figures.items():
        if not lines:
            continue
        fig, ax = plt.subplots(figsize=(7, 4.2))
        for label, points in sorted(lines.items()):
            dims = [d for d in DIMS if d in points]
            ax.plot([str(d) for d in dims], [points[d] for d in dims], marker="o", label=label)
        ax.set(title=title, xlabel="Matryoshka dimension", ylabel=unit)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        written.append(out / name)
    return written


def write(files: list[Path], out: Path | None, with_plots: bool = True) -> str:
    records = read(files)
    if not records:
        raise ValueError("no benchmark records in " + ", ".join(map(str, files)))
    text = render(records)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        images = plots(records, out) if with_plots else []
        if images:
            text += "\n## Plots\n\n" + "\n".join(f"![{p.stem}]({p.name})" for p in images) + "\n"
        (out / "README.md").write_text(text, encoding="utf-8")
    return text
