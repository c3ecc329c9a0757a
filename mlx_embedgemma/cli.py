"""The `mlx-embedgemma` command: convert, finetune, embed, embed-dataset, serve, index, search, bench, check, info."""

from __future__ import annotations

import json
import os
import platform
import sys
from collections.abc import Iterator
from pathlib import Path

import click

from . import __version__
from .search import DEFAULT_EXTENSIONS


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mlx-embedgemma")
def main() -> None:
    """EmbeddingGemma-300m on MLX: convert checkpoints, embed texts, inspect the setup."""


@main.command()
@click.argument("source")
@click.argument("output", type=click.Path(path_type=Path))
@click.option("--recipe", default=None, help="Quantization recipe: q4-mixed (default), q4, q4-gptq, q8.")
@click.option("--bits", type=click.Choice(["4", "8"]), default=None, help="Every matrix at this width instead of a recipe.")
@click.option("--group-size", type=click.Choice(["32", "64", "128"]), default=None, help="With --bits (default 64).")
@click.option("--no-quantize", is_flag=True, help="Keep full-precision weights (see --dtype).")
@click.option("--dtype", type=click.Choice(["float32", "bfloat16"]), default=None, help="Weight dtype with --no-quantize.")
@click.option("--force", is_flag=True, help="Replace OUTPUT if it exists (only once the new folder is complete).")
@click.option("--layout", type=click.Choice(["mlx-embedgemma", "mlx-community"]), default="mlx-embedgemma", show_default=True,
              help="mlx-community: the mlx-embeddings layout (Hugging Face config.json, dense.0/dense.1 in "
                   "model.safetensors) that other MLX tools load; this package loads both.")
def convert(source: str, output: Path, recipe: str | None, bits: str | None, group_size: str | None,
            no_quantize: bool, dtype: str | None, force: bool, layout: str) -> None:
    """Convert a Hugging Face EmbeddingGemma checkpoint (folder or hub id) into an MLX model folder.

    The default recipe, q4-mixed, keeps most weights at 4 bits (GPTQ-rounded on calibration text that
    ships with Python) and the most sensitive ones at 8. Recipes: q4-mixed, q4, q4-gptq, q8.

    SOURCE is a local sentence-transformers folder, or a hub id such as google/embeddinggemma-300m
    (downloaded only then; needs `pip install 'mlx-embedgemma[hub]'`).
    """
    from .convert import OutputExistsError, OutputWriteError, SourceError
    from .convert import convert as run

    if dtype and not no_quantize:
        raise click.UsageError("--dtype applies to full-precision output: add --no-quantize")
    if no_quantize and (recipe or bits or group_size):
        raise click.UsageError("--no-quantize cannot be combined with --recipe, --bits or --group-size")
    if recipe and (bits or group_size):
        raise click.UsageError("give --recipe or --bits/--group-size, not both")
    try:
        report = run(
            source, output, recipe=recipe, bits=bits and int(bits), group_size=group_size and int(group_size),
            quantize=not no_quantize,
            dtype=dtype or "float32", force=force, layout=layout, log=lambda m: click.echo(m, err=True),
        )
    except (SourceError, OutputExistsError, OutputWriteError, PermissionError, ValueError) as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"wrote {report.output} ({report.storage}, {report.size_bytes / 1e6:.1f} MB)")



@main.command()
@click.argument("base", type=click.Path(path_type=Path))
@click.option("--train", "train_file", required=True, type=click.Path(path_type=Path),
              help="JSONL rows: anchor, positive, optionally negative (a string or a list).")
@click.option("--output", required=True, type=click.Path(path_type=Path), help="The fine-tuned model folder.")
@click.option("--valid", "valid_file", type=click.Path(path_type=Path), default=None,
              help="JSONL pairs scored before and after (loss, NDCG@10 of each anchor against all valid positives).")
@click.option("--lora-rank", type=int, default=None, help="Train LoRA adapters of this rank instead of all weights.")
@click.option("--train-layers", type=int, default=None,
              help="Train only the top K blocks and the head; the frozen blocks run once per text, not every step "
                   "(a step costs about K/24 of a whole-network one). 0: the head alone. [default: all blocks]")
