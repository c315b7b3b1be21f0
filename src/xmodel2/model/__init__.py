"""The model family: config and presets, the μP transformer, μP rules, model folders, generation."""

from xmodel2.model.config import ModelConfig, MupConfig, preset
from xmodel2.model.transformer import KVCache, Transformer

__all__ = ["ModelConfig", "MupConfig", "preset", "Transformer", "KVCache"]
