"""Importing and running mlx_embedgemma leaves other libraries computing as they did (issue: our old
OpenBLAS preload, loaded RTLD_GLOBAL, rebound torch's BLAS calls and slowed torch five-fold).

Checked by mechanism, not by timing (this machine is shared): in one process, torch's matmul-heavy
workload runs before our import, after it, and after loading and running a model; the BLAS and OpenMP
symbols the process resolves globally, torch's thread count and its results must not change. On the
timing side, `mlx-embedgemma bench` times every peer in a process that never imports this package
(benchmarks/peer_child.py).
"""

import json
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("torch")

PROBE = """
import ctypes, json, sys
import numpy as np
import torch

SYMBOLS = ["cblas_sgemm", "sgemm_", "dgemm_", "cblas_dgemm", "openblas_set_num_threads", "omp_get_max_threads",
           "mkl_set_num_threads", "goto_set_num_threads"]
process = ctypes.CDLL(None)
libc = ctypes.CDLL(None)


class DlInfo(ctypes.Structure):
    _fields_ = [("fname", ctypes.c_char_p), ("fbase", ctypes.c_void_p), ("sname", ctypes.c_char_p), ("saddr", ctypes.c_void_p)]


def resolved():
    out = {}
    for name in SYMBOLS:
        try:
            addr = ctypes.cast(getattr(process, name), ctypes.c_void_p).value
        except AttributeError:
            out[name] = None
            continue
        info = DlInfo()
        libc.dladdr(ctypes.c_void_p(addr), ctypes.byref(info))
        out[name] = (info.fname or b"?").decode()
    return out


def workload():
    torch.manual_seed(0)
    a, b = torch.randn(384, 768), torch.randn(768, 1152)
    x = torch.randn(2, 64, 768)
    layer = torch.nn.TransformerEncoderLayer(768, 4, 1152, batch_first=True).eval()
    with torch.no_grad():
        return [float((a @ b).sum()), float(layer(x).sum())]


def state():
    return {"symbols": resolved(), "threads": torch.get_num_threads(), "interop": torch.get_num_interop_threads(),
            "config": torch.__config__.parallel_info(), "results": workload()}


before = state()
import mlx_embedgemma
after_import = state()
model = mlx_embedgemma.load(sys.argv[1])
model.encode(["one text", "and another, longer text"])
after_use = state()
print(json.dumps({"before": before, "after_import": after_import, "after_use": after_use}))
"""

# The other order: our package loaded and used before torch is imported at all.
OURS_FIRST = PROBE.replace("import torch\n", "", 1).replace(
    "before = state()", "import mlx_embedgemma\nmlx_embedgemma.load(sys.argv[1]).encode(['x'])\nimport torch\nbefore = state()")
CLEAN = PROBE.split("before = state()")[0] + "print(json.dumps(state()))\n"


def run(code, tmp_path, *args):
    script = tmp_path / "probe.py"
    script.write_text(textwrap.dedent(code), encoding="utf-8")
    proc = subprocess.run([sys.executable, str(script), *map(str, args)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_torch_computes_the_same_beside_us(tiny_q4, tmp_path):
    seen = run(PROBE, tmp_path, tiny_q4)
    before = seen["before"]
    for stage in ("after_import", "after_use"):
        now = seen[stage]
        assert now["symbols"] == before["symbols"], f"{stage}: the process now resolves BLAS/OpenMP symbols elsewhere"
        assert (now["threads"], now["interop"], now["config"]) == (before["threads"], before["interop"], before["config"])
        assert now["results"] == before["results"], f"{stage}: torch's results changed"


def test_torch_imported_after_us_computes_as_in_a_clean_process(tiny_q4, tmp_path):
    clean = run(CLEAN, tmp_path)
    ours_first = run(OURS_FIRST, tmp_path, tiny_q4)["before"]
    assert ours_first["symbols"] == clean["symbols"]
    assert (ours_first["threads"], ours_first["config"], ours_first["results"]) == (clean["threads"], clean["config"], clean["results"])
