"""VQAv2 reader (`aape_jax.data.vqa`), few-shot picks, and the synthetic VQA set (`aape_jax.data.synthetic_vqa`)."""

import collections
import hashlib
import json
import re

import numpy as np
import PIL.Image
import pytest

from aape_jax.data import vqa
from aape_jax.data.synthetic import COLORS, SHAPES
from aape_jax.data.synthetic_captions import captioned_scenes, make_captioned_dataset
from aape_jax.data.synthetic_vqa import ANSWERS_PER_QUESTION, make_vqa_dataset

# --------------------------------------------------------------------------- #
# VQAv2 files


def _answers(*texts):
    return [{"answer": t, "answer_confidence": "yes", "answer_id": i + 1} for i, t in enumerate(texts)]


def _image_path(root, split, image_id):
    return root / f"{split}2014" / f"COCO_{split}2014_{image_id:012d}.jpg"


def _write_image(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    PIL.Image.fromarray(np.full((8, 8, 3), 128, np.uint8)).save(path, format="JPEG")


def _vqa_files(tmp_path, *, split="val", questions=None, annotations=None, images=(42, 7), subtype=None):
    """Questions/annotations files of 3 questions on images 42 and 7 (edited by the caller), and the JPEGs."""
    if questions is None:
        questions = [
            {"image_id": 42, "question": "What color is the bus? ", "question_id": 420},
            {"image_id": 42, "question": "How many people are there?", "question_id": 421},
            {"image_id": 7, "question": "Is it raining?", "question_id": 70},
        ]
    if annotations is None:
        annotations = [  # a different order from the questions': pairing is by question id
            {"question_id": 70, "image_id": 7, "answers": _answers(*(["no"] * 9 + ["yes"])),
             "multiple_choice_answer": "no", "answer_type": "yes/no", "question_type": "is it"},
            {"question_id": 420, "image_id": 42, "answers": _answers(*(["red"] * 8 + ["dark red", " red "])),
             "multiple_choice_answer": "red", "answer_type": "other", "question_type": "what color is the"},
            {"question_id": 421, "image_id": 42, "answers": _answers(*(["2"] * 7 + ["two"] * 2 + ["3"])),
             "multiple_choice_answer": "2", "answer_type": "number", "question_type": "how many"},
        ]
    subtype = subtype or f"{split}2014"
    qpath = tmp_path / f"v2_OpenEnded_mscoco_{split}2014_questions.json"
    apath = tmp_path / f"v2_mscoco_{split}2014_annotations.json"
    qpath.write_text(json.dumps({"info": {}, "task_type": "Open-Ended", "data_type": "mscoco",
                                 "data_subtype": subtype, "license": {}, "questions": questions}))
    apath.write_text(json.dumps({"info": {}, "license": {}, "data_type": "mscoco", "data_subtype": subtype,
                                 "annotations": annotations}))
    for image_id in images:
        _write_image(_image_path(tmp_path, split, image_id))
    return qpath, apath


def test_read_vqa_pairs_questions_with_their_answers_in_question_order(tmp_path):
    qpath, apath = _vqa_files(tmp_path)
    out = vqa.read_vqa(qpath, apath, tmp_path, split="val")
    assert [q.question_id for q in out] == [420, 421, 70]
    bus = out[0]
    assert bus.question == "What color is the bus?"
    assert bus.answers == ("red",) * 8 + ("dark red", "red")  # file order, stripped
    assert bus.answer_type == "other"
    assert bus.image_key == "val2014/COCO_val2014_000000000042.jpg"
    assert bus.image == str(_image_path(tmp_path, "val", 42))
    assert out[1].answers == ("2",) * 7 + ("two", "two", "3") and out[1].answer_type == "number"
    assert out[1].image_key == bus.image_key
    assert out[2].image_key == "val2014/COCO_val2014_000000000007.jpg" and out[2].answer_type == "yes/no"
    assert np.asarray(PIL.Image.open(out[2].image)).shape == (8, 8, 3)


def test_read_vqa_train_split_uses_the_train_folder(tmp_path):
    qpath, apath = _vqa_files(tmp_path, split="train")
    out = vqa.read_vqa(qpath, apath, tmp_path, split="train")
    assert out[0].image_key == "train2014/COCO_train2014_000000000042.jpg"
    assert out[0].image == str(_image_path(tmp_path, "train", 42))


def test_max_questions_keeps_a_prefix_and_checks_only_its_images(tmp_path):
    qpath, apath = _vqa_files(tmp_path, images=(42,))  # image 7 (the third question's) is missing
    out = vqa.read_vqa(qpath, apath, tmp_path, split="val", max_questions=2)
    assert [q.question_id for q in out] == [420, 421]
    with pytest.raises(FileNotFoundError, match="COCO_val2014_000000000007.jpg"):
        vqa.read_vqa(qpath, apath, tmp_path, split="val")
    with pytest.raises(ValueError, match="max_questions"):
        vqa.read_vqa(qpath, apath, tmp_path, split="val", max_questions=-1)


@pytest.mark.parametrize("split", ["test", "test-dev", "validation", "val2014", ""])
def test_unknown_split_is_refused_before_reading(tmp_path, split):
    # The files do not exist: the split is checked first.
    with pytest.raises(ValueError, match=re.escape(repr(split))):
        vqa.read_vqa(tmp_path / "q.json", tmp_path / "a.json", tmp_path, split=split)


def test_missing_question_or_annotation_file_is_named(tmp_path):
    qpath, apath = _vqa_files(tmp_path)
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "nope_q.json"))):
        vqa.read_vqa(tmp_path / "nope_q.json", apath, tmp_path, split="val")
    with pytest.raises(FileNotFoundError, match="annotations file .*nope_a.json"):
        vqa.read_vqa(qpath, tmp_path / "nope_a.json", tmp_path, split="val")


