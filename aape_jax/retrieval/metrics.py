"""Image-text retrieval Recall@K with the standard (Karpathy) protocol, in memory-bounded blocks.

Protocol: every caption belongs to exactly one image (`txt_to_img`).
- image -> text: an image is retrieved correctly at K if ANY of its captions is
  among the top K texts; its rank is that of its best-scored caption.
- text -> image: a caption is correct at K if its one image is among the top K images.
R@K is the percentage (0-100) of queries with rank < K (ranks count from 0).

Ties (our choice, a keyword everywhere): "pessimistic" (default) counts every
wrong item scoring >= the best correct one as ranked above it, so a collapsed
model whose scores are all equal gets R@K ~ 0, never 100; "optimistic" counts
only wrong items scoring strictly higher. With continuous scores ties do not
occur and both agree; argsort-based implementations break ties by index order,
which lies between the two.

The similarity is computed in row blocks of images: at most `block x n_txt`
scores exist at once (1024 x 25,000 fp32 = 100 MB for COCO 5k), and every block
is computed twice with identical shapes, so the correct-pair scores the ranks
compare against are bit-identical to the ones in the blocks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

__all__ = ["recall_at_k", "similarity_ranks", "ranks_from_blocks", "recalls_from_ranks", "TIES"]

TIES = ("pessimistic", "optimistic")


def _check_txt_to_img(txt_to_img: np.ndarray, n_img: int, n_txt: int) -> np.ndarray:
    t = np.asarray(txt_to_img)
    if t.ndim != 1 or len(t) != n_txt:
        raise ValueError(f"txt_to_img must be [n_txt={n_txt}], got shape {t.shape}")
    if not np.issubdtype(t.dtype, np.integer):
        raise ValueError(f"txt_to_img must hold integer image indices, got {t.dtype}")
    if n_txt and (t.min() < 0 or t.max() >= n_img):
        bad = int(np.argwhere((t < 0) | (t >= n_img))[0, 0])
        raise ValueError(f"caption {bad} points to image {int(t[bad])}, but there are {n_img} images")
    counts = np.bincount(t, minlength=n_img)
    if (counts == 0).any():
        empty = np.flatnonzero(counts == 0)
        raise ValueError(f"{len(empty)} image(s) have no caption (e.g. image {int(empty[0])}); "
                         "image->text recall is undefined for them")
    return t.astype(np.int64)


def ranks_from_blocks(sim_rows: Callable[[int, int], np.ndarray], n_img: int, n_txt: int,
                      txt_to_img: Sequence[int] | np.ndarray, *, block: int = 1024,
                      ties: str = "pessimistic") -> tuple[np.ndarray, np.ndarray]:
    """Ranks from a similarity given by row blocks.

    Args:
      sim_rows: `(lo, hi) -> sim[lo:hi]`, float [hi - lo, n_txt]; it must give
        identical values when called twice with the same arguments.
      n_img, n_txt: matrix shape.
      txt_to_img: the image of each caption [n_txt].
      block: image rows per block.
      ties: "pessimistic" or "optimistic" (module docstring).

    Returns:
      (i2t ranks int64 [n_img], t2i ranks int64 [n_txt]), 0 = first.

    Raises:
      ValueError: an image without caption, a caption pointing outside the
        images, a non-finite score, or a bad argument.
    """
    if ties not in TIES:
        raise ValueError(f"ties is {ties!r}; choose one of {TIES}")
    if block < 1:
        raise ValueError(f"block must be >= 1, got {block}")
    t2i = _check_txt_to_img(txt_to_img, n_img, n_txt)
    beats = np.greater_equal if ties == "pessimistic" else np.greater
    cols = np.arange(n_txt)

    # Pass 1: each caption's correct score, and each image's best correct score.
    pos = np.empty(n_txt, np.float64)
    for lo in range(0, n_img, block):
        hi = min(lo + block, n_img)
        s = np.asarray(sim_rows(lo, hi))
        if s.shape != (hi - lo, n_txt):
            raise ValueError(f"similarity rows {lo}:{hi} have shape {s.shape}, expected {(hi - lo, n_txt)}")
        if not np.isfinite(s).all():
            r, c = np.argwhere(~np.isfinite(s))[0]
            raise ValueError(f"non-finite similarity {s[r, c]} at image {lo + r}, caption {c}")
        mine = (t2i >= lo) & (t2i < hi)
        pos[mine] = s[t2i[mine] - lo, cols[mine]]
    best = np.full(n_img, -np.inf)
    np.maximum.at(best, t2i, pos)

    # Pass 2: count the wrong items that beat the correct ones.
    i2t_rank = np.empty(n_img, np.int64)
    t2i_rank = np.zeros(n_txt, np.int64)
    for lo in range(0, n_img, block):
        hi = min(lo + block, n_img)
        s = np.asarray(sim_rows(lo, hi))  # [b, n_txt]
        wrong = t2i[None, :] != np.arange(lo, hi)[:, None]  # [b, n_txt]
        i2t_rank[lo:hi] = (beats(s, best[lo:hi, None]) & wrong).sum(1)
        t2i_rank += (beats(s, pos[None, :]) & wrong).sum(0)
    return i2t_rank, t2i_rank


def similarity_ranks(img_emb: np.ndarray, txt_emb: np.ndarray, txt_to_img: Sequence[int] | np.ndarray, *,
                     block: int = 1024, ties: str = "pessimistic") -> tuple[np.ndarray, np.ndarray]:
    """Ranks from embeddings (dot product; normalise them first for cosine), never more than block x n_txt at once.

    img_emb [n_img, D], txt_emb [n_txt, D] -> (i2t ranks [n_img], t2i ranks [n_txt]).
    """
    img = np.asarray(img_emb, np.float32)
    txt = np.asarray(txt_emb, np.float32)
    if img.ndim != 2 or txt.ndim != 2 or img.shape[1] != txt.shape[1]:
        raise ValueError(f"embeddings must be [n_img, D] and [n_txt, D], got {img.shape} and {txt.shape}")
    return ranks_from_blocks(lambda lo, hi: img[lo:hi] @ txt.T, len(img), len(txt), txt_to_img, block=block,
                             ties=ties)


def recalls_from_ranks(i2t_rank: np.ndarray, t2i_rank: np.ndarray, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """{"i2t_r1": %, ..., "t2i_r10": %} from ranks (0 = first)."""
    out = {}
    for direction, ranks in (("i2t", i2t_rank), ("t2i", t2i_rank)):
        for k in ks:
            out[f"{direction}_r{k}"] = float(100.0 * np.mean(np.asarray(ranks) < k))
    return out


def recall_at_k(sim: np.ndarray, txt_to_img: Sequence[int] | np.ndarray, ks: Sequence[int] = (1, 5, 10), *,
                ties: str = "pessimistic", block: int = 1024) -> dict[str, float]:
    """R@K both directions (percent) from a full similarity matrix sim [n_img, n_txt]."""
    sim = np.asarray(sim)
    if sim.ndim != 2:
        raise ValueError(f"sim must be [n_img, n_txt], got shape {sim.shape}")
    i2t, t2i = ranks_from_blocks(lambda lo, hi: sim[lo:hi], sim.shape[0], sim.shape[1], txt_to_img, block=block,
                                 ties=ties)
    return recalls_from_ranks(i2t, t2i, ks)
