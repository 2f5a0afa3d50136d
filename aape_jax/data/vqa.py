"""VQAv2 (COCO 2014 images): the official question and annotation files, and few-shot picks from them.

Files, as the VQA site ships them (`v2_Questions_{Train,Val}_mscoco.zip`,
`v2_Annotations_{Train,Val}_mscoco.zip`) and the official API
(GT-Vision-Lab/VQA `vqaTools/vqa.py`) reads them:

- questions `v2_OpenEnded_mscoco_{split}2014_questions.json`:
  `{"info", "task_type", "data_type", "data_subtype": "{split}2014", "license",
  "questions": [{"image_id": int, "question": str, "question_id": int}, ...]}`;
- annotations `v2_mscoco_{split}2014_annotations.json`:
  `{"info", "license", "data_type", "data_subtype", "annotations": [{"question_id", "image_id",
  "answers": [{"answer": str, "answer_confidence": "yes"|"maybe"|"no", "answer_id": 1..10}, ...],
  "multiple_choice_answer", "answer_type": "yes/no"|"number"|"other", "question_type"}, ...]}`;
- images `ROOT/{split}2014/COCO_{split}2014_{image_id:012d}.jpg` (ROOT is the folder
  holding COCO's `train2014/` and `val2014/`, the same root as the Karpathy captions).

Only train and val are read: the test-dev/test questions have no public annotations.
The ten human answers are kept as written (the VQA accuracy, min(#humans that said
it / 3, 1) averaged over the ten leave-one-out subsets, needs all of them);
`multiple_choice_answer` and `question_type` are not kept.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from aape_jax import storage
from aape_jax.clip.preprocess import ImageLike
from aape_jax.data.folder import missing_files
from aape_jax.errors import DataError, listing

__all__ = ["VQAQuestion", "VQA_SPLITS", "ANSWER_TYPES", "read_vqa", "few_shot"]

# Split name -> the COCO 2014 image folder (and the files' "data_subtype").
VQA_SPLITS = {"train": "train2014", "val": "val2014"}
# The official files' answer types; other sources (the synthetic set) use the same three.
ANSWER_TYPES = ("yes/no", "number", "other")


@dataclasses.dataclass(frozen=True)
class VQAQuestion:
    """One question about one image, with the human answers.

    Attributes:
      image: the image file's full path (VQAv2), or an in-memory image (the synthetic set).
      image_key: stable identity of the image, e.g. "val2014/COCO_val2014_000000000042.jpg"; feature-store
        fingerprints hash it, and questions about the same image share it.
      question: the question text, as written ("What color is the bus?").
      question_id: the file's question id, unique within the set.
      answers: the human answers in file order (ten in VQAv2), stripped; never empty.
      answer_type: "yes/no", "number" or "other" (the file's value, not checked).
    """

    image: ImageLike
    image_key: str
    question: str
    question_id: int
    answers: tuple[str, ...]
    answer_type: str



def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # JSON true would pass isinstance(.., int)


def _load_json(path: str, what: str) -> Any:
    try:
        text = storage.read_text(path)
    except FileNotFoundError:
        raise DataError(f"VQA {what} file {path} does not exist",
                        hint="download it from visualqa.org (v2_Questions_*/v2_Annotations_* zips) "
                             "and pass its path") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: invalid JSON ({what} file): {e}") from e


def _list_of(data: Any, key: str, path: str, what: str) -> list[Any]:
    if not isinstance(data, dict) or not isinstance(data.get(key), list):
        raise ValueError(f"{path}: expected a VQA {what} file {{{key!r}: [...], ...}}, got "
                         f"{'keys ' + repr(sorted(data)[:8]) if isinstance(data, dict) else type(data).__name__}")
    return data[key]


def _check_subtype(data: dict[str, Any], path: str, split: str) -> None:
    # A train file passed as val would otherwise only show up as thousands of missing images.
    subtype = data.get("data_subtype")
    if subtype is not None and subtype != VQA_SPLITS[split]:
        raise ValueError(f"{path}: data_subtype is {subtype!r}, but split={split!r} expects {VQA_SPLITS[split]!r}")




def read_vqa(questions_path: str | os.PathLike, annotations_path: str | os.PathLike,
             image_root: str | os.PathLike, *, split: str, check_files: bool = True,
             max_questions: int = 0) -> list[VQAQuestion]:
    """Reads a VQAv2 split: each question with its human answers and image path, in question-file order.

    Args:
      questions_path: `v2_OpenEnded_mscoco_{split}2014_questions.json` (local or gs://).
      annotations_path: `v2_mscoco_{split}2014_annotations.json`.
      image_root: the folder holding `{split}2014/COCO_{split}2014_{image_id:012d}.jpg`.
      split: "train" or "val".
      check_files: check that every kept question's image exists (one listing of the image folder).
      max_questions: keep the first this many questions (0: all); both files are still checked whole.

    Raises:
      ValueError: naming the file, for an unknown split, invalid JSON, a missing or mistyped key (the
        first offending entry), a data_subtype of another split, a repeated question id, questions
        without annotations, annotations without answers, or an image id the two files disagree on
        (each listed, up to 10).
      FileNotFoundError (`DataError`): a missing questions/annotations file, or image files (listed).
    """
    if split not in VQA_SPLITS:
        hint = " (test-dev/test have no public annotations)" if split.startswith("test") else ""
        raise ValueError(f"VQA split {split!r} is not one of {sorted(VQA_SPLITS)}{hint}")
    if max_questions < 0:
        raise ValueError(f"max_questions must be >= 0 (0: all), got {max_questions}")
    qpath, apath = os.fspath(questions_path), os.fspath(annotations_path)
    qdata, adata = _load_json(qpath, "questions"), _load_json(apath, "annotations")
    questions = _list_of(qdata, "questions", qpath, "questions")
    annotations = _list_of(adata, "annotations", apath, "annotations")
    _check_subtype(qdata, qpath, split)
    _check_subtype(adata, apath, split)

    by_id: dict[int, dict[str, Any]] = {}
    for i, ann in enumerate(annotations):
        where = f"{apath}: annotations[{i}]"
        if not isinstance(ann, dict) or not _is_int(ann.get("question_id")) or not _is_int(ann.get("image_id")):
            raise ValueError(f"{where} needs integer 'question_id' and 'image_id', got {ann!r:.160}")
        if not isinstance(ann.get("answers"), list):
            raise ValueError(f"{where} (question {ann['question_id']}) needs an 'answers' list")
        if not isinstance(ann.get("answer_type"), str):
            raise ValueError(f"{where} (question {ann['question_id']}) needs a string 'answer_type'")
        for j, a in enumerate(ann["answers"]):
            if not isinstance(a, dict) or not isinstance(a.get("answer"), str):
                raise ValueError(f"{where}.answers[{j}] (question {ann['question_id']}) needs a string 'answer', "
                                 f"got {a!r:.120}")
        if ann["question_id"] in by_id:
            raise ValueError(f"{where}: question id {ann['question_id']} is annotated more than once")
        by_id[ann["question_id"]] = ann

    out: list[VQAQuestion] = []
    seen: set[int] = set()
    unannotated: list[int] = []
    unanswered: list[int] = []
    mismatched: list[str] = []
    folder = VQA_SPLITS[split]
    for i, q in enumerate(questions):
        where = f"{qpath}: questions[{i}]"
        if (not isinstance(q, dict) or not _is_int(q.get("question_id")) or not _is_int(q.get("image_id"))
                or not isinstance(q.get("question"), str)):
            raise ValueError(f"{where} needs integer 'question_id' and 'image_id' and a string 'question', "
                             f"got {q!r:.160}")
        qid = q["question_id"]
        if qid in seen:
            raise ValueError(f"{where}: question id {qid} appears more than once")
        seen.add(qid)
        ann = by_id.get(qid)
        if ann is None:
            unannotated.append(qid)
            continue
        answers = tuple(a["answer"].strip() for a in ann["answers"])
        if not answers:
            unanswered.append(qid)
            continue
        if ann["image_id"] != q["image_id"]:
            mismatched.append(f"{qid} (image {q['image_id']} vs {ann['image_id']})")
            continue
        key = f"{folder}/COCO_{folder}_{q['image_id']:012d}.jpg"
        out.append(VQAQuestion(image=os.path.join(os.fspath(image_root), key), image_key=key,
                               question=q["question"].strip(), question_id=qid, answers=answers,
                               answer_type=ann["answer_type"]))
    if unannotated:
        raise ValueError(f"{qpath}: {len(unannotated)} question(s) without annotations in {apath} "
                         f"(question ids {listing(unannotated)}); are the two files of the same split?")
    if unanswered:
        raise ValueError(f"{apath}: {len(unanswered)} annotation(s) with no answers "
                         f"(question ids {listing(unanswered)})")
    if mismatched:
        raise ValueError(f"{qpath} and {apath} disagree on the image of {len(mismatched)} question(s): "
                         f"{listing(mismatched, quote=False)}")
    if not out:
        raise ValueError(f"{qpath}: holds no questions")
    if max_questions:
        out = out[:max_questions]
    if check_files:
        images = list(dict.fromkeys(q.image for q in out))  # questions share images: each is checked once
        missing = missing_files(images)
        if missing:
            raise DataError(f"{qpath}: {len(missing)} of {len(images)} image file(s) do not exist under "
                            f"{image_root}: {listing(missing)}",
                            hint=f"image_root must hold COCO's {folder}/ folder")
    return out


def few_shot(questions: Sequence[VQAQuestion], n: int, seed: int) -> list[VQAQuestion]:
    """`n` questions picked at random, the same ones for the same questions and seed whatever their order.

    Used for in-context examples and few-shot fine-tuning sets. The pick is a seeded permutation of the
    questions sorted by question id, so it ignores the input order and `few_shot(q, n, s)` is a prefix of
    `few_shot(q, n + 1, s)`: a larger shot count adds examples without replacing any.

    Raises:
      ValueError: for n < 0, more shots than questions, or repeated question ids (the pick would then
        depend on the input order).
    """
    if n < 0:
        raise ValueError(f"few_shot: n must be >= 0, got {n}")
    if n > len(questions):
        raise ValueError(f"few_shot: asked for {n} questions, but only {len(questions)} are given")
    ordered = sorted(questions, key=lambda q: q.question_id)
    repeated = sorted({a.question_id for a, b in zip(ordered, ordered[1:]) if a.question_id == b.question_id})
    if repeated:
        raise ValueError(f"few_shot: {len(repeated)} question id(s) appear more than once: {listing(repeated)}")
    order = np.random.default_rng(seed).permutation(len(ordered))
    return [ordered[i] for i in order[:n]]
