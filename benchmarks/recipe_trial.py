"""Try an ad-hoc recipe: convert with it, record size, conversion time and validation cosines, delete the folder.

    .venv/bin/python benchmarks/recipe_trial.py '{"name": "x-...", "bits": 4, "gptq": true, "overrides": [["embed_tokens", 8, 64]], ...}'

The JSON holds convert.recipes.Recipe's fields (plus optional "measure": list of precision.py
measurements, default size and cosine_validation; "keep": true keeps the folder in /tmp/rs-NAME).
Records go to benchmarks/results/precision-linux-x86_64.jsonl (a "conversion" record with wall and CPU
seconds and the recipe). The "x-" rows of README "Recipes" were made with this script.
"""
"""Experiment driver: convert with an ad-hoc recipe, score on the validation set, delete the folder."""
import json, os, shutil, sys, time
sys.argv, args = sys.argv[:1], sys.argv[1:]
from mlx_embedgemma.convert import recipes, converter
from mlx_embedgemma.benchmarks import precision
import mlx_embedgemma
from pathlib import Path

spec = json.loads(args[0])
name = spec.pop("name")
measures = spec.pop("measure", ["size", "cosine_validation"])
keep = spec.pop("keep", False)
spec["overrides"] = tuple(tuple(o) for o in spec.get("overrides", ()))
r = recipes.Recipe(name=name, summary=spec.pop("summary", name), **spec)
recipes.RECIPES[name] = r
out = Path(f"/tmp/rs-{name}")
import resource
t = time.time()
cpu0 = resource.getrusage(resource.RUSAGE_SELF)
converter.convert(os.path.expanduser("~/.cache/embeddinggemma-300m"), out, recipe=name, force=True, log=lambda m: print(m, file=sys.stderr, flush=True))
convert_s = time.time() - t
cpu1 = resource.getrusage(resource.RUSAGE_SELF)
convert_cpu_s = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
print(f"convert_cpu_s {convert_cpu_s:.1f}", file=sys.stderr, flush=True)
print(f"convert_s {convert_s:.1f}", file=sys.stderr, flush=True)
results = precision.HERE / "results" / "precision-linux-x86_64.jsonl"
from mlx_embedgemma.benchmarks import quality
import platform
from datetime import datetime, timezone
ident = quality.model_identity(mlx_embedgemma.load(str(out)))
with results.open("a", encoding="utf-8") as f:
    f.write(json.dumps({"model": str(out), **ident, "measurement": "conversion", "seconds": round(convert_s, 1), "cpu_seconds": round(convert_cpu_s, 1),
        "note": "wall seconds include time this process was paused (SIGSTOP) while another job measured; cpu_seconds do not",
        "recipe_spec": {**{k: v for k, v in spec.items()}, "overrides": [list(o) for o in r.overrides], "bits": r.bits, "group_size": r.group_size, "gptq": r.gptq},
        "machine": f"{platform.system()} {platform.machine()}", "threads": 1,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}) + "\n")
precision.run([str(out)], results, 0.1, tuple(measures))
for rec in [x for x in precision.read_results(results) if x['weights_sha256'] == ident['weights_sha256'] and x['measurement'] in measures]:
    if rec["measurement"].startswith("cosine"):
        c = rec["cosines"]
        print(name, rec["measurement"], rec["mean_cosine"], rec["min_cosine"], rec["worst"]["id"], sorted(c.items(), key=lambda kv: kv[1])[:6])
    else:
        print(name, rec)
if not keep:
    shutil.rmtree(out)
