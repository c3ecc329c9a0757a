"""Fine-tuning on the tiny model: LoRA merging, resuming, the sampler, the command end to end, bad input."""

from __future__ import annotations

import json
import subprocess

import mlx.core as mx
import numpy as np
import pytest
from click.testing import CliRunner
from mlx.utils import tree_flatten

from mlx_embedgemma import load
from mlx_embedgemma.cli import main
from mlx_embedgemma.training import checkpoint
from mlx_embedgemma.training.base import BaseModelError, load_base
from mlx_embedgemma.training.batches import embed, pad
from mlx_embedgemma.training.data import DataError, DataWarning, Example, read_examples
from mlx_embedgemma.training.mining import mine_hard_negatives
from mlx_embedgemma.training.lora import LoRALinear, apply_lora, merge_lora
from mlx_embedgemma.training.sampler import no_duplicate_batches
from mlx_embedgemma.training.trainer import Settings, SettingsError, Trainer

WORDS = "mars venus earth red planet fox dog lazy quick brown hello world emoji text twin".split()


def pairs(n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [
        {"anchor": " ".join(rng.choice(WORDS, 3)) + f" {i}", "positive": " ".join(rng.choice(WORDS, 6)) + f" {i}"}
        for i in range(n)
    ]


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def test_lora_merged_equals_unmerged(tiny_source):
    base = load_base(tiny_source)
    apply_lora(base.network, rank=4)
    for _, module in base.network.named_modules():
        if isinstance(module, LoRALinear):  # B starts at zero; make the update real
            module.lora_b = mx.random.normal(module.lora_b.shape) * 0.05
    tokens = pad([[2, 17, 40, 5, 1], [2, 9, 1]])
    unmerged = embed(base.network, tokens, mx.float32)
    merge_lora(base.network)
    assert not any(isinstance(m, LoRALinear) for _, m in base.network.named_modules())
    merged = embed(base.network, tokens, mx.float32)
    plain = embed(load_base(tiny_source).network, tokens, mx.float32)
    assert float(mx.abs(unmerged - plain).max()) > 1e-3  # the adapters changed the output
    np.testing.assert_allclose(np.array(merged), np.array(unmerged), atol=1e-5)


def test_lora_trains_only_the_adapters(tiny_source):
    base = load_base(tiny_source)
    count = apply_lora(base.network, rank=2)
    names = [k for k, _ in tree_flatten(base.network.trainable_parameters())]
    assert names and all(k.endswith(("lora_a", "lora_b")) for k in names)
    assert count == sum(v.size for _, v in tree_flatten(base.network.trainable_parameters()))


def train_params(tiny_source, examples, folder, **kwargs):
    trainer = Trainer(load_base(tiny_source), Settings(batch_size=4, max_length=64, matryoshka_dims=(64, 32), checkpoint_every=1, epochs=2, learning_rate=1e-3, **kwargs.pop("settings", {})))
    report = trainer.train(examples, folder, **kwargs)
    return report, {k: np.array(v.astype(mx.float32)) for k, v in tree_flatten(trainer.network.parameters())}


@pytest.mark.parametrize("lora_rank", [None, 4])
def test_resumed_run_equals_uninterrupted_run(tiny_source, tmp_path, lora_rank):
    examples = read_examples(write_jsonl(tmp_path / "train.jsonl", pairs(10)))
    options = {"settings": {"lora_rank": lora_rank}}
    full, expected = train_params(tiny_source, examples, tmp_path / "a", **options)
    assert full.steps == 6  # 3 batches a epoch, 2 epochs
    first, _ = train_params(tiny_source, examples, tmp_path / "b", stop_after=2, **options)
    assert first.steps == 2
    second, got = train_params(tiny_source, examples, tmp_path / "b", resume=True, **options)
    assert second.steps == 6
    assert second.losses == full.losses[2:]
    moved = max(float(np.abs(expected[k] - v).max()) for k, v in train_params(tiny_source, examples, tmp_path / "c", stop_after=0, **options)[1].items())
    assert moved > 0  # training changed the weights, so equality below means something
    for name, value in expected.items():
        np.testing.assert_allclose(got[name], value, rtol=0, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("lora_rank", [None, 2])
def test_training_the_top_blocks_from_kept_states_gives_the_whole_networks_gradients(tiny_source, lora_rank):
    # The same batch through (a) the whole network with blocks 0-2 frozen and (b) block 3 alone, fed the
    # kept output of blocks 0-2. Both run the same float32 operations except that (b)'s states were computed
    # in batches of another padding width (softmax over more masked keys): 1e-5 relative covers that, while
    # a kept state off by a block, a missing embedding scale or a wrong row would be off by far more.
    examples = [Example(p["anchor"], p["positive"], line=i + 1) for i, p in enumerate(pairs(6))]
    settings = Settings(batch_size=6, max_length=64, matryoshka_dims=(64, 32), lora_rank=lora_rank)
    whole = Trainer(load_base(tiny_source), settings)
    for layer in whole.network.model.layers[:3]:
        layer.freeze()
    top = Trainer(load_base(tiny_source), Settings(**{**settings.__dict__, "train_layers": 1}))
    if lora_rank:  # the adapters start at B = 0: give both networks the same non-zero update
        for trainer in (whole, top):
            mx.random.seed(7)
            for path, module in trainer.network.named_modules():
                if isinstance(module, LoRALinear) and path.startswith("model.layers.3."):
                    module.lora_b = mx.random.normal(module.lora_b.shape) * 0.05
    rows = whole.prepare(examples, "training data")
    top.bottom.add(text for row in rows for text in row)
    assert len(top.bottom.states) == 12
    expected_loss, expected, _ = whole.value_and_grad(rows)
    loss, got, _ = top.value_and_grad(rows)
    expected, got = dict(tree_flatten(expected)), dict(tree_flatten(got))
    if lora_rank:  # LoRA on the top block only
        assert got.keys() == {k for k in expected if k.startswith("model.layers.3.") and ".lora_" in k}
    else:  # the top block, the final norm and the head
        assert {k.split(".")[0] + "." + k.split(".")[1] for k in got} == {"model.layers", "model.norm", "dense.0", "dense.1"}
        assert not any(k.startswith(("model.layers.0.", "model.layers.1.", "model.layers.2.", "model.embed")) for k in got)
    assert abs(float(loss.item()) - float(expected_loss.item())) < 1e-5 * abs(float(expected_loss.item()))
    for name in got:
        scale = float(mx.abs(expected[name]).max())
        assert scale > 0, name
        np.testing.assert_allclose(np.array(got[name]), np.array(expected[name]), rtol=0, atol=1e-5 * scale, err_msg=name)


@pytest.mark.parametrize("freeze_head", [False, True])
def test_a_top_blocks_run_leaves_the_bottom_untouched(tiny_source, tmp_path, freeze_head):
    examples = read_examples(write_jsonl(tmp_path / "train.jsonl", pairs(10)))
    before = {k: np.array(v) for k, v in tree_flatten(load_base(tiny_source).network.parameters())}
    report, after = train_params(tiny_source, examples, tmp_path / "ckpt", settings={"train_layers": 2, "freeze_head": freeze_head})
    assert report.cache_seconds > 0 and report.losses[-1] < report.losses[0]
    frozen = ("model.embed_tokens", "model.layers.0.", "model.layers.1.") + (("dense.",) if freeze_head else ())
    for name, value in before.items():
        moved = float(np.abs(after[name] - value).max())
        if name.startswith(frozen):
            assert moved == 0, name
        elif name.startswith(("model.layers.3.self_attn", "model.layers.3.mlp", "dense.")):
            assert moved > 0, name


@pytest.mark.parametrize("lora_rank", [None, 4])
def test_tuned_weight_ends_on_the_line_from_base_to_tuned(tiny_source, tmp_path, lora_rank):
    # --tuned-weight 0.25 must end at base + 0.25 * (tuned - base), tuned being the same run at weight 1 (same
    # seed, same batches: equal to 1e-6, as resumed runs are). LoRA is compared merged: its adapters are not
    # on that line (the update is B A), only the update's scale is.
    examples = read_examples(write_jsonl(tmp_path / "train.jsonl", pairs(10)))

    def run(folder, weight, resume=False):
        trainer = Trainer(load_base(tiny_source), Settings(batch_size=4, max_length=64, matryoshka_dims=(64, 32), learning_rate=1e-3,
                                                           train_layers=2, lora_rank=lora_rank, tuned_weight=weight))
        trainer.train(examples, tmp_path / folder, resume=resume)
        merge_lora(trainer.network)
        return {k: np.array(v) for k, v in tree_flatten(trainer.network.parameters())}

    base = {k: np.array(v) for k, v in tree_flatten(load_base(tiny_source).network.parameters())}
    tuned, weighed = run("a", 1.0), run("b", 0.25)
    assert max(float(np.abs(tuned[k] - v).max()) for k, v in base.items()) > 1e-3
    for name, value in base.items():
        np.testing.assert_allclose(weighed[name], value + 0.25 * (tuned[name] - value), rtol=0, atol=1e-6, err_msg=name)
    resumed = run("b", 0.25, resume=True)  # a run resumed from its last checkpoint (the tuned weights) ends weighed too
    for name, value in weighed.items():
        np.testing.assert_allclose(resumed[name], value, rtol=0, atol=1e-6, err_msg=name)


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"train_layers": 5}, "--train-layers must be a number of blocks in 0..4"),
        ({"train_layers": -1}, "--train-layers must be a number of blocks in 0..4"),
        ({"train_layers": 0, "lora_rank": 2}, "trains nothing"),
        ({"train_layers": 2, "train_embeddings": True}, "pass one of them"),
        ({"train_layers": 0, "freeze_head": True}, "only the final norm"),
        ({"tuned_weight": 0.0}, "--tuned-weight must be in"),
        ({"tuned_weight": 1.5}, "--tuned-weight must be in"),
    ],
)
def test_bad_train_layers_are_refused(tiny_source, settings, message):
    with pytest.raises(SettingsError, match=message):
        Trainer(load_base(tiny_source), Settings(matryoshka_dims=(64,), **settings))