def test_malformed_json_names_the_file(tmp_path):
    qpath, apath = _vqa_files(tmp_path)
    apath.write_text('{"annotations": [')
    with pytest.raises(ValueError, match=re.escape(str(apath)) + ".*invalid JSON"):
        vqa.read_vqa(qpath, apath, tmp_path, split="val")
    qpath.write_text("not json")
    with pytest.raises(ValueError, match=re.escape(str(qpath)) + ".*invalid JSON"):
        vqa.read_vqa(qpath, apath, tmp_path, split="val")


def _edit(tmp_path, which, edit):
    """The default files with `edit(entries)` applied to the questions or annotations list."""
    qpath, apath = _vqa_files(tmp_path)
    path, key = (qpath, "questions") if which == "q" else (apath, "annotations")
    data = json.loads(path.read_text())
    edit(data[key])
    path.write_text(json.dumps(data))
    return qpath, apath


@pytest.mark.parametrize("which, edit, pattern", [
    ("q", lambda qs: qs[1].pop("question"), r"questions\[1\] needs .*'question'"),
    ("q", lambda qs: qs[0].pop("image_id"), r"questions\[0\] needs integer 'question_id' and 'image_id'"),
    ("q", lambda qs: qs[2].update(question_id="70"), r"questions\[2\] needs integer"),
    ("q", lambda qs: qs[2].update(question_id=True), r"questions\[2\] needs integer"),
    ("a", lambda anns: anns[1].pop("answers"), r"annotations\[1\] \(question 420\) needs an 'answers' list"),
    ("a", lambda anns: anns[0].pop("question_id"), r"annotations\[0\] needs integer 'question_id'"),
    ("a", lambda anns: anns[2].pop("answer_type"), r"annotations\[2\] \(question 421\) needs a string 'answer_type'"),
    ("a", lambda anns: anns[2]["answers"][3].pop("answer"), r"annotations\[2\]\.answers\[3\] \(question 421\)"),
])
def test_missing_or_mistyped_keys_name_the_file_and_entry(tmp_path, which, edit, pattern):
    qpath, apath = _edit(tmp_path, which, edit)
    with pytest.raises(ValueError, match=pattern) as e:
        vqa.read_vqa(qpath, apath, tmp_path, split="val")
    assert str(qpath if which == "q" else apath) in str(e.value)


