"""AAPE for image-text retrieval (COCO, Flickr30k): captions as per-image prompts, Recall@K evaluation.

    from aape_jax.retrieval import recall_at_k, similarity_ranks
    recall_at_k(sim, txt_to_img)            # {"i2t_r1": %, ..., "t2i_r10": %}, sim [n_img, n_txt]

Training: `python -m aape_jax.main --config experiments/aape_retrieval.py:runlocal --workdir DIR`
(`aape_jax.retrieval.train.train_and_evaluate`).
"""

from aape_jax.retrieval.metrics import TIES, ranks_from_blocks, recall_at_k, recalls_from_ranks, similarity_ranks

__all__ = ["TIES", "ranks_from_blocks", "recall_at_k", "recalls_from_ranks", "similarity_ranks"]
