"""The Flax module of a checkpoint's family: `CLIP` or `SigLIP`, which share their methods."""

from __future__ import annotations

from aape_jax.clip.config import CLIPConfig
from aape_jax.clip.model import CLIP
from aape_jax.clip.siglip import SigLIP

Backbone = CLIP | SigLIP


def backbone(config: CLIPConfig, **kwargs) -> Backbone:
    """`SigLIP(config, **kwargs)` for family "siglip", else `CLIP(config, **kwargs)`."""
    return SigLIP(config, **kwargs) if config.family == "siglip" else CLIP(config, **kwargs)
