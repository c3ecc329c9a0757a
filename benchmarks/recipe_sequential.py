"""GPTQ block by block: which inputs its statistics come from, measured on held-out text after every block.

    .venv/bin/python benchmarks/recipe_sequential.py MODE [--damp-target 0.01] [--blocks 6] [--write FOLDER]

The converter (``q4-mixed``) takes every layer's statistics from the float network in one pass. Two
alternatives quantize the blocks in order and run the calibration text through the quantized ones:

- ``float``: statistics H = XᵀX of the float network's inputs X, as the converter (the baseline here;
  with every block and ``--write`` it gives the shipped recipe's folder).
- ``sequential``: H̃ = X̃ᵀX̃ of the inputs X̃ that the quantized blocks below pass up (GPTQ's reference code).
- ``asymmetric``: H̃, and as target the weights V that best map the quantized inputs onto the float network's
  outputs: min ‖W X − V X̃‖ gives V = W + W D H̃⁻¹ with D = (X − X̃)ᵀX̃ (the least-squares form of GPTAQ's
  asymmetric calibration); GPTQ then rounds V under H̃, which minimises ‖W X − V̂ X̃‖ (the two errors are
  orthogonal). ``--damp-target`` λ regularises the solve: H̃ + λ·mean(diag H̃)·I.

Each block is rounded as the default recipe rounds it (its widths and groups, act-order, 3 refit rounds),
then its quantized version (float activations) carries the quantized path on. After every block, the
validation set's 60 texts (cut at 512 tokens, as the calibration) are compared along both paths: the
cosine of their mean final-normed hidden states, and the token-wise relative error. One record per run
goes to ``benchmarks/results/recipe-sequential-<os>-<arch>.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten, tree_unflatten

from mlx_embedgemma import backend, native
from mlx_embedgemma import precision as storage
from mlx_embedgemma.benchmarks import precision
from mlx_embedgemma.benchmarks.fingerprint import git_commit
from mlx_embedgemma.convert import converter, gptq, recipes
from mlx_embedgemma.convert.calibration import CALIBRATION_FILE, Tap, calibration_texts, token_ids
from mlx_embedgemma.convert.output import atomic_folder
from mlx_embedgemma.embedder import EmbeddingGemma
from mlx_embedgemma.native_layers import BLOCK_LINEARS, NativeAttend, NativeBlock, NativeLinear, _Weights

HERE = Path(__file__).resolve().parent
SOURCE = Path("~/.cache/embeddinggemma-300m").expanduser()
SHARED_INPUT = {"self_attn.k_proj": "self_attn.q_proj", "self_attn.v_proj": "self_attn.q_proj", "mlp.up_proj": "mlp.gate_proj"}
MODES = ("float", "sequential", "asymmetric")


class BlockStatistics:
    """Per distinct input of a block: XᵀX (float path), X̃ᵀX̃ and, if asked, (X − X̃)ᵀX̃ (quantized path), in float64."""

    def __init__(self, asymmetric: bool):
        self.asymmetric, self.phase, self.float_rows = asymmetric, None, {}
        self.XX, self.QQ, self.D = {}, {}, {}

    def tap(self, name: str, x: mx.array) -> None:
        """A Linear layer's input; layers fed the same input as another (SHARED_INPUT) add nothing."""
        if name in SHARED_INPUT or not self.phase:
            return
        rows = np.asarray(x.reshape(-1, x.shape[-1]).astype(mx.float32))

        def acc(sums, value):
            sums[name] = sums[name] + value if name in sums else value.astype(np.float64)

        if self.phase == "float":
            self.float_rows[name] = rows
            acc(self.XX, rows.T @ rows)
        else:
            acc(self.QQ, rows.T @ rows)
            if self.asymmetric:
                acc(self.D, (self.float_rows[name] - rows).T @ rows)


