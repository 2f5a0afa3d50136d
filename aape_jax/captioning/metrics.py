"""Caption metrics: CIDEr-D (ours, equal to pycocoevalcap's), COCO's BLEU-4/METEOR/CIDEr-D, CLIP-S, RefCLIP-S.

All scores are on their tools' own scale: CIDEr-D is ~1.0 for good COCO
captions and BLEU-4/METEOR lie in [0, 1] (papers report all three x100, e.g.
"CIDEr 110.2"); CLIP-S and RefCLIP-S lie in [0, 2.5].

- `cider_d` is our own CIDEr-D, written from the facts of pycocoevalcap's
  ``cider/cider_scorer.py`` (n-grams 1..4, idf over the reference sets of the
  corpus, clipped tf-idf cosine, Gaussian length penalty with sigma 6, x10) and
  equal to pycocoevalcap's ``Cider().compute_score`` on the same tokens. It needs
  no Java; by default it tokenises with `simple_tokenize` (ours, not PTB), so for
  numbers comparable with papers give it `tokenize_ptb`'s output with
  ``tokenize=False``, or use `coco_caption_scores`.
- `coco_caption_scores` runs the COCO caption evaluation itself through
  pycocoevalcap (PTB tokenizer, Bleu(4), Meteor, Cider), which needs Java and
  ``pip install -e ".[captioning]"``.
- `clip_s` / `refclip_s` follow Hessel et al. 2021 (CLIPScore) and the official
  code (github.com/jmhessel/clipscore ``clipscore.py``) on features the caller
  encoded: every caption (candidates and references alike) is encoded as
  ``CLIP_S_PREFIX + " " + caption``; published values use CLIP ViT-B/32.
"""

from __future__ import annotations

import math
import re
import shutil
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from aape_jax.numerics import l2_normalize

# CLIPScore's text prompt: the official code encodes `"A photo depicts " + caption` for the
# candidates and the references (its CLIPCapDataset adds the space).
CLIP_S_PREFIX = "A photo depicts"
# CLIPScore's rescaling w, which stretches CLIP's typical cosines (~0.2-0.4) towards [0, 1].
CLIP_S_WEIGHT = 2.5

# CIDEr-D as pycocoevalcap's Cider() runs it: n-grams up to 4, length penalty sigma 6, x10.
CIDER_MAX_N = 4
CIDER_SIGMA = 6.0
CIDER_SCALE = 10.0

_INSTALL_HINT = 'pip install -e ".[captioning]"'
_JAVA_HINT = ("install a Java runtime (e.g. `apt-get install default-jre-headless` on Debian/Ubuntu; "
              "OpenJDK 17 is known to work) and make sure `java` is on PATH")
# How many offending ids an error message lists.
_IDS_SHOWN = 10

# Anything that is not a word character or whitespace is punctuation to `simple_tokenize`.
_NON_WORD = re.compile(r"[^\w\s]")
# pycocoevalcap writes one caption per line and pairs the tokenizer's lines with captions by
# position; it replaces only "\n", but Java also breaks lines at these, which silently shifts
# every later caption onto the wrong id. As whitespace they mean nothing to PTB tokens.
_LINE_BREAKS = re.compile("[\r\n\v\f\x85\u2028\u2029]")

_NGram = tuple[str, ...]


# ----------------------------------------------------------------------------- input checks


def _name_ids(ids: Sequence[Any]) -> str:
    shown = ", ".join(repr(i) for i in ids[:_IDS_SHOWN])
    return shown + (f" and {len(ids) - _IDS_SHOWN} more" if len(ids) > _IDS_SHOWN else "")


def _check_captions(candidates: Mapping[Any, str], references: Mapping[Any, Sequence[str]]) -> None:
    """Same ids on both sides, one str candidate and >= 1 str reference per id; else an error naming them."""
    if not candidates:
        raise ValueError("no candidate captions to score")
    only_candidates = [i for i in candidates if i not in references]
    only_references = [i for i in references if i not in candidates]
    if only_candidates or only_references:
        parts = []
        if only_candidates:
            parts.append(f"{len(only_candidates)} ids without references: {_name_ids(only_candidates)}")
        if only_references:
            parts.append(f"{len(only_references)} ids without a candidate: {_name_ids(only_references)}")
        raise ValueError("candidates and references must cover the same ids; " + "; ".join(parts))
    for i, caption in candidates.items():
        if not isinstance(caption, str):
            raise TypeError(f"the candidate for id {i!r} must be one str, got {type(caption).__name__} {caption!r}")
    _check_references(references)


