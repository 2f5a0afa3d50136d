"""The VQA accuracy of the official evaluation code (GT-Vision-Lab/VQA), in its two versions.

A question's accuracy is the mean, over the ten leave-one-out subsets of its
human answers (nine answers each), of ``min(#answers in the subset equal to the
prediction / 3, 1)``: an answer that at least 3 of the other annotators gave
counts fully. Before comparing, answers go through the official normalisation
(`normalize_answer`: punctuation, number words to digits, articles dropped,
contractions restored), but *when* it applies depends on the code version:

``style="master"``
  GT-Vision-Lab/VQA ``master`` (``PythonEvaluationTools/vqaEvaluation/vqaEval.py``
  since commit a013f00, "Fixed processing answers bug", March 2021). Newlines and
  tabs become spaces and the ends are stripped, in the prediction and in every
  human answer; then, only if the human answers are not all identical, both the
  prediction and the human answers are normalised. Use this to compare with the
  official VQAv2 evaluation and with papers that ran the official script.

``style="update_style"``
  The ``feature/update_style`` branch: the Python 3 port (October 2017) of the code
  as it was before that fix. The prediction is always whitespace-cleaned and fully
  normalised; the human answers are never whitespace-cleaned and never get the
  digit/article/contraction step, only the punctuation step, and that only if they
  are not all identical. So a prediction "two" matches human answers "2", but a
  prediction "2" does not match a human "two" among varied answers. LiMBeR's
  reported VQA numbers were computed with this branch (a fact from our project
  notes: LiMBeR's public repository, jmerullo/limber, holds no evaluation code);
  use it to compare with LiMBeR.

`mean_accuracy` gives the percentage the official ``accuracy['overall']`` holds,
unrounded (the official code rounds it to 2 decimals).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

STYLES = ("master", "update_style")

# The official punctuation list (`self.punct`); the period is handled by its own regex.
_PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-",
                ">", "<", "@", "`", ",", "?", "!")
# The official patterns, character for character. `(?!<=\d)` was surely meant as a
# lookbehind but is a lookahead for the text "<=digit", which never follows a "." here,
# so in effect: drop every "." not followed by a digit ("3.5" keeps its point).
# re.ASCII because the official code is Python 2, where `\d` on a str pattern is [0-9].
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)", re.ASCII)
_COMMA_STRIP = re.compile(r"(\d)(\,)(\d)", re.ASCII)
# The official call is `periodStrip.sub("", text, re.UNICODE)`: the third positional
# argument of Pattern.sub is `count`, so at most re.UNICODE == 32 periods are removed.
_MAX_PERIODS_REMOVED = 32

# Number words the official `manualMap` turns into digits ("none" is 0 too).
_NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
                 "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = frozenset({"a", "an", "the"})

# The official contractions map, entry for entry. Words are lowercased before the
# lookup, so the four keys with capitals ("Id've", "I'dve", "Im", "Ive") never match;
# "somebody'd" -> "somebodyd" runs backwards; both kept so results stay identical.
_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've",
    "couldnt": "couldn't", "couldn'tve": "couldn't've", "couldnt've": "couldn't've",
    "didnt": "didn't", "doesnt": "doesn't", "dont": "don't", "hadnt": "hadn't",
    "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't", "havent": "haven't",
    "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm",
    "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've",
    "itll": "it'll", "let's": "let's", "maam": "ma'am", "mightnt": "mightn't",
    "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've",
    "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've",
    "she's": "she's", "shouldve": "should've", "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's",
    "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've",
    "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've",
    "weve": "we've", "werent": "weren't", "whatll": "what'll", "whatre": "what're",
    "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've",
    "whyll": "why'll", "whyre": "why're", "whys": "why's", "wont": "won't",
    "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll",
    "youre": "you're", "youve": "you've",
}

# An answer that this many other annotators gave scores 1.
_AGREEMENT_FOR_FULL_CREDIT = 3


def _clean_whitespace(text: str) -> str:
    """Newlines and tabs to spaces, ends stripped (inner runs of spaces are kept, as officially)."""
    return text.replace("\n", " ").replace("\t", " ").strip()


def _process_punctuation(text: str) -> str:
    """The official `processPunctuation`.

    A punctuation mark next to a space, or any mark at all in a text with a
    digit-comma-digit ("1,000"), is deleted; otherwise it becomes a space
    ("black/white" -> "black white"). The tests look at the original text, not
    at the text as it is being edited, as officially. Then periods not followed
    by a digit go (at most 32 of them).
    """
    has_digit_comma = _COMMA_STRIP.search(text) is not None
    out = text
    for mark in _PUNCTUATION:
        glued = not (mark + " " in text or " " + mark in text or has_digit_comma)
        out = out.replace(mark, " " if glued else "")
    return _PERIOD_STRIP.sub("", out, count=_MAX_PERIODS_REMOVED)


def _process_digit_article(text: str) -> str:
    """The official `processDigitArticle`: lowercase, number words to digits, articles dropped, contractions restored.

    Splitting on whitespace and joining with one space also collapses runs of spaces.
    """
    words = [_NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    words = [w for w in words if w not in _ARTICLES]
    return " ".join(_CONTRACTIONS.get(w, w) for w in words)


def normalize_answer(text: str) -> str:
    """The official answer normalisation: punctuation, then digits/articles/contractions.

    E.g. "Two dogs." -> "2 dogs", "the cat's toy" -> "cat's toy", "dont" -> "don't",
    "black/white" -> "black white", "1,000" -> "1000". No whitespace cleaning
    beyond what the word split does (`accuracy` does that first).
    """
    return _process_digit_article(_process_punctuation(text))


def _leave_one_out_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """Mean over each answer left out of min(#others equal to the prediction / 3, 1)."""
    scores = []
    for left_out in range(len(answers)):
        matches = sum(1 for j, a in enumerate(answers) if j != left_out and a == prediction)
        scores.append(min(1.0, matches / _AGREEMENT_FOR_FULL_CREDIT))
    return sum(scores) / len(scores)


def accuracy(prediction: str, human_answers: Sequence[str], *, style: str = "master") -> float:
    """VQA accuracy of one predicted answer against the question's human answers, in [0, 1].

    Args:
      prediction: the model's answer, raw text.
      human_answers: the annotators' answers, raw (VQAv2 has ten per question;
        any number >= 1 works, leave-one-out over all of them).
      style: "master" or "update_style", which version of the official code to
        follow (see the module docstring).

    Returns:
      e.g. 0.0, 0.3, 0.6, 0.9 or 1.0 for 0, 1, 2, 3 or 4+ matching answers out of ten.

    Raises:
      ValueError: an unknown `style`, or no human answers.
      TypeError: a prediction or human answer that is not a str.
    """
    if style not in STYLES:
        raise ValueError(f"unknown VQA accuracy style {style!r}; expected one of {STYLES}")
    if isinstance(human_answers, str):
        raise TypeError(f"human_answers must be a sequence of answers, got the str {human_answers!r}")
    answers = list(human_answers)
    if not answers:
        raise ValueError(f"no human answers to score the prediction {prediction!r} against")
    for value in (prediction, *answers):
        if not isinstance(value, str):
            raise TypeError(f"answers must be str, got {type(value).__name__} {value!r}")

    pred = _clean_whitespace(prediction)
    if style == "master":
        answers = [_clean_whitespace(a) for a in answers]
        if len(set(answers)) > 1:
            answers = [normalize_answer(a) for a in answers]
            pred = normalize_answer(pred)
    else:  # update_style: the pre-2021 order of operations, human answers left raw
        pred = normalize_answer(pred)
        if len(set(answers)) > 1:
            answers = [_process_punctuation(a) for a in answers]
    return _leave_one_out_accuracy(pred, answers)


# How many offending ids an error message lists.
_IDS_SHOWN = 10


def mean_accuracy(predictions: Mapping[Any, str], human_answers: Mapping[Any, Sequence[str]], *,
                  style: str = "master") -> float:
    """Mean VQA accuracy in percent (0..100) over the questions in `predictions`.

    Only predicted questions are scored: annotated questions without a
    prediction are ignored (so a subset, e.g. a sample of val, can be
    evaluated), the way the official code scores the question ids it is given.

    Args:
      predictions: question id -> predicted answer.
      human_answers: question id -> that question's human answers (may hold more ids).
      style: "master" or "update_style" (see the module docstring).

    Raises:
      ValueError: no predictions, an unknown `style`, or predicted ids without
        human answers (up to 10 of them named).
    """
    if style not in STYLES:
        raise ValueError(f"unknown VQA accuracy style {style!r}; expected one of {STYLES}")
    if not predictions:
        raise ValueError("no predictions to score")
    missing = [qid for qid in predictions if qid not in human_answers]
    if missing:
        shown = ", ".join(repr(q) for q in missing[:_IDS_SHOWN])
        more = f" and {len(missing) - _IDS_SHOWN} more" if len(missing) > _IDS_SHOWN else ""
        raise ValueError(f"{len(missing)} predicted question ids have no human answers: {shown}{more}")
    total = sum(accuracy(pred, human_answers[qid], style=style) for qid, pred in predictions.items())
    return 100.0 * total / len(predictions)
