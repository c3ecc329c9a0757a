"""A tiny random EmbeddingGemma in sentence-transformers layout, built with the reference libraries.

Same architecture as the real model at toy sizes: 4 layers (one full-attention layer), GQA, a sliding
window of 8 (so ±4 positions once bidirectional), Dense 64->128->64, random norm weights, and a
SentencePiece tokenizer trained here. Needs torch, transformers and sentence-transformers (test extras).
"""

from __future__ import annotations

import shutil
from pathlib import Path

PROMPTS = {"query": "task: search result | query: ", "document": "title: none | text: ", "STS": "task: sentence similarity | query: "}
MAX_SEQ_LENGTH = 80
CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "hello world, mars is the red planet and venus is earth's twin",
    "task: search result | query: title: none | text: sentence similarity",
    "üñíçødé text ok 123 456 789 — emoji 🚀 and 中文 字符",
]


# Matryoshka sizes of the tiny_matryoshka fixture (its width is 64).
SMALL_DIMS = [64, 32, 16]

def build_tiny_source(dest: Path) -> Path:
    import sentencepiece as spm
    import torch
    from sentence_transformers import SentenceTransformer
    try:
        from sentence_transformers.sentence_transformer import modules as models
    except ImportError:  # sentence-transformers < 6
        from sentence_transformers import models
    from transformers import Gemma3TextConfig, Gemma3TextModel, GemmaTokenizer

    dest.mkdir(parents=True, exist_ok=True)
    work = dest / "_build"
    work.mkdir(exist_ok=True)
    (work / "corpus.txt").write_text("\n".join(CORPUS * 20), encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(work / "corpus.txt"), model_prefix=str(work / "tok"), vocab_size=512, hard_vocab_limit=False, model_type="unigram",
        pad_id=0, eos_id=1, bos_id=2, unk_id=3, byte_fallback=True, character_coverage=1.0, minloglevel=2,
    )
    config = Gemma3TextConfig(
        vocab_size=512, hidden_size=64, intermediate_size=96, num_hidden_layers=4, num_attention_heads=2,
        num_key_value_heads=1, head_dim=32, sliding_window=8, max_position_embeddings=96, query_pre_attn_scalar=32,
        layer_types=["sliding_attention", "sliding_attention", "full_attention", "sliding_attention"],
        use_bidirectional_attention=True, pad_token_id=0, bos_token_id=2, eos_token_id=1,
    )
    torch.manual_seed(0)
    model = Gemma3TextModel(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:  # Gemma initializes norms at 0 (scale 1): randomize so they are tested
                p.normal_(0.0, 0.3)
            elif "embed" in name:
                p.normal_(0.0, 0.5)
    hf = work / "hf"
    model.save_pretrained(hf)
    # sentence-transformers wants a tokenizer in the folder; the tests feed token ids directly.
    GemmaTokenizer(vocab_file=str(work / "tok.model")).save_pretrained(hf)
    identity = torch.nn.Identity()
    st = SentenceTransformer(
        modules=[
            models.Transformer(str(hf), max_seq_length=MAX_SEQ_LENGTH),
            models.Pooling(64, "mean"),
            models.Dense(64, 128, bias=False, activation_function=identity),
            models.Dense(128, 64, bias=False, activation_function=identity),
            models.Normalize(),
        ],
        prompts=PROMPTS,
        device="cpu",
    )
    source = dest / "source"
    st.save(str(source))
    shutil.copyfile(work / "tok.model", source / "tokenizer.model")
    shutil.rmtree(work)
    return source


def reference_embeddings(source: Path, ids: list[list[int]]):
    """sentence-transformers' embeddings for given token ids, as one right-padded batch."""
    import numpy as np
    import torch
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(source), device="cpu")
    with torch.no_grad():
        out = st(reference_features(ids))
    return np.asarray(out["sentence_embedding"].float().numpy())


def reference_features(ids: list[list[int]]) -> dict:
    """Token ids as one right-padded batch of sentence-transformers features (input_ids, attention_mask)."""
    import torch

    width = max(map(len, ids))
    input_ids = torch.zeros((len(ids), width), dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for row, seq in enumerate(ids):
        input_ids[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = 1
    return {"input_ids": input_ids, "attention_mask": mask}