def test_a_second_run_into_a_checkpoint_needs_resume_and_the_same_settings(tiny_source, tmp_path):
    examples = read_examples(write_jsonl(tmp_path / "train.jsonl", pairs(8)))
    train_params(tiny_source, examples, tmp_path / "ckpt", stop_after=1)
    with pytest.raises(checkpoint.CheckpointError, match="--resume"):
        train_params(tiny_source, examples, tmp_path / "ckpt")
    with pytest.raises(checkpoint.CheckpointError, match="seed"):
        train_params(tiny_source, examples, tmp_path / "ckpt", resume=True, settings={"seed": 5})


def test_no_duplicates_sampler_never_puts_a_text_twice_in_a_batch():
    rng = np.random.default_rng(1)
    # Many anchors share a few positives (questions with the same answer), some anchors repeat.
    examples = [Example(f"q{rng.integers(40)}-{i % 30}", f"doc{rng.integers(8)}") for i in range(60)]
    for epoch in range(3):
        batches = no_duplicate_batches(examples, 6, seed=3, epoch=epoch)
        assert sorted(i for b in batches for i in b) == list(range(60))  # every row once per epoch
        for batch in batches:
            texts = [t for i in batch for t in examples[i].texts]
            assert len(texts) == len(set(texts)), batch
    assert no_duplicate_batches(examples, 6, 3, 0) == no_duplicate_batches(examples, 6, 3, 0)
    assert no_duplicate_batches(examples, 6, 3, 0) != no_duplicate_batches(examples, 6, 3, 1)