def _check_references(references: Mapping[Any, Sequence[str]]) -> None:
    for i, refs in references.items():
        if isinstance(refs, str):
            raise TypeError(f"the references for id {i!r} must be a list of str, got the str {refs!r}")
        if len(refs) == 0:
            raise ValueError(f"id {i!r} has an empty reference list")
        for r in refs:
            if not isinstance(r, str):
                raise TypeError(f"a reference for id {i!r} is {type(r).__name__} {r!r}, not str")


# ----------------------------------------------------------------------------- CIDEr-D (ours)


def simple_tokenize(text: str) -> list[str]:
    """Our tokenisation (not PTB's): lowercase, every non-word character to a space, split on whitespace.

    "A man's red-and-white hat." -> ["a", "man", "s", "red", "and", "white", "hat"],
    where PTB gives "a man 's red-and-white hat"; scores on these tokens are close
    to, not equal to, the published protocol's.
    """
    return _NON_WORD.sub(" ", text.lower()).split()


def _ngram_counts(words: Sequence[str]) -> Counter[_NGram]:
    """Counts of every 1..4-gram of `words` (pycocoevalcap's `precook`)."""
    counts: Counter[_NGram] = Counter()
    for n in range(1, CIDER_MAX_N + 1):
        for start in range(len(words) - n + 1):
            counts[tuple(words[start:start + n])] += 1
    return counts


def _document_frequency(reference_counts: Sequence[Sequence[Counter[_NGram]]]) -> Counter[_NGram]:
    """For each n-gram, in how many images' reference sets it occurs (candidates do not count)."""
    df: Counter[_NGram] = Counter()
    for refs in reference_counts:
        df.update({g for counts in refs for g in counts})
    return df


class _TfIdf:
    """One caption's tf-idf vectors per n, their L2 norms, and its length as pycocoevalcap counts it.

    Attributes:
      vec: vec[n-1] maps each n-gram to tf * (log #images - log max(1, df)).
      norm: [CIDER_MAX_N] L2 norm of each vec[n-1], before any clipping.
      length: the number of *bigrams* (pycocoevalcap's `counts2vec` tests the 0-based
        n-gram index `n == 1`), i.e. words - 1, and 0 for an empty caption. Kept for
        fidelity: length differences equal word-count differences except next to an
        empty caption, whose similarities are 0 anyway.
    """

    def __init__(self, counts: Counter[_NGram], df: Counter[_NGram], log_num_images: float):
        self.vec: list[dict[_NGram, float]] = [{} for _ in range(CIDER_MAX_N)]
        for gram, tf in counts.items():
            # An n-gram absent from every reference set has df 0 and gets the full idf.
            self.vec[len(gram) - 1][gram] = tf * (log_num_images - math.log(max(1.0, df[gram])))
        self.norm = [math.sqrt(sum(w * w for w in v.values())) for v in self.vec]
        self.length = sum(tf for gram, tf in counts.items() if len(gram) == 2)


def _cider_d_similarity(cand: _TfIdf, ref: _TfIdf) -> list[float]:
    """Per n: clipped cosine (the "D": candidate weights capped at the reference's) x length penalty."""
    delta = cand.length - ref.length
    penalty = math.exp(-(delta * delta) / (2 * CIDER_SIGMA**2))
    sims = []
    for n in range(CIDER_MAX_N):
        r = ref.vec[n]
        dot = sum(min(w, r.get(g, 0.0)) * r.get(g, 0.0) for g, w in cand.vec[n].items())
        if cand.norm[n] != 0 and ref.norm[n] != 0:
            dot /= cand.norm[n] * ref.norm[n]
        sims.append(dot * penalty)
    return sims