@pytest.mark.parametrize("which", ["q", "a"])
def test_missing_top_level_list_is_refused(tmp_path, which):
    qpath, apath = _vqa_files(tmp_path)
    path = qpath if which == "q" else apath
    path.write_text(json.dumps({"info": {}, "data": []}))
    with pytest.raises(ValueError, match=re.escape(str(path)) + ".*expected a VQA"):
        vqa.read_vqa(qpath, apath, tmp_path, split="val")


def test_questions_without_annotations_are_listed(tmp_path):
    extra = [{"image_id": 42, "question": f"q{i}?", "question_id": 1000 + i} for i in range(12)]
    questions = [{"image_id": 42, "question": "What color is the bus?", "question_id": 420}] + extra
    annotations = [{"question_id": 420, "image_id": 42, "answers": _answers("red"), "answer_type": "other"}]
    qpath, apath = _vqa_files(tmp_path, questions=questions, annotations=annotations)
    with pytest.raises(ValueError, match="12 question\\(s\\) without annotations") as e:
        vqa.read_vqa(qpath, apath, tmp_path, split="val")
    message = str(e.value)
    assert str(qpath) in message and str(apath) in message
    assert "1000, 1001" in message and "1009" in message and "1010" not in message and "and 2 more" in message


def test_annotation_with_no_answers_is_an_error(tmp_path):
    qpath, apath = _edit(tmp_path, "a", lambda anns: anns[2].update(answers=[]))
    with pytest.raises(ValueError, match=re.escape(str(apath)) + ".*1 annotation\\(s\\) with no answers.*421"):
        vqa.read_vqa(qpath, apath, tmp_path, split="val")


def test_image_id_mismatch_between_the_files_is_an_error(tmp_path):
    qpath, apath = _edit(tmp_path, "a", lambda anns: anns[0].update(image_id=8))
    with pytest.raises(ValueError, match="disagree on the image of 1 question.*70 \\(image 7 vs 8\\)"):
        vqa.read_vqa(qpath, apath, tmp_path, split="val")


def test_repeated_question_ids_are_refused(tmp_path):
    qpath, apath = _edit(tmp_path, "q", lambda qs: qs[2].update(question_id=420, image_id=42))
    with pytest.raises(ValueError, match=r"questions\[2\]: question id 420 appears more than once"):
        vqa.read_vqa(qpath, apath, tmp_path, split="val")
    qpath, apath = _edit(tmp_path, "a", lambda anns: anns[0].update(question_id=420, image_id=42))
    with pytest.raises(ValueError, match="question id 420 is annotated more than once"):
        vqa.read_vqa(qpath, apath, tmp_path, split="val")


@pytest.mark.parametrize("which", ["q", "a"])
def test_files_of_another_split_are_refused(tmp_path, which):
    qpath, apath = _vqa_files(tmp_path)
    path = qpath if which == "q" else apath
    data = json.loads(path.read_text())
    data["data_subtype"] = "train2014"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=re.escape(str(path)) + ": data_subtype is 'train2014', but split='val'"):
        vqa.read_vqa(qpath, apath, tmp_path, split="val")


