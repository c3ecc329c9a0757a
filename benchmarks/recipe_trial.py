"""Try a recipe that is not shipped: convert with it, record the conversion's cost and the folder's cosines.

    .venv/bin/python benchmarks/recipe_trial.py '{"name": "x-...", "bits": 4, "gptq": true,
        "overrides": [["embed_tokens", 8, 64]], "act_order": true}' [--measure size,cosine_validation] [--keep] \
        [--statistics DIR]

The JSON holds ``convert.recipes.Recipe``'s fields. The folder is written to /tmp/rs-NAME and removed
afterwards unless --keep. Records go to benchmarks/results/precision-linux-x86_64.jsonl: one
"conversion" record (wall and CPU seconds, the recipe, the commit) and precision.py's measurements of
the folder (by default its size and the validation set's per-text cosines). The "x-" rows of README's
"Recipes" come from this script.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import shutil
import sys
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

import mlx_embedgemma
from mlx_embedgemma.benchmarks import precision, quality
from mlx_embedgemma.benchmarks.fingerprint import git_commit
from mlx_embedgemma.convert import converter, recipes

SOURCE = Path("~/.cache/embeddinggemma-300m").expanduser()


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe", help="a JSON object of Recipe fields, with a name starting 'x-'")
    parser.add_argument("--source", type=Path, default=SOURCE)
    parser.add_argument("--measure", default="size,cosine_validation", help=f"of {', '.join(precision.MEASUREMENTS)}")
    parser.add_argument("--results", type=Path, default=precision.HERE / "results" / "precision-linux-x86_64.jsonl")
    parser.add_argument("--keep", action="store_true", help="keep the converted folder")
    parser.add_argument("--statistics", type=Path, default=None, metavar="DIR",
                        help="keep GPTQ's calibration statistics in DIR and reuse them when a later trial asks for the same "
                             "calibration (file, tokens, sampling): trials that differ only after calibration then skip it; "
                             "their conversion record says so and its time is not the recipe's")
    args = parser.parse_args()

    spec = json.loads(args.recipe)
    spec["overrides"] = tuple(tuple(o) for o in spec.get("overrides", ()))
    recipe = recipes.Recipe(summary=spec.pop("summary", spec["name"]), **spec)
    if not recipe.name.startswith("x-") or recipe.name in recipes.RECIPES:
        raise SystemExit("name an experiment 'x-...', apart from the shipped recipes")
    recipes.RECIPES[recipe.name] = recipe
    out = Path(f"/tmp/rs-{recipe.name}")
    commit = git_commit()
    reused = args.statistics and reuse_statistics(args.statistics, recipe)
    began, cpu = time.perf_counter(), cpu_seconds()
    converter.convert(args.source, out, recipe=recipe.name, force=True, log=lambda m: print(m, file=sys.stderr, flush=True))
    record = {
        "model": str(out), **quality.model_identity(mlx_embedgemma.load(out)), "measurement": "conversion",
        "seconds": round(time.perf_counter() - began, 1), "cpu_seconds": round(cpu_seconds() - cpu, 1),
        "calibration_reused": bool(reused),
        "recipe_spec": {**asdict(recipe), "overrides": [list(o) for o in recipe.overrides]},
        "git_commit": commit, "machine": f"{platform.system()} {platform.machine()}",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    print(f"conversion: {record['seconds']} s wall, {record['cpu_seconds']} s CPU", file=sys.stderr)
    with args.results.open("a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
    measures = tuple(args.measure.split(","))
    precision.run([str(out)], args.results, 0.1, measures)
    for r in precision.read_results(args.results):
        if r.get("weights_sha256") == record["weights_sha256"] and r["measurement"] in measures:
            if "cosines" in r:
                print(recipe.name, r["measurement"], r["mean_cosine"], r["min_cosine"], r["worst"]["id"])
            else:
                print(recipe.name, r["measurement"], {k: v for k, v in r.items() if k.endswith(("_mb", "per_weight"))})
    if not args.keep:
        shutil.rmtree(out)


def reuse_statistics(folder: Path, recipe: recipes.Recipe) -> bool:
    """Wrap the converter's calibration so its statistics are saved to, or read from, ``folder``; True if read."""
    # Keyed by the calibration settings only: clear the folder after changing the network or calibration code.
    key = f"{recipe.calibration}-{recipe.calibration_tokens}-{recipe.sample_tokens}"
    path = folder / f"{key}.npz"
    collect = converter.collect_hessians

    def cached(*args, **kwargs):
        if path.exists():
            with np.load(path) as saved:
                return {name: saved[name] for name in saved.files}
        hessians = collect(*args, **kwargs)
        folder.mkdir(parents=True, exist_ok=True)
        np.savez(path, **hessians)
        return hessians

    converter.collect_hessians = cached
    return path.exists()


if __name__ == "__main__":
    main()
