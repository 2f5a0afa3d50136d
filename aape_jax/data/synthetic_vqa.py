"""An offline VQA set about the synthetic captioned scenes (`aape_jax.data.synthetic_captions`).

Every image of the captioned set (1-3 coloured shapes) gets up to four questions,
in VQAv2's three answer types:

- "how many shapes are there?" (number): always;
- "what colour is the {shape}?" (other): about a shape that appears once in the scene;
- "what shape is the {colour} one?" (other): about a colour that appears once;
- "is there a {colour} {shape}?" (yes/no): half the time about an object in the scene
  ("yes"), otherwise about one that is not ("no"), usually a near miss (a colour or a
  shape of the scene, in another pairing).

Each question has ten "human" answers, as in VQAv2: 7-10 give the true answer in its
usual form (digits for counts, as VQAv2's annotators mostly write them), the others a
paraphrase or a mistake (a number word or a count off by one, a neighbouring colour,
a similar shape, the opposite yes/no). So the VQA accuracy of an answer,
min(#humans that gave it / 3, 1) averaged over leave-one-out subsets, is graded rather
than 0/1, and a near miss such as "two" for "2" earns partial credit.

Images and keys are the captioned set's (`captioned_scenes`) for the same seed, split
and index: the same in-memory arrays, so cached image features are shared. The
questions and answers come from a second generator seeded by (seed, split, index),
so they are deterministic, never change the images, and a set is a prefix of a larger
one.
"""

from __future__ import annotations

import numpy as np

from aape_jax.data.synthetic import COLORS, SHAPES
from aape_jax.data.synthetic_captions import captioned_scenes
from aape_jax.data.vqa import VQAQuestion

__all__ = ["make_vqa_dataset", "ANSWERS_PER_QUESTION"]

ANSWERS_PER_QUESTION = 10
# How many of the ten humans give the true answer in its usual form, and how often.
_AGREEING = (10, 9, 8, 7)
_AGREEING_P = (0.3, 0.3, 0.25, 0.15)
# A fixed tag in the question generator's seed, so it never equals the image generator's
# ([seed, split, index]) and drawing questions cannot shift any image.
_QA_STREAM = 7
_SPLIT_IDS = {"train": 0, "test": 1}
_NUMBER_WORDS = {0: "zero", 1: "one", 2: "two", 3: "three", 4: "four"}
# What a human might answer instead of the true colour / shape: a paraphrase or a plausible mistake.
_COLOUR_ALTERNATIVES: dict[str, tuple[str, ...]] = {
    "red": ("dark red", "orange", "pink"),
    "blue": ("dark blue", "purple", "navy"),
    "green": ("dark green", "lime", "teal"),
    "yellow": ("gold", "orange", "light yellow"),
    "purple": ("violet", "blue", "magenta"),
    "orange": ("red", "yellow", "dark orange"),
    "black": ("dark grey", "gray", "dark"),
    "white": ("light grey", "gray", "cream"),
}
_SHAPE_ALTERNATIVES: dict[str, tuple[str, ...]] = {
    "circle": ("round", "ring", "oval"),
    "square": ("rectangle", "box", "diamond"),
    "triangle": ("pyramid", "arrow", "diamond"),
    "star": ("stars", "pentagon", "flower"),
    "cross": ("plus", "plus sign", "x"),
    "diamond": ("rhombus", "square", "kite"),
    "hexagon": ("octagon", "pentagon", "circle"),
    "ring": ("circle", "donut", "o"),
}
assert set(_COLOUR_ALTERNATIVES) == set(COLORS) and set(_SHAPE_ALTERNATIVES) == set(SHAPES), \
    "every colour and shape of aape_jax.data.synthetic needs its alternative answers here"


def _human_answers(truth: str, alternatives: tuple[str, ...], rng: np.random.Generator) -> tuple[str, ...]:
    """Ten answers: 7-10 of them `truth`, the rest drawn from `alternatives`, at random positions."""
    agreeing = int(rng.choice(_AGREEING, p=_AGREEING_P))
    answers = [truth] * agreeing + [alternatives[int(rng.integers(len(alternatives)))]
                                    for _ in range(ANSWERS_PER_QUESTION - agreeing)]
    return tuple(answers[i] for i in rng.permutation(ANSWERS_PER_QUESTION))