def cider_d(candidates: Mapping[Any, str], references: Mapping[Any, Sequence[str]], *,
            tokenize: bool = True) -> float:
    """CIDEr-D of a corpus of captions, on pycocoevalcap's scale (~1.0 good; papers report x100).

    Per image: for each reference, the mean over n = 1..4 of the clipped tf-idf
    cosine times exp(-(len_c - len_r)^2 / (2 * 6^2)); those summed, divided by the
    number of references, times 10. The corpus score is the mean over images.
    The idf comes from the corpus itself (document = an image's reference set), so
    a one-image corpus scores 0 and the score depends on which images are scored
    together.

    Args:
      candidates: image id -> the candidate caption.
      references: image id -> that image's reference captions (>= 1); same ids.
      tokenize: True: texts go through `simple_tokenize` (ours). False: they are
        already tokenised (e.g. `tokenize_ptb`'s output) and are only split on
        whitespace, exactly as pycocoevalcap does.

    Raises:
      ValueError: no candidates, mismatched ids (up to 10 named), or an empty
        reference list (its id named).
      TypeError: a candidate that is not one str, or references that are not a list of str.
    """
    _check_captions(candidates, references)
    split = simple_tokenize if tokenize else str.split
    ids = list(candidates)
    cand_counts = [_ngram_counts(split(candidates[i])) for i in ids]
    ref_counts = [[_ngram_counts(split(r)) for r in references[i]] for i in ids]
    df = _document_frequency(ref_counts)
    log_num_images = math.log(len(ids))
    scores = []
    for cand, refs in zip(cand_counts, ref_counts):
        c = _TfIdf(cand, df, log_num_images)
        per_n = np.zeros(CIDER_MAX_N)  # [4], summed over the references
        for ref in refs:
            per_n += _cider_d_similarity(c, _TfIdf(ref, df, log_num_images))
        scores.append(float(np.mean(per_n)) / len(refs) * CIDER_SCALE)
    return float(np.mean(scores))


# ----------------------------------------------------------------------------- pycocoevalcap


def _require_java() -> None:
    """pycocoevalcap's PTB tokenizer and METEOR are Java programs; fail before any work without one."""
    if shutil.which("java") is None:
        raise RuntimeError(f"the COCO caption evaluation (PTB tokenizer, METEOR) needs Java, and no `java` "
                           f"executable is on PATH: {_JAVA_HINT}")


def _import_pycocoevalcap() -> tuple[Any, Any, Any, Any]:
    """pycocoevalcap's (bleu, meteor, cider, ptbtokenizer) modules, or an ImportError saying how to install them."""
    try:
        from pycocoevalcap.bleu import bleu
        from pycocoevalcap.cider import cider
        from pycocoevalcap.meteor import meteor
        from pycocoevalcap.tokenizer import ptbtokenizer
    except ImportError as e:
        raise ImportError(f"the COCO caption evaluation needs pycocoevalcap: {_INSTALL_HINT} "
                          f"(or `pip install pycocoevalcap>=1.2`); importing it failed: {e}") from e
    return bleu, meteor, cider, ptbtokenizer


def tokenize_ptb(texts: Mapping[Any, Sequence[str]]) -> dict[Any, list[str]]:
    """Texts through pycocoevalcap's PTBTokenizer (Stanford CoreNLP 3.4.1, in Java), as COCO evaluates.

    Lowercased, PTB-split ("man's" -> "man 's") and with PTB punctuation tokens
    removed; note that pycocoevalcap keeps "-lrb-"/"-rrb-" for brackets (its list
    has them in capitals, the output is lowercased). Line breaks inside a caption
    become spaces first (pycocoevalcap does this for "\\n" only; "\\r" or U+2028
    would misalign its output).

    Args:
      texts: id -> captions (a list per id, even for a single candidate).

    Returns:
      id -> the tokenised captions, space-joined, in the same order.

    Raises:
      RuntimeError: no `java` on PATH, or the tokenizer returned a different number of lines.
      ImportError: pycocoevalcap is not installed.
      TypeError: a str where a list of captions belongs.
    """
    _require_java()
    _, _, _, ptbtokenizer = _import_pycocoevalcap()
    for i, captions in texts.items():
        if isinstance(captions, str):
            raise TypeError(f"the texts for id {i!r} must be a list of str, got the str {captions!r}")
    wanted = {i: [{"caption": _LINE_BREAKS.sub(" ", c)} for c in captions]
              for i, captions in texts.items() if len(captions)}
    tokenized = ptbtokenizer.PTBTokenizer().tokenize(wanted) if wanted else {}
    out = {i: list(tokenized.get(i, [])) for i in texts}
    # A lost line would shift captions the same way; count them.
    short = [i for i in texts if len(out[i]) != len(texts[i])]
    if short:
        raise RuntimeError(f"the PTB tokenizer returned a different number of captions for ids {_name_ids(short)}")
    return out


