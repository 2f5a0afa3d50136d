"""Frozen CLIP in Flax: towers, checkpoint loading, tokenizer, preprocessing.

    from aape_jax import clip
    model = clip.load("path/or/hub-id")
    zi = model.encode_image(model.preprocess(images))
    zt = model.encode_text(model.tokenize(["a photo of a cat."]))
"""

from aape_jax.clip.config import CLIPConfig, TextConfig, VisionConfig
from aape_jax.clip.frozen import FrozenCLIP
from aape_jax.clip.loader import load
from aape_jax.clip.model import CLIP

__all__ = ["CLIP", "CLIPConfig", "FrozenCLIP", "TextConfig", "VisionConfig", "load"]
