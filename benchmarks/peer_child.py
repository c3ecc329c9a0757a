"""A peer's benchmark child: sentence-transformers or llama.cpp, timed in a process that never imports
mlx_embedgemma (our import once changed how torch computes, and nothing of ours should be running beside a
peer). Run by path by the harness: `python peer_child.py SPEC`; prints one JSON record per line.
"""

import importlib.util
import json
import sys
from pathlib import Path


def load(name: str):
    """A sibling file as a top-level module, by path: putting this folder on sys.path would let its files
    shadow the peers' own imports (transformers imports a `kernels` package, say)."""
    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


memory, measure, peers = load("memory"), load("measure"), load("peers")

if __name__ == "__main__":
    spec = json.loads(sys.argv[1])
    spec.pop("task"), spec.pop("spawned_at")
    job = measure.Job(**spec)
    for record in measure.measure_speed(job, peers.make(job)):
        print(json.dumps(record), flush=True)
    leaked = sorted(m for m in sys.modules if m == "mlx_embedgemma" or m.startswith(("mlx_embedgemma.", "mlx.")))
    print(json.dumps({"kind": "isolation", "imported": leaked}), flush=True)
    if leaked:
        sys.exit(f"the peer's process imported {leaked}")