def held_out_error(network, hf: list[mx.array], hq: list[mx.array]) -> dict:
    cosines, relative = [], []
    for a, b in zip(hf, hq):
        a, b = network.model.norm(a)[0], network.model.norm(b)[0]
        pa, pb = np.array(a.mean(axis=0), np.float64), np.array(b.mean(axis=0), np.float64)
        cosines.append(pa @ pb / np.linalg.norm(pa) / np.linalg.norm(pb))
        relative.append(float(mx.sqrt(((a - b) ** 2).sum() / (a * a).sum())))
    cosines = np.array(cosines)
    return {"pooled_1_minus_cos_mean": float(1 - cosines.mean()), "pooled_1_minus_cos_max": float(1 - cosines.min()),
            "token_relative_error": float(np.mean(relative))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=MODES)
    parser.add_argument("--damp-target", type=float, default=0.01)
    parser.add_argument("--blocks", type=int, default=None, help="stop after this many blocks (default: all)")
    parser.add_argument("--write", type=Path, help="write the quantized model folder here (needs every block)")
    parser.add_argument("--source", type=Path, default=SOURCE)
    parser.add_argument("--results", type=Path, default=HERE / "results" / f"recipe-sequential-{platform.system().lower()}-{platform.machine()}.jsonl")
    args = parser.parse_args()
    began = time.perf_counter()
    recipe = recipes.get(recipes.DEFAULT_RECIPE)
    network, config, tokenizer, _ = converter.open_source(args.source)
    eps = network.args.rms_norm_eps
    config["recipe"], config["quantization"] = recipe.name, recipe.quantization(network)
    widths = config["quantization"]
    blocks = network.model.layers[: args.blocks]
    if args.write and len(blocks) != len(network.model.layers):
        parser.error("--write needs every block")
    model = EmbeddingGemma(network, tokenizer, config, args.source, mx.float32, backend.choose(False, mx.float32, fuse_blocks=False))
    calibration = token_ids(model, calibration_texts(None, CALIBRATION_FILE.with_name(recipe.calibration)), recipe.calibration_tokens)
    rows, _ = precision.text_set("validation")
    held = token_ids(model, [(r["prompt_name"], r["text"]) for r in rows], recipe.calibration_tokens)
    texts = calibration + held

    # Both paths start at the embedding: the float table, and the table rounded as the recipe stores it.
    table, scale = network.model.embed_tokens.weight, mx.array(network.args.hidden_size**0.5)
    tw = widths.get("model.embed_tokens", widths)
    hf, hq = [], []
    for ids in texts:
        rows_f = table[mx.array(ids)]
        rows_q = mx.dequantize(*mx.quantize(rows_f, tw["group_size"], tw["bits"]), group_size=tw["group_size"], bits=tw["bits"])
        hf.append((rows_f * scale)[None])
        hq.append((rows_q * scale)[None])
    valid = [mx.ones((1, len(ids)), dtype=mx.bool_) for ids in texts]
    rounded, per_block = {}, []
    for i, block in enumerate(blocks):
        stats = BlockStatistics(args.mode == "asymmetric")
        linears = {n: m for n, m in block.named_modules() if n in BLOCK_LINEARS}
        attend = block.self_attn.attend
        block.update_modules(tree_unflatten([(n, Tap(NativeLinear.from_module(m), lambda x, n=n: stats.tap(n, x))) for n, m in linears.items()]))
        block.self_attn.attend = NativeAttend(attend)
        for t in range(len(texts)):
            stats.phase = "float" if t < len(calibration) else None
            out = block(hf[t], valid[t])
            mx.eval(out)
            if stats.phase and args.mode != "float":
                stats.phase = "quantized"
                mx.eval(block(hq[t], valid[t]))
            hf[t] = out
        block.update_modules(tree_unflatten(list(linears.items())))
        block.self_attn.attend = attend
        quantized = {}
        for name in BLOCK_LINEARS:
            source = SHARED_INPUT.get(name, name)
            H = stats.XX[source] if args.mode == "float" else stats.QQ[source]
            W = np.array(linears[name].weight, np.float64)
            if args.mode == "asymmetric":
                damped = H + args.damp_target * np.mean(np.diag(H)) * np.eye(len(H))
                W = W + np.linalg.solve(damped, (W @ stats.D[source]).T).T
            width = widths.get(f"model.layers.{i}.{name}", widths)
            codes, scales, biases = gptq.round_layer(W, H, width["bits"], width["group_size"], act_order=recipe.act_order,
                                                     refit_rounds=recipe.refit)
            rounded[f"model.layers.{i}.{name}"] = codes, scales, biases
            quantized[name] = NativeLinear(_Weights(native.AFFINE, codes, scales.view(np.uint16), biases.view(np.uint16), None,
                                                    width["group_size"], width["bits"], W.shape[0], W.shape[1]))
        step = NativeBlock(block, quantized, eps, activations=32)
        for t in range(len(texts)):
            hq[t] = step(hq[t], valid[t])
            mx.eval(hq[t])
        per_block.append(held_out_error(network, hf[len(calibration):], hq[len(calibration):]))
        print(f"block {i}: {per_block[-1]} ({time.perf_counter() - began:.0f} s)", flush=True)

    record = {
        "measurement": "sequential_gptq", "mode": args.mode, "damp_target": args.damp_target if args.mode == "asymmetric" else None,
        "recipe": recipe.name, "calibration": recipe.calibration, "calibration_tokens": recipe.calibration_tokens,
        "held_out": f"validation set, {len(held)} texts cut at {recipe.calibration_tokens} tokens",
        "blocks": per_block, "seconds": round(time.perf_counter() - began, 1),
        "git_commit": git_commit(), "machine": f"{platform.system()} {platform.machine()}",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if args.write:
        storage.quantize(network, widths)
        for path, module in network.named_modules():
            if path in rounded:
                module.weight, module.scales, module.biases = (mx.array(a) for a in rounded[path])
        mx.eval(network.parameters())
        with atomic_folder(args.write, force=True) as tmp:
            converter.write_folder(tmp, config, dict(tree_flatten(network.parameters())), tokenizer.path)
        record["model"] = str(args.write)
    with args.results.open("a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