@click.option("--epochs", type=int, default=1, show_default=True)
@click.option("--max-steps", type=int, default=None, help="Stop after this many steps.")
@click.option("--batch-size", type=int, default=32, show_default=True, help="Pairs per step (in-batch negatives).")
@click.option("--mini-batch-size", type=int, default=None, help="GradCache: the batch's exact gradients, computed this many texts at a time.")
@click.option("--learning-rate", type=float, default=None, help="[default: 2e-5, or 2e-4 with --lora-rank]")
@click.option("--matryoshka-dims", default="768,512,256,128", show_default=True, help="Sizes the loss is summed over.")
@click.option("--max-length", type=int, default=256, show_default=True, help="Tokens per text (prompt included); longer ones are cut.")
@click.option("--hard-negatives", type=int, default=None, help="Mine this many negatives per anchor with the base model first.")
@click.option("--recipe", default="q4-mixed", show_default=True, help="Quantization recipe of the output, or none for float32.")
@click.option("--dtype", default="float32", show_default=True, help="float32 or bfloat16 (float16 is refused: it overflows).")
@click.option("--train-embeddings", is_flag=True, help="Train the token embedding table too (frozen by default: 2/3 of the weights).")
@click.option("--freeze-head", is_flag=True, help="Keep the base's Dense head; train only the blocks (and the final norm). LoRA never trains the head.")
@click.option("--tuned-weight", type=float, default=1.0, show_default=True,
              help="Write base + W x (tuned - base) (WiSE-FT): below 1 keeps more of the base outside your domain.")
@click.option("--anchor-prompt", default="query", show_default=True, help="Prompt name (or literal prompt text) for anchors.")
@click.option("--document-prompt", default="document", show_default=True, help="Prompt name (or text) for positives and negatives.")
@click.option("--checkpoint-every", type=int, default=50, show_default=True, help="Steps between checkpoints (in OUTPUT.training).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--resume", is_flag=True, help="Continue the interrupted run that wrote OUTPUT.training.")
@click.option("--force", is_flag=True, help="Replace OUTPUT if it exists.")
def finetune(base: Path, train_file: Path, output: Path, valid_file: Path | None, lora_rank: int | None, train_layers: int | None, epochs: int,
             max_steps: int | None, batch_size: int, mini_batch_size: int | None, learning_rate: float | None,
             matryoshka_dims: str, max_length: int, hard_negatives: int | None, recipe: str, dtype: str,
             train_embeddings: bool, freeze_head: bool, tuned_weight: float, anchor_prompt: str, document_prompt: str, checkpoint_every: int, seed: int,
             resume: bool, force: bool) -> None:
    """Fine-tune BASE on (anchor, positive) pairs and write a model folder that `load()` opens.

    BASE is a sentence-transformers EmbeddingGemma folder or a float folder from `convert --no-quantize`.
    The loss is MultipleNegativesRankingLoss inside MatryoshkaLoss, batches never repeat a text.
    """
    from .convert import OutputExistsError, OutputWriteError, SourceError
    from .training.run import finetune as run, progress_line
    from .training.trainer import Settings

    try:
        dims = tuple(int(d) for d in matryoshka_dims.split(","))
    except ValueError:
        raise click.UsageError(f"--matryoshka-dims must be sizes separated by commas, like 768,512,256,128; got {matryoshka_dims!r}") from None
    settings = Settings(
        epochs=epochs, max_steps=max_steps, batch_size=batch_size, mini_batch_size=mini_batch_size, learning_rate=learning_rate,
        matryoshka_dims=dims, max_length=max_length, lora_rank=lora_rank, train_layers=train_layers, dtype=dtype, seed=seed, anchor_prompt=anchor_prompt,
        document_prompt=document_prompt, train_embeddings=train_embeddings, freeze_head=freeze_head, tuned_weight=tuned_weight,
        checkpoint_every=checkpoint_every,
    )
    interactive = sys.stderr.isatty()

    def show(p) -> None:
        if interactive or p.step == p.total or p.step % 10 == 0:
            click.echo(("\r" if interactive else "") + progress_line(p), nl=not interactive or p.step == p.total, err=True)

    try:
        result = run(
            base, train_file, output, settings, valid_file=valid_file, hard_negatives=hard_negatives,
            recipe=None if recipe == "none" else recipe, resume=resume, force=force,
            log=lambda m: click.echo(m, err=True), on_progress=show,
        )
    except (SourceError, OutputExistsError, OutputWriteError, PermissionError, ValueError) as e:
        raise click.ClickException(str(e)) from None
    r = result.training
    click.echo(f"trained {r.steps} steps in {r.seconds:.0f} s ({r.tokens_per_s:,.0f} tokens/s); "
               f"wrote {result.export.output} ({result.export.storage}, {result.export.size_bytes / 1e6:.1f} MB)")