def coco_caption_scores(candidates: Mapping[Any, str], references: Mapping[Any, Sequence[str]]) -> dict[str, float]:
    """BLEU-4, METEOR and CIDEr-D as the COCO caption evaluation computes them (pycocoevalcap).

    PTB tokenisation of candidates and references first, then Bleu(4) (its 4th
    value, "closest" reference length), Meteor (METEOR 1.5) and Cider, as
    pycocoevalcap's COCOEvalCap does. All on pycocoevalcap's scale (papers: x100).

    Args:
      candidates: image id -> the candidate caption.
      references: image id -> that image's reference captions (>= 1); same ids.

    Returns:
      {"bleu_4": ..., "meteor": ..., "cider_d": ...}

    Raises:
      RuntimeError: no `java` on PATH (checked first).
      ImportError: pycocoevalcap is not installed.
      ValueError / TypeError: as `cider_d`.
    """
    return coco_caption_scores_by_subset(candidates, references, {"all": list(candidates)})["all"]


def coco_caption_scores_by_subset(candidates: Mapping[Any, str], references: Mapping[Any, Sequence[str]],
                                  subsets: Mapping[str, Sequence[Any]]) -> dict[str, dict[str, float]]:
    """`coco_caption_scores` of each subset of the ids (e.g. NoCaps' domains), each scored as a corpus of
    its own, with one PTB tokenisation and one METEOR process for all (each Java start costs seconds).

    Raises:
      as `coco_caption_scores`; ValueError for a subset id outside `candidates`, or an empty subset.
    """
    _require_java()
    bleu, meteor, cider, _ = _import_pycocoevalcap()
    _check_captions(candidates, references)
    for name, ids in subsets.items():
        unknown = [i for i in ids if i not in candidates]
        if unknown or not len(ids):
            raise ValueError(f"subset {name!r} is empty or names ids without a candidate: {_name_ids(unknown)}")
    res = tokenize_ptb({i: [c] for i, c in candidates.items()})
    gts = tokenize_ptb({i: list(references[i]) for i in candidates})
    meteor_scorer = meteor.Meteor()  # starts a Java process, ended when the scorer is deleted
    out = {}
    try:
        for name, ids in subsets.items():
            sub_gts, sub_res = {i: gts[i] for i in ids}, {i: res[i] for i in ids}
            bleu_scores, _ = bleu.Bleu(4).compute_score(sub_gts, sub_res, verbose=0)
            meteor_score, _ = meteor_scorer.compute_score(sub_gts, sub_res)
            cider_score, _ = cider.Cider().compute_score(sub_gts, sub_res)
            out[name] = {"bleu_4": float(bleu_scores[3]), "meteor": float(meteor_score),
                         "cider_d": float(cider_score)}
    finally:
        # A failing compute_score keeps the scorer's lock, and its __del__ (which ends Java)
        # waits for that lock: release it, or an error would turn into a hang.
        if meteor_scorer.lock.locked():
            meteor_scorer.lock.release()
        del meteor_scorer
    return out


# ----------------------------------------------------------------------------- CLIP-S, RefCLIP-S


def _unit_rows(x: np.ndarray, name: str) -> np.ndarray:
    """float64 copy of `x` with each last-axis vector at unit norm; all-zero or non-finite vectors are errors.

    A zero CLIP embedding means the encoding went wrong upstream; scoring it as cos 0 would hide that.
    """
    x = np.asarray(x, dtype=np.float64)
    for bad, what in ((~np.isfinite(x).all(axis=-1), "non-finite values"), (~x.any(axis=-1), "all-zero feature vectors")):
        if bad.any():
            where = [tuple(int(j) for j in idx) for idx in np.argwhere(bad)[:_IDS_SHOWN]]
            raise ValueError(f"{name} has {what} at {where}")
    return l2_normalize(x)


