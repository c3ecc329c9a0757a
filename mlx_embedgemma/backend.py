"""The backend plan: how this process runs the network on this device, decided once, at ``load()``.

One place decides, per platform and device, which matmul, attention and activation kernels run, where
the weights live (read in place from the memory-mapped file, or resident), how many tokens one forward
pass takes, how many threads compute, and how MLX's buffer cache is kept bounded; the plan records why.
``model.py`` stays plain MLX: the plan swaps in the modules it chose (``native_layers.py``).

What was measured, and where (benchmarks/results/, see benchmarks/README.md):
- Linux x86-64 CPU: MLX's CPU backend has no fast quantized matmul, runs transcendental functions and
  attention in scalar loops, and its wheel links the reference BLAS; the native kernels replace all of
  them, one call per encoder block, since a round trip between MLX and the kernels per operation cost
  about as much as the matmuls of a query (records: bench-linux-x86_64-xeon-2core*.jsonl,
  kernels-linux-x86_64.jsonl).
- CUDA (H200, random weights): MLX's quantized kernels are slower than dense float32 ones for batches
  (bench-linux-cuda-h200-random-weights.jsonl), so quantized layers are dequantized once at load.
- Not measured here: Metal, and the CPU of a Mac, where MLX's elementwise ops and matmuls go through
  Accelerate. Those choices are reasoned, labelled ``unverified`` in ``reasons``, and
  ``mlx-embedgemma bench --kernels native,mlx`` measures both plans side by side to settle them.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys
import threading
from dataclasses import dataclass, field

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_unflatten

from . import native
from .model import Attend, TransformerBlock

ENV_THREADS = "MLX_EMBEDGEMMA_THREADS"
# "native" lets the plan choose the activations of the quantized projections; "native-int8", "native-int16"
# and "native-float32" fix them (for measuring the alternatives side by side: bench --kernels).
KERNEL_CHOICES = ("auto", "native", "native-int8", "native-int16", "native-float32", "mlx")
ACTIVATIONS = {"native-int8": 8, "native-int16": 16, "native-float32": 32}
# MLX's device state (streams, buffer cache, allocator) is process-wide: one forward pass at a time per
# process, whichever model object runs it.
FORWARD_LOCK = threading.Lock()
# GPU buffers are costly to allocate, so the GPU plan keeps freed ones for reuse, up to this much.
GPU_CACHE_LIMIT = 1 << 30


_mlx_used_by: int | None = None  # the process that has run MLX on a device


def claim_mlx() -> None:
    """Note that this process runs MLX; refuse clearly where it cannot, instead of hanging.

    MLX's scheduler threads do not survive fork(): a child forked after its parent ran MLX hangs in its
    first MLX operation (mlx 0.32; tests/test_api.py shows it). Such a child gets this error instead.
    """
    global _mlx_used_by
    pid = os.getpid()
    if _mlx_used_by not in (None, pid):
        raise RuntimeError(
            "this process was forked from one that had already run MLX, whose threads do not survive fork(); "
            "MLX would hang here. Start workers with multiprocessing's 'spawn' or 'forkserver' method (or load the "
            "model only in the workers, e.g. gunicorn without --preload)"
        )
    _mlx_used_by = pid


@dataclass(frozen=True)
class Plan:
    device: str  # "cpu" or "gpu"
    backend: str  # "cpu", "metal" or "cuda"
    platform: str  # e.g. "linux-x86_64", "darwin-arm64"
    kernels: str  # "native" (compiled CPU kernels, see native.py) or "mlx"
    isa: str | None  # the native kernel's instruction set, e.g. "avx512"
    linear: str  # "native", "mlx" or "mlx-dequantized" (quantized layers made float at load)
    blocks: str  # "native": each encoder block in one native call; "mlx": model.py's modules op by op
    activations: int  # bits of the activations entering the blocks' quantized native matmuls: 8, 16 or 32 (float)
    weights: str  # "mapped" (read in place from model.safetensors) or "resident"
    threads: int  # native kernel threads (MLX's CPU ops are single-threaded)
    max_batch_tokens: int  # padded tokens per forward pass: bounds activation memory
    reasons: tuple[str, ...] = field(default=())

    def describe(self) -> str:
        isa = f" ({self.isa})" if self.isa else ""
        acts = f", {activation_name(self.activations)} activations" if self.blocks == "native" else ""
        return (f"{self.backend}: {self.kernels} kernels{isa}, linear {self.linear}, blocks {self.blocks}{acts}, "
                f"weights {self.weights}, {self.threads} threads, {self.max_batch_tokens} tokens per pass")


def activation_name(bits: int) -> str:
    return "float32" if bits == 32 else f"int{bits}"


def platform_name() -> str:
    return f"{sys.platform}-{platform.machine().lower()}"


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS has no affinity API
        return os.cpu_count() or 1


def thread_count(threads: int | None) -> int:
    if threads is None:
        value = os.environ.get(ENV_THREADS, "").strip()
        if value:
            try:
                threads = int(value)
            except ValueError:
                raise ValueError(f"{ENV_THREADS} must be a positive integer, got {value!r}") from None
    if threads is None:
        return available_cores()
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a positive integer, got {threads!r}")
    return threads


def choose(quantized: bool, compute_dtype: mx.Dtype, kernels: str = "auto", threads: int | None = None,
           device: mx.Device | None = None, fuse_blocks: bool = True) -> Plan:
    """The plan for MLX's default device (or ``device``): see the module docstring for what it rests on.

    ``fuse_blocks=False`` keeps model.py's modules inside the encoder blocks (only their Linear layers run
    natively), for callers that tap those layers (the converter's calibration).
    """
    if kernels not in KERNEL_CHOICES:
        raise ValueError(f"kernels must be one of {', '.join(KERNEL_CHOICES)}, got {kernels!r}")
    device = device or mx.default_device()
    threads = thread_count(threads)
    where = platform_name()
    if device.type == mx.gpu:
        backend = "metal" if mx.metal.is_available() else "cuda"
        if kernels.startswith("native"):
            raise ValueError("the native kernels run on the CPU; use kernels='auto' or 'mlx' on the GPU")
        reasons = ["GPU: MLX's own kernels; weights resident; freed buffers cached up to "
                   f"{GPU_CACHE_LIMIT >> 20} MB for reuse instead of freed every pass"]
        linear = "mlx"
        if quantized and backend == "cuda":
            linear = "mlx-dequantized"
            reasons.append("CUDA: quantized layers dequantized to float once at load, since MLX's dense kernels "
                           "are faster than its quantized ones for batches (H200 record)")
        elif quantized:
            reasons.append("Metal: MLX's quantized kernels (unverified here: no Mac has run this package)")
        return Plan("gpu", backend, where, "mlx", None, linear, "mlx", 32, "resident", threads, 8192, tuple(reasons))

    native_ok = native.available() and compute_dtype == mx.float32
    if kernels.startswith("native") and not native_ok:
        why = native.unavailable_reason() if not native.available() else "they compute in float32 only"
        raise ValueError(f"kernels='native' is not possible here: {why}")
    # MLX's CPU backend on macOS runs float matmuls and elementwise ops through Accelerate (AMX on Apple
    # silicon), which a NEON loop is unlikely to beat; for float weights it keeps them.
    mac_float = sys.platform == "darwin" and not quantized and kernels == "auto"
    if kernels == "mlx" or not native_ok or mac_float:
        why = ("asked for (kernels='mlx')" if kernels == "mlx" else
               f"native kernels unavailable: {native.unavailable_reason()}" if not native.available() else
               "bfloat16 compute: the native kernels are float32-only" if compute_dtype != mx.float32 else
               "macOS, float weights: Accelerate. Unverified: no Mac has run this package; "
               "`bench --kernels native,mlx` settles it")
        return Plan("cpu", "cpu", where, "mlx", None, "mlx", "mlx", 32, "resident", threads, 1024,
                    (f"MLX's CPU operations: {why}",))

    reasons = [
        "quantized and float Linear layers: native matmul straight from the stored layout, weights read in place "
        "from the memory-mapped file (measured on Linux x86-64)",
        f"{threads} kernel threads ({'from ' + ENV_THREADS if os.environ.get(ENV_THREADS) else 'available cores'})",
        "1,024 tokens per pass: throughput is flat above it on the CPU while activation memory grows (measured on "
        "Linux x86-64)",
    ]
    if fuse_blocks:
        blocks = "native"
        reasons.append("encoder blocks: one native call each (projections, norms, RoPE, attention, GELU on the real "
                       "tokens only) instead of ~20 MLX operations and host round trips per block (measured on Linux "
                       "x86-64" + ("; unverified on macOS: `bench --kernels native,mlx` settles it)"
                                   if sys.platform == "darwin" else ")"))
    else:
        blocks = "mlx"
        reasons.append("encoder blocks: model.py's modules with native Linear layers and attention (fuse_blocks=False: "
                       "the caller taps those layers)")
    activations, why = _activations(kernels, quantized and fuse_blocks)
    reasons.append(why)
    return Plan("cpu", "cpu", where, "native", native.isa(), "native", blocks, activations, "mapped", threads, 1024,
                tuple(reasons))


def _activations(kernels: str, fused_quantized: bool) -> tuple[int, str]:
    """Bits of the activations entering the blocks' quantized matmuls, and why."""
    if kernels in ACTIVATIONS:
        bits = ACTIVATIONS[kernels]
        if bits < 32 and not native.has_int8():
            raise ValueError(f"kernels={kernels!r} needs integer dot products, which the {native.isa()} kernel has not "
                             "(AVX-512 VNNI); use kernels='native-float32'")
        return bits, f"{activation_name(bits)} activations in the blocks' quantized projections: asked for (kernels={kernels!r})"
    if not fused_quantized:
        return 32, "float32 activations: float weights, or unfused blocks"
    if not native.has_int8():
        return 32, f"float32 activations: the {native.isa()} kernel has no integer dot products"
    return 8, ("int8 activations (rounded per weight group) into the blocks' 4-bit projections, through the integer "
               "dot products of AVX-512 VNNI; 8-bit projections and the Dense head get int16 (int8 plus its rounding "
               "error), float weights float32: faster than float activations at a small loss of cosine to the "
               "reference (measured on Linux x86-64: bench --kernels native-int8,native-int16,native-float32)")


def apply(plan: Plan, network: nn.Module, file_of=lambda name, module: None) -> list[tuple[str, nn.Module]]:
    """Swap in the modules the plan chose, once the network's resident weights are loaded.

    ``file_of(prefix, module)`` gives the SafetensorsMap holding a Linear layer's tensors when the plan reads
    it in place, else None (its resident copy is used). Returns the replaced modules, for ``restore``.
    """
    swaps: list[tuple[str, nn.Module]] = []
    if plan.kernels == "native":
        from . import native_layers as nl

        native.set_threads(plan.threads)

        def linear(name: str, module: nn.Module) -> nl.NativeLinear:
            file = file_of(name, module)
            return nl.NativeLinear.from_file(file, name, module) if file else nl.NativeLinear.from_module(module)

        fused: list[str] = []
        for name, module in network.named_modules():
            if any(name.startswith(prefix) for prefix in fused):
                continue  # inside a block already swapped
            if isinstance(module, TransformerBlock) and plan.blocks == "native":
                inner = {n: linear(f"{name}.{n}", m) for n, m in module.named_modules() if n in nl.BLOCK_LINEARS}
                swaps.append((name, nl.NativeBlock(module, inner, network.args.rms_norm_eps, plan.activations)))
                fused.append(name + ".")
            elif isinstance(module, Attend):
                swaps.append((name, nl.NativeAttend(module)))
            elif isinstance(module, (nn.Linear, nn.QuantizedLinear)) and plan.linear == "native":
                lin = linear(name, module)
                lin.input_bits = nl.input_bits(plan.activations, lin._w, in_block=False)
                swaps.append((name, lin))
    elif plan.linear == "mlx-dequantized":
        swaps = [(name, _dequantized(m)) for name, m in network.named_modules() if isinstance(m, nn.QuantizedLinear)]
    modules = dict(network.named_modules())
    replaced = [(name, modules[name]) for name, _ in swaps]
    network.update_modules(tree_unflatten(swaps))
    if plan.device == "gpu":
        previous = mx.set_cache_limit(GPU_CACHE_LIMIT)
        if previous < GPU_CACHE_LIMIT:  # the application asked for less: keep its limit
            mx.set_cache_limit(previous)
    return replaced


def restore(network: nn.Module, replaced: list[tuple[str, nn.Module]]) -> None:
    """Undo ``apply``: the network's own modules back (the converter quantizes them afterwards)."""
    network.update_modules(tree_unflatten(replaced))


def is_linear(module: nn.Module) -> bool:
    """A Linear layer, whichever kernel runs it."""
    from .native_layers import NativeLinear

    return isinstance(module, (nn.Linear, nn.QuantizedLinear, NativeLinear))


def _dequantized(q: nn.QuantizedLinear) -> nn.Linear:
    weight = mx.dequantize(q.weight, q.scales.astype(mx.float32), q.biases.astype(mx.float32), q.group_size, q.bits)
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias="bias" in q)
    layer.weight = weight
    if "bias" in q:
        layer.bias = q.bias
    return layer