@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.argument("texts", nargs=-1)
@click.option("--input", "input_file", type=click.File("r", encoding="utf-8"),
              help="File of texts ('-' for stdin): one per line, or JSONL (.jsonl) with a 'text' field.")
@click.option("--prompt-name", default=None, help="Task prompt, e.g. query, document, STS (see `info MODEL`).")
@click.option("--dim", type=click.IntRange(1), default=None,
              help="Matryoshka size: 768, 512, 256 or 128 for EmbeddingGemma-300m (see `info MODEL`); default the full size.")
@click.option("--output", type=click.Path(path_type=Path), default=None,
              help="Write .npy (one float32 matrix) or JSONL ({index, embedding} per line); default JSONL on stdout.")
@click.option("--resume", is_flag=True,
              help="Continue an interrupted JSONL --output: keep its complete lines, skip those texts, append the rest.")
@click.option("--batch-size", type=click.IntRange(1), default=32, show_default=True)
def embed(model: Path, texts: tuple[str, ...], input_file, prompt_name: str | None, dim: int | None,
          output: Path | None, resume: bool, batch_size: int) -> None:
    """Embed TEXTs, or the texts of --input, or of stdin when neither is given.

    JSONL is written as it is computed, one complete line per text, so a killed run leaves only whole
    lines, which `--resume` continues from.
    """
    from . import embed_stream
    from .loading import load

    if texts and input_file:
        raise click.UsageError("give TEXT arguments or --input, not both")
    try:
        embed_stream.check_output(output, resume)
    except embed_stream.StreamError as e:
        raise click.UsageError(str(e)) from None
    try:
        m = load(model)
        m.prompt_prefix(prompt_name, None)  # fail on an unknown prompt or size before any work
        dim = m.check_dim(dim) if dim is not None else m.embedding_dim
    except (FileNotFoundError, ImportError, ValueError) as e:
        raise click.ClickException(str(e)) from None
    source = (embed_stream.checked_args(texts) if texts
              else embed_stream.read_texts(input_file or click.open_file("-", encoding="utf-8")))
    try:
        count, done = embed_stream.embed_to_file(
            m, source, output, prompt_name=prompt_name, dim=dim, batch_size=batch_size, resume=resume,
            show=_progress, log=lambda message: click.echo(message, err=True),
        )
    except embed_stream.StreamError as e:
        raise click.ClickException(str(e)) from None
    if output:
        resumed = f" (resumed after {done})" if done else ""
        click.echo(f"wrote {count} embeddings of {dim} dims to {output}{resumed}", err=True)


def _progress(vectors: Iterator) -> Iterator:
    with click.progressbar(vectors, label="embedding", file=sys.stderr, hidden=not sys.stderr.isatty()) as bar:
        yield from bar


@main.command("embed-dataset")
@click.argument("input_path", metavar="INPUT")
@click.argument("output", metavar="OUTPUT")
@click.option("--model", type=click.Path(path_type=Path), required=True, help="Model folder (at the same path on every node of a cluster).")
@click.option("--text-column", default="text", show_default=True)
@click.option("--id-column", default="id", show_default=True, help="Column that names each row in the output and in error reports; '' for none.")
@click.option("--prompt-name", default="document", show_default=True, help="Task prompt (see `info MODEL`); '' for none.")
@click.option("--dim", type=click.IntRange(1), default=None, help="Matryoshka size [default: the full size].")
@click.option("--dtype", type=click.Choice(["float32", "float16", "int8"]), default="float32", show_default=True,
              help="How vectors are stored (int8: round(127 * v)).")
@click.option("--format", "output_format", type=click.Choice(["parquet", "jsonl"]), default="parquet", show_default=True,
              help="Output file format.")
