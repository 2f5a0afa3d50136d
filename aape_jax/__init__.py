"""aape_jax: AAPE (Aggregate-and-Adapt Prompt Embedding) for a frozen CLIP, in JAX/Flax."""
