"""The toy world: deterministic scenes and captions, the two downstream tasks and their descriptions."""

import json
import re

import numpy as np
import pytest

from aape_jax.data import toyworld as world
from aape_jax.prompts import match_classes, read_class_descriptions

KNOWN_WORDS = set(
    "a an the of on in at and with to is this that there two pair photo picture image drawing close-up rendering "
    "shows simple it grey background coloured left right top bottom middle next".split()
) | set(world.COLORS) | set(world.SHAPES) | set(world.SIZES) | set(world.TEXTURES) | {"crosses"} \
  | {s + "s" for s in world.SHAPES} | set(world.RARE_COLOR.values()) | set(world.RARE_SHAPE.values()) \
  | {s + "s" for s in world.RARE_SHAPE.values()} | {"pluses"}


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z\-]+", text.lower())


def test_pool_is_deterministic_and_captions_use_the_world_vocabulary():
    a_images, a_captions, a_groups = world.pretraining_pool(60, seed=3)
    b_images, b_captions, b_groups = world.pretraining_pool(60, seed=3)
    np.testing.assert_array_equal(a_images, b_images)
    assert a_captions == b_captions and np.array_equal(a_groups, b_groups)
    assert a_images.shape == (60, world.IMAGE_SIZE, world.IMAGE_SIZE, 3) and a_images.dtype == np.uint8
    other, _, _ = world.pretraining_pool(60, seed=4)
    assert not np.array_equal(other, a_images)
    unknown = {w for caps in a_captions for c in caps for w in _words(c)} - KNOWN_WORDS
    assert not unknown, unknown
    assert len({c for caps in a_captions for c in caps}) > 80  # varied phrasing, not one template


def test_captions_name_what_is_drawn_and_rare_words_are_rare():
    _, captions, groups = world.pretraining_pool(1500, seed=0)
    flat = [c for caps in captions for c in caps]
    rare = set(world.RARE_COLOR.values()) | set(world.RARE_SHAPE.values())
    rare_rate = np.mean([any(w in rare for w in _words(c)) for c in flat])
    assert 0.0 < rare_rate < 0.06  # seen in pretraining, but seldom
    # toy_concepts' class names never appear.
    assert not set(world.CONCEPT_NAMES) & {w for c in flat for w in _words(c)}
    # Scenes of one content group share the colour and shape words of their captions.
    for i in np.flatnonzero(groups == groups[0])[:20]:
        key = world.content_key(world.sample_scene(np.random.default_rng([0, 0, int(i)])))
        for color, shape in key:
            assert any(color in c or world.RARE_COLOR[color] in c for c in captions[i])


def test_tasks_split_and_name_classes():
    concepts = world.make_task("toy_concepts")
    shift = world.make_task("toy_shift")
    for task in (concepts, shift):
        assert len(task.classnames) == 24 and len(set(task.classnames)) == 24
        for split, per_class in world.SPLIT_SIZES.items():
            examples = getattr(task, split)
            assert np.bincount([e.label for e in examples]).tolist() == [per_class] * 24
        assert len({e.key for e in task.train + task.val + task.test}) == 57 * 24
        # CoCoOp's split (first half base) mixes colours and shapes on both sides.
        classes = world.TASK_CLASSES[task.name]
        for half in (classes[:12], classes[12:]):
            assert len({c for c, _ in half}) >= 5 and len({s for _, s in half}) >= 4
    # Complementary halves of the 48 combinations.
    assert set(world.TASK_CLASSES["toy_concepts"]) | set(world.TASK_CLASSES["toy_shift"]) == set(world.CLASSES)
    assert concepts.classnames == list(world.CONCEPT_NAMES)
    assert all(n.split()[0] in world.COLORS for n in shift.classnames)
    again = world.make_task("toy_shift")
    np.testing.assert_array_equal(again.test[7].image, shift.test[7].image)