@click.option("--actors", type=click.IntRange(1), default=1, show_default=True, help="Processes that each load the model and embed.")
@click.option("--threads", type=click.IntRange(1), default=None, help="Threads per actor [default: Ray's CPUs divided by --actors].")
@click.option("--batch-size", type=click.IntRange(1), default=256, show_default=True, help="Rows an actor embeds per call.")
@click.option("--address", default=None, help="An existing Ray cluster (e.g. ray://head:10001 or auto) [default: start a local Ray].")
def embed_dataset(input_path: str, output: str, model: Path, text_column: str, id_column: str, prompt_name: str,
                  dim: int | None, dtype: str, output_format: str, actors: int, threads: int | None, batch_size: int,
                  address: str | None) -> None:
    """Embed the text column of INPUT's Parquet or JSONL files into one file per input file in OUTPUT.

    INPUT is a file or folder, OUTPUT a folder: local paths or URIs pyarrow reads (s3://, gs://, ...).
    Output rows keep the input's order and ids: id, embedding (a fixed-size list), error (why a row
    could not be embedded; its embedding is then null). Each output file appears only once complete,
    so a rerun skips the input files whose output exists. Needs `pip install 'mlx-embedgemma[ray]'`.
    """
    try:
        import ray

        from .integrations.ray_files import embed_files
    except ImportError as e:
        raise click.ClickException(f"embed-dataset needs Ray Data ({e}): pip install 'mlx-embedgemma[ray]'") from None
    started = not ray.is_initialized()  # a caller's own Ray session is used as is, and left running
    if started:
        ray.init(address=address, include_dashboard=False if address is None else None)
    try:
        report = embed_files(
            input_path, output, model, text_column=text_column, id_column=id_column or None, prompt_name=prompt_name or None,
            dim=dim, dtype=dtype, actors=actors, threads=threads, batch_size=batch_size, output_format=output_format,
            log=lambda m: click.echo(m, err=True),
        )
    except (FileNotFoundError, ValueError) as e:
        raise click.ClickException(str(e)) from None
    finally:
        if started:
            ray.shutdown()
    for src, row_id, error in report.failures[:10]:
        row = f"row {id_column}={row_id!r}" if id_column else "a row"
        click.echo(f"{src}: {row} not embedded: {error}", err=True)
    if report.failed:
        click.echo(f"{report.failed} rows could not be embedded: their embedding is null and the output's "
                   f"'error' column says why", err=True)
    click.echo(f"embedded {report.rows} rows into {len(report.embedded)} files; {len(report.skipped)} files already complete")


