"""Reference embeddings of the validation set: sentence-transformers, float32, CPU.

    .venv/bin/python benchmarks/validation_reference.py [CHECKPOINT]   # default ~/.cache/embeddinggemma-300m

Mirrors how ../shared/reference was made: ``SentenceTransformer(path, device="cpu")`` in float32, each
prompt's texts encoded with ``prompt_name=...`` and ``normalize_embeddings=True`` (768 dims). Writes
``validation/reference.npy`` (row i belongs to line i of ``validation/texts.jsonl``) and
``validation/reference.json`` (versions, and the token count sentence-transformers saw per row, checked
against the builder's). Never imports mlx_embedgemma, so nothing of ours can leak into the reference.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent / "validation"


def main() -> None:
    import sentence_transformers
    import torch
    import transformers
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    source = Path(sys.argv[1] if len(sys.argv) > 1 else "~/.cache/embeddinggemma-300m").expanduser()
    rows = [json.loads(line) for line in (HERE / "texts.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()]
    model = SentenceTransformer(str(source), device="cpu", model_kwargs={"torch_dtype": torch.float32})
    model.eval()
    out = np.zeros((len(rows), model.get_sentence_embedding_dimension()), np.float32)
    lengths = [0] * len(rows)
    for name in sorted({r["prompt_name"] for r in rows}):
        index = [i for i, r in enumerate(rows) if r["prompt_name"] == name]
        for i in index:  # one at a time: no padding, and the token count of each
            text = rows[i]["text"]
            lengths[i] = len(model.tokenize([model.prompts[name] + text])["input_ids"][0])
            with torch.inference_mode():
                out[i] = model.encode([text], prompt_name=name, normalize_embeddings=True, convert_to_numpy=True)[0]
            print(f"{rows[i]['id']}: {lengths[i]} tokens", file=sys.stderr, flush=True)
    mismatched = [r["id"] for r, n in zip(rows, lengths) if r["n_tokens"] != n]
    np.save(HERE / "reference.npy", out)
    (HERE / "reference.json").write_text(json.dumps({
        "source": str(source), "dtype": "float32", "device": "cpu", "rows": len(rows),
        "sentence_transformers": sentence_transformers.__version__, "transformers": transformers.__version__,
        "torch": torch.__version__, "token_counts": lengths, "token_count_mismatches": mismatched,
    }, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {HERE / 'reference.npy'} ({len(rows)} rows); token-count mismatches: {mismatched or 'none'}", file=sys.stderr)


if __name__ == "__main__":
    main()
