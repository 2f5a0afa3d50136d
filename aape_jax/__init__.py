"""aape_jax: AAPE (Aggregate-and-Adapt Prompt Embedding) for a frozen CLIP, in JAX/Flax.

    from aape_jax import clip, AAPEClassifier
"""

from typing import Any

__all__ = ["AAPEClassifier", "ExportedClassifier"]


def __getattr__(name: str) -> Any:
    # Lazy, so `from aape_jax import clip` does not import the trainer's dependencies.
    if name in __all__:
        from aape_jax import inference

        return getattr(inference, name)
    raise AttributeError(f"module 'aape_jax' has no attribute {name!r}")