def test_missing_images_are_counted_and_listed(tmp_path):
    questions = [{"image_id": i, "question": "Is it?", "question_id": i} for i in range(1, 15)]
    annotations = [{"question_id": i, "image_id": i, "answers": _answers("yes"), "answer_type": "yes/no"}
                   for i in range(1, 15)]
    qpath, apath = _vqa_files(tmp_path, questions=questions, annotations=annotations, images=(1, 2))
    with pytest.raises(FileNotFoundError, match="12 of 14 image file\\(s\\) do not exist") as e:
        vqa.read_vqa(qpath, apath, tmp_path, split="val")
    message = str(e.value)
    assert "COCO_val2014_000000000003.jpg" in message and "and 2 more" in message
    assert "COCO_val2014_000000000001.jpg" not in message
    assert len(vqa.read_vqa(qpath, apath, tmp_path, split="val", check_files=False)) == 14
    # A missing image folder is the same error, not a crash.
    with pytest.raises(FileNotFoundError, match="14 of 14"):
        vqa.read_vqa(qpath, apath, tmp_path / "elsewhere", split="val")


def _upload(local, remote):
    from aape_jax import storage

    for f in sorted(local.rglob("*")):
        if f.is_file():
            storage.path(f"{remote}/{f.relative_to(local).as_posix()}").write_bytes(f.read_bytes())


def test_read_vqa_from_a_bucket_reads_what_the_local_copy_gives(tmp_path, gcs_dir):
    (tmp_path / "vqa").mkdir()
    qpath, apath = _vqa_files(tmp_path / "vqa", images=(42,))  # image 7 is missing
    _upload(tmp_path / "vqa", gcs_dir)
    remote_q, remote_a = f"{gcs_dir}/{qpath.name}", f"{gcs_dir}/{apath.name}"
    local = vqa.read_vqa(qpath, apath, tmp_path / "vqa", split="val", check_files=False)
    remote = vqa.read_vqa(remote_q, remote_a, gcs_dir, split="val", check_files=False)
    assert [(q.image_key, q.question, q.answers) for q in remote] == [(q.image_key, q.question, q.answers)
                                                                      for q in local]
    assert remote[0].image == f"{gcs_dir}/val2014/COCO_val2014_000000000042.jpg"
    assert len(vqa.read_vqa(remote_q, remote_a, gcs_dir, split="val", max_questions=2)) == 2
    with pytest.raises(FileNotFoundError, match=f"1 of 2 .*'{gcs_dir}/val2014/COCO_val2014_000000000007.jpg'"):
        vqa.read_vqa(remote_q, remote_a, gcs_dir, split="val")
    with pytest.raises(FileNotFoundError, match=f"{gcs_dir}/missing.json"):
        vqa.read_vqa(remote_q, f"{gcs_dir}/missing.json", gcs_dir, split="val")


# --------------------------------------------------------------------------- #
# few_shot


def _pool(count=30):
    return [vqa.VQAQuestion(image=f"img{i % 7}.jpg", image_key=f"img{i % 7}.jpg", question=f"q{i}?",
                            question_id=100 + 3 * i, answers=("a",) * 10, answer_type="other") for i in range(count)]


def test_few_shot_is_deterministic_and_ignores_input_order():
    pool = _pool()
    a = vqa.few_shot(pool, 5, seed=1)
    assert len(a) == 5 and len({q.question_id for q in a}) == 5
    assert [q.question_id for q in vqa.few_shot(pool, 5, seed=1)] == [q.question_id for q in a]
    assert [q.question_id for q in vqa.few_shot(pool[::-1], 5, seed=1)] == [q.question_id for q in a]
    assert [q.question_id for q in vqa.few_shot(pool, 5, seed=2)] != [q.question_id for q in a]
    # More shots add examples without replacing the first ones.
    assert vqa.few_shot(pool, 8, seed=1)[:5] == a
    # Not simply the first ids: the pick is random.
    assert sorted(q.question_id for q in a) != [100 + 3 * i for i in range(5)]
    assert vqa.few_shot(pool, 0, seed=1) == []
    assert sorted(q.question_id for q in vqa.few_shot(pool, len(pool), seed=3)) == sorted(q.question_id for q in pool)