def test_finetune_command_end_to_end(tiny_source, tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", pairs(12))
    valid = write_jsonl(tmp_path / "valid.jsonl", pairs(6, seed=9))
    out = tmp_path / "tuned"
    result = CliRunner().invoke(main, [
        "finetune", str(tiny_source), "--train", train, "--valid", valid, "--output", str(out), "--recipe", "none",
        "--batch-size", "4", "--mini-batch-size", "2", "--matryoshka-dims", "64,32", "--max-length", "64",
        "--lora-rank", "2", "--learning-rate", "1e-3",
    ])
    assert result.exit_code == 0, result.output
    assert "steps/s" in result.output and "tokens/s" in result.output
    assert "valid before: loss" in result.output and "valid after:" in result.output
    assert "probe cosine to the float32 source" in result.output
    assert not (tmp_path / "tuned.training").exists()
    model = load(out)
    assert model.config["fine_tuned_from"] == str(tiny_source)
    assert np.isfinite(model.encode(["mars is red"], prompt_name="query")).all()
    assert "lora" not in json.dumps(list(mx.load(str(out / "model.safetensors"))))
    refused = CliRunner().invoke(main, ["finetune", str(tiny_source), "--train", train, "--output", str(tmp_path / "other"),
                                         "--matryoshka-dims", "64,32", "--tuned-weight", "0"])
    assert refused.exit_code != 0 and "--tuned-weight must be in (0, 1]" in refused.output
    assert not (tmp_path / "other").exists()


def test_hard_negatives_skip_the_positive_and_candidates_within_the_margin():
    examples = [Example(f"q{i}", f"d{i}", line=i + 1) for i in range(4)]
    # scores[i][j] = similarity of q_i and d_j. q0: its positive d0 0.8, d1 0.79 (within 5% of it: a likely
    # unlabelled positive), then d2 0.5 and d3 0.1.
    scores = np.array([[0.8, 0.79, 0.5, 0.1], [0.1, 0.9, 0.2, 0.3], [0.2, 0.1, 0.9, 0.3], [0.3, 0.2, 0.1, 0.9]], np.float32)

    def embed_texts(texts, column):  # one-hot anchors, documents holding their column of scores
        return np.eye(4, dtype=np.float32)[[int(t[1:]) for t in texts]] if column == "anchor" else scores.T[[int(t[1:]) for t in texts]]

    mined = mine_hard_negatives(examples, embed_texts, 1)
    assert mined[0].negatives == ("d2",)
    assert all(e.positive not in e.negatives for e in mined)
    with pytest.raises(DataError, match="line 1 has only 2 candidates"):
        mine_hard_negatives(examples, embed_texts, 3)


def test_finetune_from_a_float_folder(tiny_f32, tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", pairs(8))
    result = CliRunner().invoke(main, [
        "finetune", str(tiny_f32), "--train", train, "--output", str(tmp_path / "out"), "--recipe", "none",
        "--batch-size", "4", "--matryoshka-dims", "64", "--max-length", "64", "--max-steps", "1",
    ])
    assert result.exit_code == 0, result.output
    assert load(tmp_path / "out").encode(["a"]).shape == (1, 64)


def test_quantized_base_is_refused(tiny_q4):
    with pytest.raises(BaseModelError, match="--no-quantize"):
        load_base(tiny_q4)


def test_float16_is_refused_and_bfloat16_trains(tiny_source, tmp_path):
    with pytest.raises(SettingsError, match="float16 is refused"):
        Trainer(load_base(tiny_source), Settings(dtype="float16"))
    examples = read_examples(write_jsonl(tmp_path / "train.jsonl", pairs(8)))
    report, params = train_params(tiny_source, examples, tmp_path / "ckpt", settings={"dtype": "bfloat16"})
    assert np.isfinite(report.losses).all()
    assert report.losses[-1] < report.losses[0]


@pytest.mark.parametrize(
    "content, message",
    [
        ("", "has no rows"),
        ('{"anchor": "a", "positive": "b"}\n{"anchor": "a"\n', "line 2 is not valid JSON"),
        ('{"anchor": "a", "positive": "b"}\n{"anchor": "c"}\n', "line 2 lacks 'positive'"),
        ('["a", "b"]\n', "line 1 is a JSON list"),
        ('{"anchor": "a", "positive": 3}\n', "line 1: 'positive' must be a string"),
        ('{"anchor": " ", "positive": "b"}\n', "line 1: 'anchor' is empty"),
        ('{"anchor": "a", "positive": "b", "negative": "c"}\n{"anchor": "d", "positive": "e"}\n', "different numbers of negatives"),
        ('{"anchor": "a", "positive": "b", "negative": {"x": 1}}\n', "line 1: \"negative\" must be a string or a list"),
    ],
)
def test_bad_rows_are_errors_naming_the_line(tmp_path, content, message):
    path = tmp_path / "train.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=message):
        read_examples(path)


def test_duplicate_pairs_are_dropped_with_a_warning(tmp_path):
    rows = [{"anchor": "a", "positive": "b"}, {"anchor": "c", "positive": "d", "extra": 1}, {"anchor": "a", "positive": "b"}]
    with pytest.warns(DataWarning) as caught:
        examples = read_examples(write_jsonl(tmp_path / "t.jsonl", rows))
    assert [e.line for e in examples] == [1, 2]
    text = " ".join(str(w.message) for w in caught)
    assert "line 3 repeats line 1" in text and "'extra'" in text


def test_texts_over_the_length_limit_are_named(tiny_source, tmp_path):
    rows = [{"anchor": "a", "positive": "b"}, {"anchor": "short", "positive": " ".join(WORDS * 4)}]
    examples = read_examples(write_jsonl(tmp_path / "t.jsonl", rows))
    trainer = Trainer(load_base(tiny_source), Settings(max_length=24, matryoshka_dims=(64,)))
    with pytest.warns(DataWarning, match=r"line 2 positive \(\d+ tokens\).*--max-length"):
        rows = trainer.prepare(examples, "training data")
    assert max(len(r) for row in rows for r in row) == 24


def test_a_run_killed_mid_training_resumes_to_the_uninterrupted_result(tiny_source, tmp_path):
    import sys

    from processes import kill_when

    train = write_jsonl(tmp_path / "train.jsonl", pairs(16))
    common = ["--train", train, "--recipe", "none", "--batch-size", "4", "--matryoshka-dims", "64,32", "--max-length", "64",
              "--epochs", "2", "--checkpoint-every", "1", "--learning-rate", "1e-3"]

    def command(out, *extra):
        return [sys.executable, "-m", "mlx_embedgemma.cli", "finetune", str(tiny_source), "--output", str(out), *common, *extra]

    state = tmp_path / "killed.training" / checkpoint.STATE_FILE

    def two_steps_saved() -> bool:
        try:
            return json.loads(state.read_text())["step"] >= 2
        except (OSError, ValueError):
            return False

    assert kill_when(command(tmp_path / "killed"), tmp_path, two_steps_saved, poll_s=0.01), "the run ended before it could be killed"
    assert not (tmp_path / "killed").exists()
    resumed = subprocess.run(command(tmp_path / "killed", "--resume"), capture_output=True, text=True, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    whole = subprocess.run(command(tmp_path / "whole"), capture_output=True, text=True, cwd=tmp_path)
    assert whole.returncode == 0, whole.stderr
    got, expected = mx.load(str(tmp_path / "killed" / "model.safetensors")), mx.load(str(tmp_path / "whole" / "model.safetensors"))
    assert got.keys() == expected.keys()
    for name in expected:
        np.testing.assert_allclose(np.array(got[name]), np.array(expected[name]), rtol=0, atol=1e-6, err_msg=name)