def _check_ndim(x: np.ndarray, ndim: int, name: str, shape: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != ndim:
        raise ValueError(f"{name} must be {shape}, got shape {x.shape}")
    return x


def _clip_s_per_image(image_features: np.ndarray, caption_features: np.ndarray) -> np.ndarray:
    """[N] w * max(cos(image, caption), 0)."""
    image = _check_ndim(image_features, 2, "image_features", "[N, D]")
    caption = _check_ndim(caption_features, 2, "caption_features", "[N, D]")
    if image.shape != caption.shape:
        raise ValueError(f"image_features {image.shape} and caption_features {caption.shape} must have one shape [N, D]")
    if image.shape[0] == 0:
        raise ValueError("no images to score (N = 0)")
    cos = np.sum(_unit_rows(image, "image_features") * _unit_rows(caption, "caption_features"), axis=-1)  # [N]
    return CLIP_S_WEIGHT * np.maximum(cos, 0.0)


def clip_s(image_features: np.ndarray, caption_features: np.ndarray) -> float:
    """CLIP-S: mean over images of 2.5 * max(cos(image, caption), 0), in [0, 2.5].

    Args:
      image_features: [N, D] CLIP image embeddings (any norm; L2-normalised here).
      caption_features: [N, D] CLIP text embeddings of `CLIP_S_PREFIX + " " + caption`
        for each image's candidate (any norm). Published values use CLIP ViT-B/32.
    """
    return float(np.mean(_clip_s_per_image(image_features, caption_features)))


def refclip_s(image_features: np.ndarray, caption_features: np.ndarray, reference_features: np.ndarray,
              reference_mask: np.ndarray) -> float:
    """RefCLIP-S: mean over images of the harmonic mean of CLIP-S and the best reference similarity.

    Per image, H(a, b) = 2ab / (a + b) with a = 2.5 * max(cos(image, candidate), 0)
    (CLIP-S, w-scaled, as the official code feeds it) and
    b = max(max over valid references of cos(candidate, reference), 0) (not scaled);
    H is 0 when a + b is 0 (the official code gives NaN there). The paper clips b
    at 0; the official code does not (which only differs when every reference has a
    negative cosine). The corpus score is the mean of the per-image H, as officially.

    Args:
      image_features: [N, D] CLIP image embeddings.
      caption_features: [N, D] CLIP text embeddings of the prefixed candidates.
      reference_features: [N, R, D] CLIP text embeddings of the prefixed references
        (`CLIP_S_PREFIX + " " + reference`, as the official code encodes them), padded to R.
      reference_mask: [N, R] bool, True where a reference is real; each row needs one.
    """
    clip_part = _clip_s_per_image(image_features, caption_features)  # [N]
    refs = _check_ndim(reference_features, 3, "reference_features", "[N, R, D]")
    mask = _check_ndim(reference_mask, 2, "reference_mask", "[N, R]")
    n, d = np.shape(caption_features)
    if refs.shape[0] != n or refs.shape[2] != d or mask.shape != refs.shape[:2]:
        raise ValueError(f"with N={n}, D={d}: reference_features must be [N, R, D] and reference_mask [N, R], "
                         f"got {refs.shape} and {mask.shape}")
    if mask.dtype != np.bool_:
        raise TypeError(f"reference_mask must be bool, got {mask.dtype}")
    empty = np.flatnonzero(~mask.any(axis=1))
    if empty.size:
        raise ValueError(f"images without any reference (all-False reference_mask rows): {empty[:_IDS_SHOWN].tolist()}")
    # Padding rows may be zeros; give them a harmless unit vector before normalising, then mask them out.
    refs = np.where(mask[..., None], refs, 1.0)
    caption = _unit_rows(caption_features, "caption_features")  # [N, D]
    cos = np.einsum("nd,nrd->nr", caption, _unit_rows(refs, "reference_features"))  # [N, R]
    best_ref = np.maximum(np.max(np.where(mask, cos, -np.inf), axis=1), 0.0)  # [N]
    total = clip_part + best_ref
    harmonic = np.divide(2 * clip_part * best_ref, total, out=np.zeros_like(total), where=total > 0)  # [N]
    return float(np.mean(harmonic))