class _BenchGroup(click.Group):
    """`bench MODEL ...` runs the harness; `bench report FILES ...` renders recorded results."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


@main.group(cls=_BenchGroup)
def bench() -> None:
    """Benchmark a model (`bench MODEL`), or render result files (`bench report FILES...`)."""


def _shared_dir() -> Path | None:
    """../shared (evaluation data, reference embeddings) beside the checkout or the working directory."""
    candidates = [os.environ.get("EMBEDGEMMA_SHARED"), Path.cwd().parent / "shared", Path.cwd() / "shared",
                  Path(__file__).resolve().parents[2] / "shared"]
    return next((Path(c) for c in candidates if c and (Path(c) / "eval").is_dir()), None)


def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


@bench.command("run")
@click.argument("model", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--device", type=click.Choice(["cpu", "gpu", "all"]), default="all", show_default=True,
              help="gpu: Metal on a Mac, CUDA on Linux; all: every device MLX has here.")
@click.option("--dims", default=None, help="Matryoshka sizes to measure [default: all of the model's: 768,512,256,128].")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Append JSONL records here.")
@click.option("--quick", is_flag=True, help="Fewer repetitions (30 query runs, one timed call per batch); quality only if cached.")
@click.option("--threads", type=click.IntRange(1), default=None, help="CPU threads for every runner [default: all cores].")
@click.option("--peers", default="auto", show_default=True,
              help="Comma list of sentence-transformers, llama.cpp; 'auto': those installed; 'none'.")
@click.option("--st-model", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Hugging Face folder for the sentence-transformers peer [default: $EMBEDGEMMA_SOURCE].")
@click.option("--gguf", "ggufs", type=click.Path(exists=True, dir_okay=False, path_type=Path), multiple=True,
              help="GGUF file for the llama.cpp peer (repeatable; see benchmarks/README.md to make them).")
@click.option("--shared", "shared", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Folder with eval/ and reference/ [default: ../shared or $EMBEDGEMMA_SHARED].")
@click.option("--no-quality", is_flag=True, help="Skip STS and retrieval scores.")
@click.option("--kernels", default="auto", show_default=True,
              help="CPU plans to measure side by side, comma-separated: auto, native (the compiled kernels), "
                   "native-int8 / native-int16 / native-float32 (them, with those activations in the quantized "
                   "projections), mlx (MLX's own ops).")
def bench_run(model: Path, device: str, dims: str | None, output: Path | None, quick: bool, threads: int | None, peers: str,
              st_model: Path | None, ggufs: tuple[Path, ...], shared: Path | None, no_quality: bool, kernels: str) -> None:
    """Latency, throughput, memory, downstream cost and quality of MODEL per dim and device, beside its peers."""
    from .benchmarks import harness
    from .loading import load

    try:
        m = load(model)
        sizes = [m.check_dim(int(d)) for d in dims.split(",")] if dims else list(m.dims)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--dims") from None
    except FileNotFoundError as e:
        raise click.ClickException(str(e)) from None
    available = harness.available_devices()
    devices = available if device == "all" else [device]
    if device == "gpu" and "gpu" not in available:
        raise click.UsageError("MLX has no GPU here (Metal on Apple silicon, CUDA with mlx[cuda13]); use --device cpu")

    installed = {"sentence-transformers": _installed("sentence_transformers"), "llama.cpp": _installed("llama_cpp")}
    if peers == "auto":
        chosen = [p for p, ok in installed.items() if ok]
    elif peers == "none":
        chosen = []
    else:
        chosen = [p.strip() for p in peers.split(",") if p.strip()]
        for p in chosen:
            if p not in installed:
                raise click.BadParameter(f"unknown peer {p!r}; known: {', '.join(installed)}", param_hint="--peers")
            if not installed[p]:
                raise click.UsageError(f"peer {p} is not installed: see benchmarks/README.md")
    st_model = st_model or (Path(os.environ["EMBEDGEMMA_SOURCE"]) if os.environ.get("EMBEDGEMMA_SOURCE") else None)
    skipped = []
    if "sentence-transformers" in chosen and st_model is None:
        skipped.append("sentence-transformers (give --st-model, the Hugging Face folder)")
    if "llama.cpp" in chosen and not ggufs:
        skipped.append("llama.cpp (give --gguf FILE)")
    shared = shared or _shared_dir()
    if shared is None:
        skipped.append("quality and cosine to the reference (../shared not found; give --shared)")
    elif not no_quality and not (shared / "eval").is_dir():
        skipped.append(f"quality ({shared / 'eval'} not found)")
    for what in skipped:
        click.echo(f"skipping {what}", err=True)

    from .backend import KERNEL_CHOICES

    plans = [k.strip() for k in kernels.split(",") if k.strip()]
    if not plans or any(k not in KERNEL_CHOICES for k in plans):
        raise click.BadParameter(f"choose among {', '.join(KERNEL_CHOICES)}, comma-separated", param_hint="--kernels")
    settings = harness.Settings.quick() if quick else harness.Settings()
    run = harness.Run(
        model=model.expanduser().resolve(), devices=devices, dims=sizes, output=output, settings=settings,
        threads=threads or os.cpu_count() or 1, peers=chosen, st_model=st_model, ggufs=list(ggufs),
        data_dir=shared / "eval" if shared and (shared / "eval").is_dir() else None,
        reference_dir=shared / "reference" if shared and (shared / "reference").is_dir() else None,
        cache_dir=Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mlx-embedgemma" / "bench",
        quality=not no_quality, quality_from_cache_only=quick, kernels=plans,
    )
    try:
        records = run.execute()
    except RuntimeError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"{len(records)} records" + (f" appended to {output}" if output else ""), err=True)


@bench.command("report")
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--output", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write README.md and PNG plots into this folder [default: print the tables].")
@click.option("--no-plots", is_flag=True, help="Tables only (no matplotlib needed).")
def bench_report(files: tuple[Path, ...], output: Path | None, no_plots: bool) -> None:
    """Markdown tables and PNG plots (latency, throughput, memory, quality per dim and device) from result FILES."""
    from .benchmarks import report

    try:
        text = report.write(list(files), output, with_plots=not no_plots)
    except (ValueError, RuntimeError) as e:
        raise click.ClickException(str(e)) from None
    if output is None:
        click.echo(text)
    else:
        click.echo(f"wrote {output / 'README.md'}", err=True)


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind; anything but loopback exposes the server.")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True)
@click.option("--model-id", default=None, help="Model name clients send [default: the folder's name].")
@click.option("--dim", type=click.IntRange(1), default=None, help="Matryoshka size when a request gives no `dimensions` [default: full].")
@click.option("--prompt-name", default=None, help="Task prompt when a request names none (by `prompt_name` or a `MODEL:PROMPT` alias).")
@click.option("--max-batch-size", type=click.IntRange(1), default=32, show_default=True, help="Texts per batch.")
@click.option("--batch-wait-ms", type=click.FloatRange(0), default=5.0, show_default=True,
              help="How long a batch waits for more requests once one has arrived (under concurrent load: up to "
                   "a tenth of a forward pass, at most 100 ms, unless --fixed-wait).")
@click.option("--fixed-wait", is_flag=True, help="Always wait exactly --batch-wait-ms.")
@click.option("--max-queue", type=click.IntRange(1), default=256, show_default=True, help="Requests waiting before 429.")
@click.option("--max-inputs", type=click.IntRange(1), default=2048, show_default=True, help="Texts per request before 413.")
@click.option("--max-request-tokens", type=click.IntRange(1), default=65536, show_default=True,
              help="Tokens per request (prompts included) before 413.")
@click.option("--truncate", is_flag=True, help="Cut texts over the model's context (reported per response) instead of answering 400.")
@click.option("--log-level", type=click.Choice(["critical", "error", "warning", "info", "debug"]), default="info", show_default=True)
@click.option("--no-access-log", is_flag=True, help="Do not log every request.")
def serve(model: Path, host: str, port: int, model_id: str | None, dim: int | None, prompt_name: str | None,
          max_batch_size: int, batch_wait_ms: float, max_queue: int, max_inputs: int, max_request_tokens: int,
          truncate: bool, log_level: str, no_access_log: bool, fixed_wait: bool) -> None:
    """Serve MODEL over an OpenAI-compatible API: POST /v1/embeddings, GET /v1/models, GET /health.

    Needs `pip install 'mlx-embedgemma[serve]'` (Starlette and uvicorn).
    """
    try:
        from . import server
    except ImportError as e:
        raise click.ClickException(f"the server needs Starlette and uvicorn ({e}): pip install 'mlx-embedgemma[serve]'") from None
    from .loading import load

    try:
        m = load(model)
        config = server.ServerConfig(
            model_id=model_id or Path(model).expanduser().resolve().name, max_batch_size=max_batch_size,
            batch_wait_ms=batch_wait_ms, max_queue=max_queue, max_inputs=max_inputs,
            max_request_tokens=max_request_tokens, default_dim=dim, default_prompt_name=prompt_name, truncate=truncate,
            adaptive_wait=not fixed_wait,
        )
        server.check_config(m, config)
    except (FileNotFoundError, ValueError) as e:
        raise click.ClickException(str(e)) from None
    if not server.is_loopback(host):
        click.echo(f"warning: binding to {host}: anyone who can reach this machine can use the server "
                   "(it has no authentication); use --host 127.0.0.1 to keep it local", err=True)
    click.echo(f"serving {config.model_id} (aliases: {', '.join(list(server.model_aliases(m, config.model_id))[1:4])}, ...) "
               f"on http://{host}:{port}/v1", err=True)
    server.serve(m, config, host=host, port=port, log_level=log_level, access_log=not no_access_log)


MODEL_ENV = "MLX_EMBEDGEMMA_MODEL"


def _index_model(model: Path | None, store) -> Path:
    """--model, else $MLX_EMBEDGEMMA_MODEL, else the folder the store was made with."""
    if model is not None:
        return model
    if os.environ.get(MODEL_ENV):
        return Path(os.environ[MODEL_ENV])
    stored = store.meta.get("model_path")
    if stored:
        return Path(stored)
    raise click.UsageError(f"give the model folder with --model (or set ${MODEL_ENV}); the store remembers it afterwards")


def _shown(path: str) -> str:
    try:
        return os.path.relpath(path) if not os.path.relpath(path).startswith("..") else path
    except ValueError:  # another drive (Windows)
        return path


@main.command()
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--db", type=click.Path(dir_okay=False, path_type=Path), required=True, help="The SQLite store (created if missing).")
@click.option("--model", type=click.Path(path_type=Path), default=None,
              help=f"Model folder [default: ${MODEL_ENV}, else the one the store was made with].")
@click.option("--dim", type=click.IntRange(1), default=None,
              help="Matryoshka size of the stored vectors (of the first pass, for int8 and binary) [default: full, or the store's].")
@click.option("--store", "kind", type=click.Choice(["float32", "int8", "binary"]), default=None,
              help="float32: exact search. int8 / binary: a 4x / 32x smaller first pass, its best candidates rescored "
                   "with full-size float vectors read from disk [default: float32, or the store's].")
@click.option("--rebuild", is_flag=True, help="Re-index everything into a new store, which replaces the old one once complete.")
@click.option("--chunk-tokens", type=click.IntRange(16), default=None,
              help="Largest chunk, in the model's tokens (prompt excluded) [default: 400 or the model's limit, or the store's].")
@click.option("--overlap-tokens", type=click.IntRange(0), default=None,
              help="Paragraphs repeated between neighbouring chunks, in tokens [default: 50, or the store's].")
@click.option("--ext", "extensions", default=",".join(e.lstrip(".") for e in DEFAULT_EXTENSIONS),
              show_default=True, help="File name endings to index, comma separated.")
@click.option("--batch-size", type=click.IntRange(1), default=32, show_default=True)
@click.option("--watch", is_flag=True, help="Then keep the store current as files change, until Ctrl-C (needs the [search] extra).")
@click.option("--debounce", type=click.FloatRange(0.05), default=1.0, show_default=True,
              help="With --watch: seconds without changes before updating, so a burst of saves is embedded once.")
def index(folder: Path, db: Path, model: Path | None, dim: int | None, kind: str | None, rebuild: bool,
          chunk_tokens: int | None, overlap_tokens: int | None, extensions: str, batch_size: int, watch: bool,
          debounce: float) -> None:
    """Index the text and Markdown files of FOLDER into --db for `search` (again: only what changed).

    Markdown is cut by headings, then paragraphs; plain text by paragraphs. Unchanged files are skipped,
    changed ones re-embedded, renamed ones moved, deleted ones removed. Everything stays on this machine.
    """
    from .loading import load
    from .search import SearchIndex, StoreError
    from .search import rebuild as rebuild_aside

    exts = [e.strip() for e in extensions.split(",") if e.strip()]

    def update(target: SearchIndex, **settings):
        return target.index_folder(folder, m, extensions=exts, batch_size=batch_size,
                                  progress=lambda p: click.echo(f"  embedding {_shown(p)}", err=True), **settings)

    settings = {"dim": dim, "store": kind, "chunk_tokens": chunk_tokens, "overlap_tokens": overlap_tokens}
    try:
        with SearchIndex(db) as store:
            m = load(_index_model(model, store))
            if not rebuild:
                report = update(store, **settings)
        if rebuild:
            report = rebuild_aside(db, lambda new: update(new, **settings))
        _print_index_report(report, db, m.max_seq_length)
        if watch:
            from .search.watch import watch_folder

            click.echo(f"watching {_shown(str(folder))} (Ctrl-C to stop)", err=True)

            def update_once():
                with SearchIndex(db) as store:
                    return update(store)

            watch_folder(folder, update_once, lambda r: _print_index_report(r, db, m.max_seq_length), debounce_s=debounce,
                         extensions=exts)
    except (StoreError, FileNotFoundError, ValueError, ImportError) as e:
        raise click.ClickException(str(e)) from None
    except KeyboardInterrupt:
        click.echo("stopped watching; the store is current up to the last update", err=True)


def _print_index_report(report, db: Path, max_seq_length: int) -> None:
    for path, why in report.skipped:
        click.echo(f"skipped {_shown(path)}: {why}", err=True)
    for old, new in report.renamed:
        click.echo(f"renamed {_shown(old)} -> {_shown(new)}", err=True)
    if report.truncated:
        click.echo(f"{report.truncated} chunks were longer than the model's {max_seq_length} tokens and were cut to it: "
                   "re-index with --rebuild (chunks are then measured in tokens)", err=True)
    click.echo(
        f"{len(report.added)} new, {len(report.updated)} changed, {len(report.renamed)} renamed, "
        f"{report.unchanged + report.touched} unchanged, {len(report.removed)} removed, {len(report.skipped)} skipped; "
        f"{report.chunks_embedded} chunks embedded; "
        f"{report.files_total} files, {report.chunks_total} chunks in {_shown(str(db))} ({report.seconds:.1f} s)"
    )


@main.command()
@click.argument("query")
@click.option("--db", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True, help="A store made by `index`.")
@click.option("-k", "--top-k", "k", type=click.IntRange(1), default=10, show_default=True, help="How many chunks to show.")
@click.option("--mode", type=click.Choice(["hybrid", "vector", "keyword"]), default="hybrid", show_default=True,
              help="vector: by meaning; keyword: by words (BM25); hybrid: both, fused by reciprocal rank.")
@click.option("--model", type=click.Path(path_type=Path), default=None,
              help=f"Model folder [default: ${MODEL_ENV}, else the one the store was made with].")
@click.option("--prompt-name", default="query", show_default=True, help="Task prompt of the query (documents have `document`).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per result, for scripts.")
def search(query: str, db: Path, k: int, mode: str, model: Path | None, prompt_name: str, as_json: bool) -> None:
    """Search a store made by `index`: rank, score, file:line, heading and a snippet."""
    from .loading import load
    from .search import SearchIndex, StoreError

    try:
        with SearchIndex(db) as store:
            m = load(_index_model(model, store)) if mode != "keyword" else None
            results = store.search(m, query, k=k, mode=mode, prompt_name=prompt_name)
    except (StoreError, FileNotFoundError, ValueError) as e:
        raise click.ClickException(str(e)) from None
    for note in results.notes:
        click.echo(f"note: {note}", err=True)
    for h in results.hits:
        if as_json:
            click.echo(json.dumps({"rank": h.rank, "score": round(h.score, 6), "path": h.path, "line": h.start_line,
                                   "chunk": h.ordinal, "heading": h.heading, "text": h.text}, ensure_ascii=False))
            continue
        snippet = " ".join(h.text.split())
        snippet = snippet if len(snippet) <= 200 else snippet[:197] + "..."
        click.echo(f"{h.rank:>3}  {h.score:.4f}  {_shown(h.path)}:{h.start_line}" + (f"  [{h.heading}]" if h.heading else ""))
        click.echo(f"     {snippet}")
    if not results.hits:
        click.echo("no chunk matches" if mode == "keyword" else "the store holds no chunks", err=True)


@main.command()
@click.option("--db", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True, help="A store made by `index`.")
@click.option("--model", type=click.Path(path_type=Path), default=None,
              help=f"Model folder [default: ${MODEL_ENV}, else the one the store was made with].")
def mcp(db: Path, model: Path | None) -> None:
    """Serve the store's search to AI agents over the Model Context Protocol (stdio; needs the [mcp] extra)."""
    from .loading import load
    from .search import SearchIndex, StoreError

    try:
        from .search.mcp_server import serve

        with SearchIndex(db) as store:
            model_path = _index_model(model, store)
        serve(db, load(model_path))
    except (StoreError, FileNotFoundError, ValueError, ImportError) as e:
        raise click.ClickException(str(e)) from None


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
def check(model: Path) -> None:
    """Embed MODEL's probe texts on every device here (CPU, Metal, CUDA) and compare with their float32 reference.

    Prints cosine (mean, min), time and MLX's peak memory per device; exits with 1 when a device falls
    below the folder's cosine bar. On a Mac, please send us its output (and `bench MODEL --quick`'s).
    """
    from . import check as checking

    try:
        probes, results = checking.run(model)
    except (FileNotFoundError, ImportError, ValueError) as e:
        raise click.ClickException(str(e)) from None
    for line in checking.report(model, probes, results):
        click.echo(line)
    if not all(r.passed(probes.bar) for r in results):
        sys.exit(1)


