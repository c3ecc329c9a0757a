"""What importing and using the package pulls in, checked in fresh interpreters.

The runtime must stay light: no torch, transformers, sentence-transformers, no CLI (click), no
converter and no benchmark harness just to load a model and embed.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

HEAVY = [
    "torch", "transformers", "sentence_transformers", "llama_cpp", "matplotlib", "click", "huggingface_hub",
    "safetensors", "PyInstaller", "mlx_lm",
    # The Rust tokenizer costs ~285 MB RSS for this vocabulary: only folders without tokenizer.model need it.
    "tokenizers",
    "mlx_embedgemma.convert", "mlx_embedgemma.cli", "mlx_embedgemma.benchmarks", "mlx_embedgemma.training",
    "mlx.optimizers",
    # The server, the integrations and the file index: their libraries load only when those are used.
    "starlette", "uvicorn", "fastapi", "httpx", "openai", "langchain_core", "llama_index", "pydantic", "sqlite3",
    "mlx_embedgemma.server", "mlx_embedgemma.integrations", "mlx_embedgemma.search", "watchdog", "mcp",
    # Used by `embed` and the converter: loaded when those run.
    "mlx_embedgemma.embed_stream", "mlx_embedgemma.durable", "mlx_embedgemma.check",
    # Ray Data (and the pyarrow it brings) only for `embed-dataset` and mlx_embedgemma.integrations.ray.
    "ray", "pyarrow", "mlx_embedgemma.integrations.ray", "mlx_embedgemma.integrations.ray_files",
]


def run_python(code: str, cwd: Path) -> dict:
    """Run ``code`` in a fresh interpreter; it prints one JSON object on its last line."""
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120, cwd=cwd
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_import_alone_is_cheap(tmp_path):
    seen = run_python(
        """
        import json, sys
        import mlx_embedgemma
        print(json.dumps(sorted(sys.modules)))
        """,
        tmp_path,
    )
    assert "mlx_embedgemma" in seen
    for name in HEAVY:
        assert name not in seen, f"`import mlx_embedgemma` imported {name}"
    # Importing the package stays cheap: MLX itself loads with the first model.
    assert "mlx.core" not in seen
    assert "mlx_embedgemma.loading" not in seen and "mlx_embedgemma.embedder" not in seen


def test_load_and_encode_import_nothing_heavy(tiny_f32, tmp_path):
    result = run_python(
        f"""
        import json, sys
        import mlx_embedgemma
        model = mlx_embedgemma.load({str(tiny_f32)!r})
        vector = model.encode_query("which planet is red?")
        rows = model.encode(["a", "b"])
        print(json.dumps({{"modules": sorted(sys.modules), "shape": list(rows.shape), "dim": len(vector)}}))
        """,
        tmp_path,
    )
    assert result["shape"] == [2, 64] and result["dim"] == 64  # it really loaded and embedded
    assert "mlx.core" in result["modules"]
    for name in HEAVY:
        assert name not in result["modules"], f"load + encode imported {name}"


def test_loading_an_mlx_community_folder_imports_nothing_heavy(tiny_source, tiny_q4, tmp_path):
    from test_interop import community_folder

    folder = community_folder(tiny_q4, tmp_path / "community", tiny_source)
    result = run_python(
        f"""
        import json, sys
        import mlx_embedgemma
        model = mlx_embedgemma.load({str(folder)!r})
        model.encode_query("which planet is red?")
        print(json.dumps({{"modules": sorted(sys.modules), "layout": model.config["layout"]}}))
        """,
        tmp_path,
    )
    assert result["layout"] == "mlx-community"
    for name in HEAVY:
        assert name not in result["modules"], f"loading an mlx-community folder imported {name}"


def test_the_library_side_of_embed_and_durable_writes_imports_nothing_heavy(tmp_path):
    """`embed`'s streaming and resume logic, and the durable-write helpers, serve apps too: no CLI, no tools."""
    seen = run_python(
        """
        import json, sys
        import mlx_embedgemma.embed_stream, mlx_embedgemma.durable
        print(json.dumps(sorted(sys.modules)))
        """,
        tmp_path,
    )
    for name in HEAVY:
        if name not in ("mlx_embedgemma.embed_stream", "mlx_embedgemma.durable"):
            assert name not in seen, f"importing embed_stream/durable imported {name}"


def test_the_search_package_loads_its_libraries_only_when_used(tmp_path):
    seen = run_python(
        """
        import json, sys
        from mlx_embedgemma.search import DEFAULT_EXTENSIONS  # what the CLI reads at import
        light = sorted(sys.modules)
        from mlx_embedgemma.search import SearchIndex  # the store: sqlite3 and the model, not watch or MCP
        print(json.dumps({"light": light, "store": sorted(sys.modules), "exts": list(DEFAULT_EXTENSIONS)}))
        """,
        tmp_path,
    )
    assert ".md" in seen["exts"]
    for name in ("sqlite3", "mlx.core", "watchdog", "mcp", "mlx_embedgemma.search.store"):
        assert name not in seen["light"], f"the extension list imported {name}"
    assert "sqlite3" in seen["store"] and "watchdog" not in seen["store"] and "mcp" not in seen["store"]
