"""Try a recipe that is not shipped: convert with it, record the conversion's cost and the folder's cosines.

    .venv/bin/python benchmarks/recipe_trial.py '{"name": "x-...", "bits": 4, "gptq": true,
        "overrides": [["embed_tokens", 8, 64]], "act_order": true}' [--measure size,cosine_validation] [--keep]

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
    args = parser.parse_args()

    spec = json.loads(args.recipe)
    spec["overrides"] = tuple(tuple(o) for o in spec.get("overrides", ()))
    recipe = recipes.Recipe(summary=spec.pop("summary", spec["name"]), **spec)
    if not recipe.name.startswith("x-") or recipe.name in recipes.RECIPES:
        raise SystemExit("name an experiment 'x-...', apart from the shipped recipes")
    recipes.RECIPES[recipe.name] = recipe
    out = Path(f"/tmp/rs-{recipe.name}")
    commit = git_commit()
    began, cpu = time.perf_counter(), cpu_seconds()
    converter.convert(args.source, out, recipe=recipe.name, force=True, log=lambda m: print(m, file=sys.stderr, flush=True))
    record = {
        "model": str(out), **quality.model_identity(mlx_embedgemma.load(out)), "measurement": "conversion",
        "seconds": round(time.perf_counter() - began, 1), "cpu_seconds": round(cpu_seconds() - cpu, 1),
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


if __name__ == "__main__":
    main()
