"""Frozen causal language models in Flax: GPT-2, GPT-J and the Llama family (Llama, Mistral, Qwen2).

    from aape_jax import lm
    model = lm.load("path/or/hub-id")
    ids, mask = model.encode(["a photo of"])
    logits = model.logits(ids, mask)                          # [N, L, V] float32
    embeds = model.embed(ids)                                 # the soft-prompt seam
    tokens = model.generate(ids, mask, max_new_tokens=20, method="beam", num_beams=4)
    texts = model.decode(tokens)
"""

from aape_jax.lm.config import LMConfig, read_config
from aape_jax.lm.language_model import LanguageModel
from aape_jax.lm.loader import load
from aape_jax.lm.model import CausalLM

__all__ = ["CausalLM", "LMConfig", "LanguageModel", "load", "read_config"]
