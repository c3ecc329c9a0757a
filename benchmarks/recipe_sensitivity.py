"""Which matrices lose the most at 4 bits: one part of the network at a time, the rest float32.

    .venv/bin/python benchmarks/recipe_sensitivity.py [--texts id,id,...] [--study layers|kinds|late]
        [--results benchmarks/results/recipe-sensitivity-linux-x86_64.jsonl] [--source ~/.cache/embeddinggemma-300m]

Each experiment rounds the chosen matrices of the float32 source to nearest (``mx.quantize`` at 4 bits,
group 64, then dequantized: the values a 4-bit folder holds, float32 scales) and leaves everything else
in float32, including the embedding table and the Dense head; it then scores the chosen validation texts
(``validation/texts.jsonl``) against their sentence-transformers reference and appends one record with
every text's cosine. Studies: ``layers`` (each of the 24 blocks), ``kinds`` (each projection in every
block), ``late`` (attention and MLP of blocks 22 and 23 apart; all blocks at 4 bits with the last two or
three at 8). The default texts are the validation set's hardest for the old default: the repeated
words, a Hebrew and an Arabic long text, numbers, HTML boilerplate and a short query.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
KINDS = ATTENTION + ("gate_proj", "up_proj", "down_proj")
HARD = "repeat-word-ru,repeat-word-en,ui-he,numbers,html-shop,ui-ar,short-02"


def experiments(study: str, layers: int = 24) -> list[tuple[str, object]]:
    """(name, path -> (bits, group) or None for float32)."""
    in_layers = lambda p, ls: any(p.startswith(f"model.layers.{i}.") for i in ls)
    if study == "layers":
        return [(f"layer{i}", lambda p, i=i: (4, 64) if in_layers(p, [i]) else None) for i in range(layers)]
    if study == "kinds":
        return [(f"kind-{k}", lambda p, k=k: (4, 64) if p.endswith(k) else None) for k in KINDS]
    if study == "late":
        out = []
        for i in (layers - 2, layers - 1):
            out.append((f"layer{i}-attn", lambda p, i=i: (4, 64) if in_layers(p, [i]) and p.endswith(ATTENTION) else None))
            out.append((f"layer{i}-mlp", lambda p, i=i: (4, 64) if in_layers(p, [i]) and not p.endswith(ATTENTION) else None))
        out.append(("all4", lambda p: (4, 64)))
        for n in (2, 3):
            late = range(layers - n, layers)
            out.append((f"all4-but-last{n}-at-8", lambda p, late=late: (8, 64) if in_layers(p, late) else (4, 64)))
        return out
    raise ValueError(f"unknown study {study!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", default=HARD)
    parser.add_argument("--study", default="layers", choices=["layers", "kinds", "late"])
    parser.add_argument("--source", default="~/.cache/embeddinggemma-300m")
    parser.add_argument("--results", type=Path, default=HERE / "results" / f"recipe-sensitivity-{platform.system().lower()}-{platform.machine()}.jsonl")
    args = parser.parse_args()

    import mlx.core as mx

    from mlx_embedgemma import backend
    from mlx_embedgemma.benchmarks import precision
    from mlx_embedgemma.convert import converter
    from mlx_embedgemma.embedder import EmbeddingGemma

    rows, reference = precision.text_set("validation")
    wanted = args.texts.split(",")
    index = [i for i, r in enumerate(rows) if r["id"] in wanted]
    network, config, tokenizer, _ = converter.open_source(os.path.expanduser(args.source))
    plan = backend.choose(quantized=False, compute_dtype=mx.float32)
    linears = {p: m for p, m in network.named_modules() if p.startswith("model.layers.") and getattr(m, "weight", None) is not None and m.weight.ndim == 2}
    originals = {p: m.weight for p, m in linears.items()}

    def rounded(w, bits, group):
        return mx.dequantize(*mx.quantize(w, group_size=group, bits=bits), group_size=group, bits=bits)

    for name, choose in experiments(args.study, network.args.num_hidden_layers):
        start = time.time()
        for path, module in linears.items():
            spec = choose(path)
            module.weight = originals[path] if spec is None else rounded(originals[path], *spec)
        mx.eval([m.weight for m in linears.values()])
        replaced = backend.apply(plan, network)
        model = EmbeddingGemma(network, tokenizer, config, Path(args.source), mx.float32, plan)
        record = precision.per_text_cosine(lambda t, p: model.encode(t, prompt_name=p), [rows[i] for i in index], reference[index])
        backend.restore(network, replaced)
        print(name, record["mean_cosine"], record["min_cosine"], record["worst"]["id"], f"{time.time() - start:.0f}s", file=sys.stderr, flush=True)
        args.results.parent.mkdir(parents=True, exist_ok=True)
        with args.results.open("a", encoding="utf-8") as f:
            f.write(json.dumps({"study": args.study, "experiment": name, "set": "validation", "texts": wanted, **record,
                                "machine": f"{platform.system()} {platform.machine()}",
                                "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
