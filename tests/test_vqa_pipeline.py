"""The VQA runlocal pipeline (task "vqa"): maps trained on captions, n-shot in-context answers, few-shot
fine-tuning, the LiMBeR baseline beside AAPE, the inference API, and bad input."""

import json
import os

import numpy as np
import pytest

from aape_jax.captioning import AAPECaptioner
from aape_jax.captioning import vqa_train
from aape_jax.data.synthetic_vqa import make_vqa_dataset
from aape_jax.errors import ConfigError
from experiments import aape_vqa


def _config(store, **overrides):
    config = aape_vqa.get_config("runlocal")
    config.feature_store = str(store)
    config.dataset.synthetic_train = 32
    config.batch_size = 8
    config.num_epochs = 3
    config.vqa.synthetic_train = 12
    config.vqa.synthetic_test = 6
    config.vqa.shots = (0, 2)
    config.vqa.finetune_questions = 8
    config.vqa.finetune_epochs = 2
    config.update_from_flattened_dict(overrides)
    return config


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return tmp_path_factory.mktemp("vqa_store")


def test_runlocal_vqa(store, tmp_path):
    """With the ViT's patch grid as the image input: one soft token per patch."""
    metrics = vqa_train.train_and_evaluate(_config(store, **{"model.image_input": "grid"}), str(tmp_path))
    on_disk = json.load(open(tmp_path / "metrics.json"))
    for prefix in ("", "limber_"):
        for key in ("vqa_accuracy", "vqa_accuracy_0shot", "vqa_accuracy_2shot", "vqa_accuracy_finetuned"):
            assert 0.0 <= on_disk[prefix + key] <= 100.0, prefix + key
        assert on_disk[prefix + "vqa_accuracy"] == on_disk[prefix + "vqa_accuracy_0shot"]
        assert on_disk[prefix + "history"][-1]["lm"] < on_disk[prefix + "history"][0]["lm"], prefix
    assert on_disk["vqa_style"] == "master"
    # The fine-tuned maps were trained further, in their own folder.
    assert os.listdir(tmp_path / "vqa_finetune" / "checkpoints")
    assert os.listdir(tmp_path / "limber" / "vqa_finetune" / "checkpoints")
    sample = metrics["samples"][0]
    assert len(sample["human_answers"]) == 10 and isinstance(sample["answer"], str)
    # The answers of the run come back through the inference API (the caption-trained maps, zero-shot).
    captioner = AAPECaptioner.load(tmp_path)
    _, test = make_vqa_dataset(12, 6)
    answers = captioner.answer([q.image for q in test[:5]], [q.question for q in test[:5]])
    cut = [vqa_train.truncate(a, q.answers) for a, q in zip(answers, test[:5])]
    assert cut == [s["answer"] for s in metrics["samples"]]
    captions = captioner.caption([q.image for q in test[:2]])
    assert len(captions) == 2 and all(isinstance(c, str) for c in captions)


def test_truncate_to_the_longest_human_answer():
    assert vqa_train.truncate("a red circle on grey", ("red", "dark red", "red")) == "a red"
    assert vqa_train.truncate("yes it is", ("yes",)) == "yes"


def test_more_shots_than_training_questions_is_a_clear_error(store, tmp_path):
    with pytest.raises(ConfigError, match=r"asks for 400 training questions; the training pool has \d+"):
        vqa_train.train_and_evaluate(_config(store, **{"vqa.finetune_questions": 400}), str(tmp_path))
    assert not (tmp_path / "random_lm").exists()
    with pytest.raises(ConfigError, match="config.vqa.shots"):
        vqa_train.train_and_evaluate(_config(store, **{"vqa.shots": (0, -1)}), str(tmp_path / "b"))
    np.testing.assert_equal(len(make_vqa_dataset(12, 6)[0]) > 12, True)  # 2-4 questions per scene