def _malloc_trim():
    if sys.platform != "linux":
        return None
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # a C library without it (musl)
        return None


_MALLOC_TRIM = _malloc_trim()


# Passes longer than this stream the mapped weights: each layer's pages go right after its matmul, so the
# peak holds one layer's weights beside the large activations. Shorter passes (queries) keep them mapped:
# re-reading 57 MB of pages per pass cost a query about 20 ms of page faults, and their activations are
# small, so the peak stays lower than a long pass's (records: memory-linux-x86_64-2core.jsonl).
STREAM_ABOVE_TOKENS = 256


def before_pass(plan: Plan, network: nn.Module, tokens: int) -> None:
    """Set how the mapped weights are kept during a pass of ``tokens`` padded tokens (FORWARD_LOCK held)."""
    if plan.weights != "mapped":
        return
    from .native_layers import NativeBlock, NativeLinear

    stream = tokens > STREAM_ABOVE_TOKENS
    for _, module in network.named_modules():
        if isinstance(module, (NativeBlock, NativeLinear)):
            if stream and not module.release_after_call:
                module.release()  # pages a short pass left mapped
            module.release_after_call = stream


def after_pass(plan: Plan) -> None:
    """Keep memory flat across passes (call with FORWARD_LOCK held).

    CPU: MLX's cached buffers go back to malloc, and glibc returns the freed heap to the system, or the
    peak creeps up pass after pass (records: memory-linux-x86_64-2core.jsonl). GPU: the cache limit set at
    load bounds the cache.
    """
    if plan.device != "cpu":
        return
    mx.clear_cache()
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)