def test_few_shot_errors():
    pool = _pool(4)
    with pytest.raises(ValueError, match="asked for 5 questions, but only 4"):
        vqa.few_shot(pool, 5, seed=0)
    with pytest.raises(ValueError, match="n must be >= 0"):
        vqa.few_shot(pool, -1, seed=0)
    with pytest.raises(ValueError, match="1 question id\\(s\\) appear more than once: 103"):
        vqa.few_shot(pool + [pool[1]], 2, seed=0)


# --------------------------------------------------------------------------- #
# Synthetic VQA


def _truth(question, objects):
    """The answer a careful human gives, computed from the scene's objects; asserts the question is fair."""
    if question == "how many shapes are there?":
        return str(len(objects))
    if m := re.fullmatch(r"what colour is the (\w+)\?", question):
        matching = [c for c, s in objects if s == m[1]]
        assert len(matching) == 1, f"{question!r} about {objects}: the shape must appear exactly once"
        return matching[0]
    if m := re.fullmatch(r"what shape is the (\w+) one\?", question):
        matching = [s for c, s in objects if c == m[1]]
        assert len(matching) == 1, f"{question!r} about {objects}: the colour must appear exactly once"
        return matching[0]
    if m := re.fullmatch(r"is there a (\w+) (\w+)\?", question):
        assert m[1] in COLORS and m[2] in SHAPES, question
        return "yes" if (m[1], m[2]) in objects else "no"
    raise AssertionError(f"unexpected question {question!r}")


def _fingerprint(questions):
    h = hashlib.sha256()
    for q in questions:
        h.update(repr((q.image_key, q.question, q.question_id, q.answers, q.answer_type)).encode())
        h.update(np.ascontiguousarray(q.image).tobytes())
    return h.hexdigest()


def test_synthetic_vqa_is_deterministic_and_a_prefix_of_a_larger_set():
    train, test = make_vqa_dataset(6, 3, seed=2)
    again_train, again_test = make_vqa_dataset(6, 3, seed=2)
    assert _fingerprint(train) == _fingerprint(again_train) and _fingerprint(test) == _fingerprint(again_test)
    bigger_train, _ = make_vqa_dataset(9, 0, seed=2)
    assert _fingerprint(bigger_train[:len(train)]) == _fingerprint(train)
    assert bigger_train[len(train)].image_key.endswith("/train/00006")
    other, _ = make_vqa_dataset(6, 0, seed=3)
    assert _fingerprint(other) != _fingerprint(train)
    assert not make_vqa_dataset(0, 0)[0]


def test_synthetic_vqa_answers_follow_the_scene():
    train, test = make_vqa_dataset(60, 20, seed=0)
    kinds = collections.Counter()
    for split, questions in (("train", train), ("test", test)):
        scenes = {image.key: objects for image, objects in captioned_scenes(split, 60 if split == "train" else 20)}
        per_image = collections.Counter(q.image_key for q in questions)
        assert set(per_image) == set(scenes) and all(2 <= c <= 4 for c in per_image.values())
        for q in questions:
            assert len(q.answers) == ANSWERS_PER_QUESTION and all(isinstance(a, str) and a for a in q.answers)
            truth = _truth(q.question, scenes[q.image_key])
            # 7-10 humans give the true answer, and it is always the most common one.
            assert 7 <= q.answers.count(truth) <= 10, (q.question, q.answers, truth)
            assert collections.Counter(q.answers).most_common(1)[0][0] == truth
            assert q.answer_type == {"how": "number", "what": "other", "is": "yes/no"}[q.question.split()[0]]
            kinds[(q.answer_type, truth if q.answer_type == "yes/no" else "")] += 1
    assert kinds[("yes/no", "yes")] > 10 and kinds[("yes/no", "no")] > 10
    everything = train + test
    # Humans disagree on a good share of questions, so VQA accuracy is graded, not 0/1.
    split_votes = [q for q in everything if len(set(q.answers)) > 1]
    assert 0.4 < len(split_votes) / len(everything) < 0.9
    counts = [q for q in everything if q.answer_type == "number"]
    assert any(_word_for_digit(q) in q.answers for q in counts)  # some write "two" for "2"
    assert len({q.question_id for q in everything}) == len(everything)  # unique across both splits