def _count_alternatives(n: int) -> tuple[str, ...]:
    # The number word is the common paraphrase (weighted twice); off-by-one is the common miscount.
    word = _NUMBER_WORDS[n]
    return (word, word, str(n + 1)) + ((str(n - 1),) if n > 1 else ())


def _absent_object(objects: tuple[tuple[str, str], ...], rng: np.random.Generator) -> tuple[str, str]:
    """A (colour, shape) not in the scene; mostly a near miss that shares a colour or a shape with it."""
    present = set(objects)
    colours, shapes = list(COLORS), list(SHAPES)
    if rng.uniform() < 0.7:
        colour, shape = objects[int(rng.integers(len(objects)))]
        if rng.uniform() < 0.5:
            candidates = [(colour, s) for s in shapes if (colour, s) not in present]
        else:
            candidates = [(c, shape) for c in colours if (c, shape) not in present]
    else:
        candidates = [(c, s) for c in colours for s in shapes if (c, s) not in present]
    return candidates[int(rng.integers(len(candidates)))]  # never empty: a scene has at most 3 of 64 pairs


def _scene_questions(objects: tuple[tuple[str, str], ...], rng: np.random.Generator
                     ) -> list[tuple[str, tuple[str, ...], str]]:
    """(question, ten answers, answer type) about one scene, in a fixed order of kinds."""
    n = len(objects)
    out = [("how many shapes are there?", _human_answers(str(n), _count_alternatives(n), rng), "number")]
    # Ask about a shape (colour) only when one object has it: otherwise the question has no single answer.
    unique_shape = [o for o in objects if sum(s == o[1] for _, s in objects) == 1]
    if unique_shape:
        colour, shape = unique_shape[int(rng.integers(len(unique_shape)))]
        out.append((f"what colour is the {shape}?", _human_answers(colour, _COLOUR_ALTERNATIVES[colour], rng),
                    "other"))
    unique_colour = [o for o in objects if sum(c == o[0] for c, _ in objects) == 1]
    if unique_colour:
        colour, shape = unique_colour[int(rng.integers(len(unique_colour)))]
        out.append((f"what shape is the {colour} one?", _human_answers(shape, _SHAPE_ALTERNATIVES[shape], rng),
                    "other"))
    if rng.uniform() < 0.5:
        (colour, shape), truth, other = objects[int(rng.integers(n))], "yes", "no"
    else:
        (colour, shape), truth, other = _absent_object(objects, rng), "no", "yes"
    out.append((f"is there a {colour} {shape}?", _human_answers(truth, (other,), rng), "yes/no"))
    return out


def _split(split: str, count: int, seed: int, image_size: int) -> list[VQAQuestion]:
    questions = []
    for index, (image, objects) in enumerate(captioned_scenes(split, count, image_size=image_size, seed=seed)):
        rng = np.random.default_rng([seed, _SPLIT_IDS[split], index, _QA_STREAM])
        for j, (question, answers, answer_type) in enumerate(_scene_questions(objects, rng)):
            # Unique across both splits (image index and split interleaved) and stable as the set grows.
            question_id = (index * len(_SPLIT_IDS) + _SPLIT_IDS[split]) * 10 + j
            questions.append(VQAQuestion(image=image.image, image_key=image.key, question=question,
                                         question_id=question_id, answers=answers, answer_type=answer_type))
    return questions


def make_vqa_dataset(num_train: int, num_test: int, seed: int = 0,
                     image_size: int = 48) -> tuple[list[VQAQuestion], list[VQAQuestion]]:
    """Builds (train, test) questions about `num_train` / `num_test` synthetic scenes, 2-4 per scene.

    The same arguments always give the same questions, answers and images (bit for bit); the images are
    `synthetic_captions.captioned_scenes(split, ...)`'s, keyed alike.

    Raises:
      ValueError: for a negative image count or an image_size < 24 (before any image is drawn).
    """
    if num_train < 0 or num_test < 0:
        raise ValueError(f"image counts must be >= 0, got train={num_train}, test={num_test}")
    if image_size < 24:
        raise ValueError(f"image_size must be >= 24 (three shapes must stay recognisable), got {image_size}")
    return _split("train", num_train, seed, image_size), _split("test", num_test, seed, image_size)