def test_shift_is_drawn_in_outline():
    filled = world.make_task("toy_concepts")
    rng = np.random.default_rng(0)
    scene = world.sample_scene(rng, "red", "square", single=True)
    a = world.render_scene(scene, np.random.default_rng(1), 64, "filled").astype(int)
    b = world.render_scene(scene, np.random.default_rng(1), 64, "outline").astype(int)
    red = lambda im: (im[..., 0] > 150) & (im[..., 1] < 90) & (im[..., 2] < 90)  # noqa: E731
    assert red(b).sum() < 0.8 * red(a).sum() and red(b).sum() > 0.15 * red(a).sum()
    # The square's centre is background in the outline style, object colour when filled.
    cy, cx = int(scene[0].y * 64), int(scene[0].x * 64)
    assert red(a)[cy, cx] and not red(b)[cy, cx]
    assert filled.train[0].image.shape == (32, 32, 3)
    with pytest.raises(ValueError, match="style"):
        world.render_scene(scene, rng, 32, "sketch")


def test_descriptions_are_cupl_files_with_noise(tmp_path):
    for task in world.TASKS:
        descriptions = world.task_descriptions(task)
        names = world.make_task(task).classnames
        assert list(descriptions) == names
        path = world.write_task_descriptions(tmp_path / f"{task}.json", task)
        loaded = read_class_descriptions(str(path))
        assert loaded == descriptions and json.loads(path.read_text()) == descriptions
        matched = match_classes(names, loaded, {})
        assert [len(p) for p in matched.prompts] == [len(descriptions[n]) for n in names]
        for (color, shape), name in zip(world.TASK_CLASSES[task], names):
            sentences = descriptions[name]
            assert len(set(sentences)) == len(sentences) >= 15
            # What a sentence says beyond the class name.
            content = [_words(s.replace(name, "", 1)) for s in sentences]
            informative = [w for w in content if color in w and shape in w]
            # Vague or irrelevant ones mention neither the colour nor the shape.
            noise = [w for w in content if color not in w and shape not in w]
            assert len(informative) >= 6 and len(noise) >= 5
    # Orders differ per class, so a prefix of m descriptions mixes the kinds.
    firsts = {v[0].split(" ", 2)[-1] for v in world.task_descriptions("toy_concepts").values()}
    assert len(firsts) > 3


def test_unknown_task_is_an_error():
    with pytest.raises(ValueError, match="toy_concepts"):
        world.make_task("toy_nope")
    with pytest.raises(ValueError, match="toy_concepts"):
        world.task_descriptions("toy_nope")


def test_pretraining_pool_is_the_same_rendered_by_several_processes():
    serial = world.pretraining_pool(2400, seed=1, workers=1)
    parallel = world.pretraining_pool(2400, seed=1, workers=2)  # this process and one subprocess
    np.testing.assert_array_equal(parallel[0], serial[0])
    assert parallel[1] == serial[1]
    np.testing.assert_array_equal(parallel[2], serial[2])
    for i in (0, 1199, 1200, 2399):  # either side of the split: scene i is drawn from its own seed
        rng = np.random.default_rng([1, 0, i])
        np.testing.assert_array_equal(serial[0][i], world.render_scene(world.sample_scene(rng), rng))


def test_pretraining_pool_leaves_no_renderer_running_when_it_fails(monkeypatch):
    started = []
    popen = world.subprocess.Popen

    def recording_popen(*args, **kwargs):
        started.append(popen(*args, **kwargs))
        return started[-1]

    def failing_part(*args):
        raise KeyboardInterrupt  # as a Ctrl-C while this process renders its share

    monkeypatch.setattr(world.subprocess, "Popen", recording_popen)
    monkeypatch.setattr(world, "_pool_part", failing_part)
    with pytest.raises(KeyboardInterrupt):
        world.pretraining_pool(3000, workers=3)
    assert len(started) == 2 and all(child.returncode is not None for child in started)
