"""The converter: Hugging Face EmbeddingGemma (sentence-transformers layout) -> MLX model folder.

Installed as ``mlx_embedgemma.convert``; the runtime never imports it.
"""

from .converter import ConversionReport, convert
from .output import OutputExistsError, OutputWriteError
from .source import SourceError

__all__ = ["convert", "ConversionReport", "SourceError", "OutputExistsError", "OutputWriteError"]