@main.command()
@click.argument("model", type=click.Path(path_type=Path), required=False)
def info(model: Path | None) -> None:
    """Versions, backend and device, the CPU kernels, and a summary of MODEL (with its backend plan) if given."""
    import mlx.core as mx
    import numpy as np
    import sentencepiece

    rows = [
        ("mlx-embedgemma", __version__),
        ("python", f"{platform.python_version()} ({platform.system()} {platform.machine()})"),
        ("mlx", mx.__version__),
        ("numpy", np.__version__),
        ("sentencepiece", sentencepiece.__version__),
        ("device", str(mx.default_device())),
        ("metal", "available" if mx.metal.is_available() else "not available"),
        ("cuda", "available" if hasattr(mx, "cuda") and mx.cuda.is_available() else "not available"),
        ("native CPU kernels", _native_summary()),
    ]
    if model is not None:
        from .loading import load
        from .precision import describe, storage_by_kind

        try:
            m = load(model)
        except (FileNotFoundError, ImportError, ValueError) as e:
            raise click.ClickException(str(e)) from None
        size = sum(f.stat().st_size for f in Path(model).expanduser().iterdir() if f.is_file())
        rows += [
            ("model", str(m.path)),
            ("plan", m.plan.describe()),
            *(("  because", why) for why in m.plan.reasons),
            ("storage", describe(m.config)),
            *((f"  {kind}", how) for kind, how in storage_by_kind(m.config)),
            ("size on disk", f"{size / 1e6:.1f} MB"),
            ("dims", ", ".join(map(str, m.dims))),
            ("max tokens", str(m.max_seq_length)),
            ("prompts", ", ".join(sorted(m.prompts))),
        ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        click.echo(f"{key:<{width}}  {value}")


if __name__ == "__main__":
    main()


def _native_summary() -> str:
    from . import native

    if not native.available():
        return f"not in use: {native.unavailable_reason()}"
    return f"{native.isa()} (built: {', '.join(native.isas())}), {native.threads()} threads"
