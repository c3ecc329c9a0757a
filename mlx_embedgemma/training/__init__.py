"""Fine-tuning EmbeddingGemma on (anchor, positive[, negatives]) pairs: `mlx-embedgemma finetune`.

Modelled on sentence-transformers' training (MultipleNegativesRankingLoss inside MatryoshkaLoss, its
cached GradCache variant, a no-duplicates batch sampler, query/document prompts mapped onto the columns)
and on mlx-lm's tuner (LoRA). Not imported by ``import mlx_embedgemma``: it is only for training.
"""