def _word_for_digit(q):
    return {"1": "one", "2": "two", "3": "three"}[collections.Counter(q.answers).most_common(1)[0][0]]


def test_synthetic_vqa_images_are_the_captioned_sets():
    train, test = make_vqa_dataset(5, 3, seed=4, image_size=40)
    captioned = make_captioned_dataset(num_train=5, num_test=3, image_size=40, seed=4)
    for questions, images in ((train, captioned.train), (test, captioned.test)):
        by_key = {im.key: im.image for im in images}
        assert {q.image_key for q in questions} == set(by_key)
        for q in questions:
            assert isinstance(q.image, np.ndarray) and q.image.shape == (40, 40, 3)
            np.testing.assert_array_equal(q.image, by_key[q.image_key])


def test_synthetic_vqa_argument_errors():
    with pytest.raises(ValueError, match="image counts must be >= 0"):
        make_vqa_dataset(-1, 2)
    with pytest.raises(ValueError, match="image_size must be >= 24"):
        make_vqa_dataset(2, 2, image_size=16)


# --------------------------------------------------------------------------- #
# synthetic_captions: the shared generator left the captioned set as it was

# sha256 of `make_captioned_dataset(*args)` (keys, pixels, captions), recorded before `captioned_scenes` was
# added; a change here means retrieval runs on the synthetic set are no longer comparable with earlier ones.
_CAPTIONED_SHA256 = {
    (8, 4, 48, 0): "b41764374ebd59ae663a1f75e44054d9581d2d819ab9c4324dca7f17e557ed37",
    (5, 3, 32, 1): "da0837dc7b73fbcbac77465b07f5896889b990c8d87120045b232e586515aa7f",
}


def _captioned_sha256(ds):
    h = hashlib.sha256()
    for split in (ds.train, ds.val, ds.test):
        for im in split:
            h.update(im.key.encode())
            h.update(im.image.tobytes())
            h.update(str(im.image.shape).encode())
            for caption in im.captions:
                h.update(caption.encode())
                h.update(b"\0")
    return h.hexdigest()


@pytest.mark.parametrize("args", sorted(_CAPTIONED_SHA256))
def test_captioned_set_is_unchanged(args):
    assert _captioned_sha256(make_captioned_dataset(*args)) == _CAPTIONED_SHA256[args]


def test_captioned_scenes_are_the_captioned_images_with_their_objects():
    ds = make_captioned_dataset(num_train=6, num_test=2, image_size=48, seed=5)
    scenes = captioned_scenes("train", 6, image_size=48, seed=5)
    for (image, objects), expected in zip(scenes, ds.train, strict=True):  # arrays: compared field by field
        assert image.key == expected.key and image.captions == expected.captions
        np.testing.assert_array_equal(image.image, expected.image)
        assert 1 <= len(objects) <= 3 and len(set(objects)) == len(objects)
        for colour, shape in objects:
            assert colour in COLORS and shape in SHAPES
        # Every caption names exactly the scene's objects.
        for caption in image.captions:
            named = {(c, s) for c, s in re.findall(r"\ba (\w+) (\w+)", caption) if c in COLORS and s in SHAPES}
            assert named == set(objects), (caption, objects)
    test_scenes = captioned_scenes("test", 2, image_size=48, seed=5)
    assert [image.key for image, _ in test_scenes] == [im.key for im in ds.test]
    with pytest.raises(ValueError, match="split 'val'"):
        captioned_scenes("val", 2)
    with pytest.raises(ValueError, match="image count must be >= 0"):
        captioned_scenes("train", -1)
