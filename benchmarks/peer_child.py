"""A peer's benchmark child: sentence-transformers or llama.cpp, timed in a process that never imports
mlx_embedgemma (our import once changed how torch computes, and nothing of ours should be running beside a
peer). Run by path by the harness: `python peer_child.py SPEC`; prints one JSON record per line.
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # measure.py, peers.py, memory.py, by plain name

import measure  # noqa: E402
import peers  # noqa: E402

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
