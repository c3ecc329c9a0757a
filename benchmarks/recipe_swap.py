"""Recipe experiments that change one part of a converted folder, measured in minutes instead of a conversion.

    .venv/bin/python benchmarks/recipe_swap.py BASE NAME --float F32 [--table BITS:GROUP]
        [--take DONOR REGEX ...] [--gptq REGEX=BITS:GROUP ...] [--damp 0.01] [--refit 3]
        [--statistics calibration-wide.jsonl-512-None.npz] [--sets validation,reference]

A conversion of the default costs 8.5 minutes on a 2-core x86 CPU, most of it the calibration pass. These
experiments start from a converted folder BASE and change only what they name, in a copy /tmp/swap-NAME:

- ``--table 6:64`` re-quantizes the embedding table of the float32 folder F32 (``convert --no-quantize``)
  to nearest at that width and group, as the converter does.
- ``--take DONOR REGEX`` takes every module whose path matches from another converted folder, with its
  ``"quantization"`` entry (e.g. the ``--recipe q8`` folder: what 8 bits there would buy).
- ``--gptq 'self_attn\\.o_proj=4:32'`` re-rounds the matching Linear layers of F32 with GPTQ in act-order
  and ``--refit`` rounds of range refit (``convert/gptq.py``, as ``gptq.apply``), on calibration
  statistics saved by ``recipe_trial.py --statistics``; ``--damp`` is GPTQ's dampening.

Every text's cosine on each set goes to ``benchmarks/results/recipe-swap-<os>-<arch>.jsonl`` (one record
per set, with the folder's bits per weight over the blocks, BASE's weights, the experiment and the
commit); the copy is removed afterwards unless ``--keep``.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import shutil
from datetime import datetime, timezone
from pathlib import Path

import mlx.core as mx
import numpy as np

import mlx_embedgemma
from mlx_embedgemma import precision as storage
from mlx_embedgemma.benchmarks import precision, quality
from mlx_embedgemma.benchmarks.fingerprint import git_commit, kernel, model_hash
from mlx_embedgemma.convert import gptq

HERE = Path(__file__).resolve().parent
WEIGHTS = "model.safetensors"
TABLE = "model.embed_tokens"


def width(spec: str) -> tuple[int, int]:
    bits, group = spec.split(":")
    return int(bits), int(group)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("base", type=Path)
    parser.add_argument("name")
    parser.add_argument("--float", dest="float_folder", type=Path, required=True, help="the float32 folder of the same model")
    parser.add_argument("--table", type=width, metavar="BITS:GROUP")
    parser.add_argument("--take", nargs=2, action="append", default=[], metavar=("DONOR", "REGEX"))
    parser.add_argument("--gptq", action="append", default=[], metavar="REGEX=BITS:GROUP")
    parser.add_argument("--statistics", type=Path, default=Path("/tmp/stats/calibration-wide.jsonl-512-None.npz"))
    parser.add_argument("--damp", type=float, default=0.01)
    parser.add_argument("--refit", type=int, default=3)
    parser.add_argument("--sets", default="validation,reference")
    parser.add_argument("--results", type=Path, default=HERE / "results" / f"recipe-swap-{platform.system().lower()}-{platform.machine()}.jsonl")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()

    out = Path(f"/tmp/swap-{args.name}")
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(args.base, out)
    weights = mx.load(str(args.base / WEIGHTS))
    config = json.loads((args.base / "config.json").read_text(encoding="utf-8"))
    floats = mx.load(str(args.float_folder / WEIGHTS))
    quantization = config["quantization"]

    if args.table:
        bits, group = args.table
        packed, scales, biases = mx.quantize(floats[f"{TABLE}.weight"], group_size=group, bits=bits)
        weights |= {f"{TABLE}.weight": packed, f"{TABLE}.scales": scales.astype(storage.SCALE_DTYPE),
                    f"{TABLE}.biases": biases.astype(storage.SCALE_DTYPE)}
        quantization[TABLE] = {"bits": bits, "group_size": group, "mode": "affine"}
    for donor, pattern in args.take:
        donor = Path(donor)
        theirs = mx.load(str(donor / WEIGHTS))
        their_quantization = json.loads((donor / "config.json").read_text(encoding="utf-8"))["quantization"]
        modules = {k.rsplit(".", 1)[0] for k in theirs if k.endswith(".scales") and re.search(pattern, k)}
        if not modules:
            raise SystemExit(f"no quantized module of {donor} matches {pattern!r}")
        ours = lambda name: name.rsplit(".", 1)[0] in modules
        weights = {k: v for k, v in weights.items() if not ours(k)} | {k: v for k, v in theirs.items() if ours(k)}
        for module in modules:
            quantization[module] = their_quantization.get(module, {k: their_quantization[k] for k in ("bits", "group_size", "mode")})
    if args.gptq:
        with np.load(args.statistics) as saved:
            hessians = {name: saved[name] for name in saved.files}
        for rule in args.gptq:
            pattern, spec = rule.rsplit("=", 1)
            bits, group = width(spec)
            for path in [p for p in hessians if re.search(pattern, p)]:
                weight = np.array(floats[f"{path}.weight"], dtype=np.float64)
                codes, scales, biases = gptq.round_layer(weight, hessians[path], bits, group, act_order=True,
                                                         refit_rounds=args.refit, damp=args.damp)
                weights |= {f"{path}.weight": mx.array(codes), f"{path}.scales": mx.array(scales), f"{path}.biases": mx.array(biases)}
                quantization[path] = {"bits": bits, "group_size": group, "mode": "affine"}
    mx.save_safetensors(str(out / WEIGHTS), weights, metadata={"format": "mlx"})
    (out / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")

    base_id = model_hash(args.base)
    model = mlx_embedgemma.load(out)
    experiment = {"table": args.table, "take": args.take, "gptq": args.gptq, "damp": args.damp, "refit": args.refit}
    for name in args.sets.split(","):
        record = {
            "experiment": args.name, "base_weights": base_id, **quality.model_identity(model),
            "block_bits_per_weight": round(precision.block_bits_per_weight(model), 3), **experiment,
            "kernel": kernel(model.plan), **precision.measure_text_set(model, name),
            "git_commit": git_commit(), "machine": f"{platform.system()} {platform.machine()}",
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        print(f"{args.name} {name}: mean {record['mean_cosine']} min {record['min_cosine']} ({record['worst']['id']})", flush=True)
        with args.results.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
    if not args.keep:
        shutil.rmtree(out)


if __name__ == "__main__":
    main()
