"""Captioning (LiMBeR and AAPE on a frozen decoder): the loss masks, leave-one-out aggregation, the runlocal
pipeline (metrics, checkpoints, the LiMBeR baseline beside AAPE), 1 vs 8 devices, resume after SIGKILL,
the inference API, and bad input."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from etils import epath
from PIL import Image

from aape_jax import lm
from aape_jax.captioning import AAPECaptioner
from aape_jax.captioning import train as captioning_train
from aape_jax.captioning.model import CaptionMaps, MapConfig, init_maps
from aape_jax.captioning.train_step import CaptionData, example_keys, make_loss_fn, pick_targets, target_loss
from aape_jax.configs.retrieval import data_spec
from aape_jax.data.synthetic_captions import make_captioned_dataset
from aape_jax.errors import ConfigError
from aape_jax.lm import tiny as lm_tiny
from aape_jax.models.aape import AAPEConfig
from aape_jax.train_step import LossWeights
from experiments import aape_captioning, limber_captioning

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(store, method="aape", **overrides):
    module = aape_captioning if method == "aape" else limber_captioning
    config = module.get_config("runlocal")
    config.feature_store = str(store)
    config.dataset.synthetic_train = 32
    config.eval.synthetic_test.synthetic_test = 8
    config.batch_size = 8
    config.num_epochs = 4
    config.decoding.max_new_tokens = 6
    config.update_from_flattened_dict(overrides)
    return config


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return tmp_path_factory.mktemp("captioning_store")


def _nocaps(root):
    """A NoCaps val tree: two images per domain, three captions each."""
    os.makedirs(root, exist_ok=True)
    images, annotations = [], []
    for i, domain in enumerate(["in-domain", "near-domain", "out-domain"] * 2):
        name = f"{i:016x}.jpg"
        Image.fromarray(make_captioned_dataset(0, 6).test[i].image).save(os.path.join(root, name))
        images.append({"id": i, "file_name": name, "domain": domain})
        annotations += [{"image_id": i, "id": 10 * i + j, "caption": f"a shape number {j} on a grey background"}
                        for j in range(3)]
    with open(os.path.join(root, captioning_train.NOCAPS_FILE), "w") as f:
        json.dump({"images": images, "annotations": annotations}, f)
    return str(root)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, store):
    """AAPE and the LiMBeR baseline; beam search; the synthetic test set and a small NoCaps val."""
    workdir = tmp_path_factory.mktemp("captioning_run")
    config = _config(store, **{"decoding.method": "beam", "decoding.num_beams": 2})
    config.eval.nocaps_val = data_spec("nocaps", "val")
    config.eval.nocaps_val.root = _nocaps(tmp_path_factory.mktemp("nocaps"))
    return str(workdir), captioning_train.train_and_evaluate(config, str(workdir))


# ---------------------------------------------------------------- the loss


@pytest.fixture(scope="module")
def decoder(tmp_path_factory):
    return lm.load(lm_tiny.write_checkpoint(tmp_path_factory.mktemp("decoder"), "gpt2"))


def test_only_target_tokens_carry_the_loss(decoder):
    """Soft tokens, prompt and padding contribute nothing; every target token does."""
    rng = np.random.default_rng(0)
    w = decoder.config.hidden_size
    soft = jnp.asarray(rng.normal(size=(2, 3, w)), jnp.float32)
    prompt = jnp.asarray([[7, 8, 9], [0, 8, 9]], jnp.int32)
    prompt_mask = jnp.asarray([[True, True, True], [False, True, True]])  # left-padded
    targets = jnp.asarray([[20, 21, 22, 23], [30, 31, 5, 5]], jnp.int32)
    target_mask = jnp.asarray([[True] * 4, [True, True, False, False]])  # right-padded
    loss = jax.jit(lambda s, p, t: target_loss(decoder.config, jnp.float32, decoder.params, s, p, prompt_mask, t,
                                               target_mask))
    total, count = loss(soft, prompt, targets)
    assert count == 6
    # The padding's ids (a padded prompt slot, padded targets) change nothing.
    same, _ = loss(soft, prompt.at[1, 0].set(123), targets.at[1, 2:].set(77))
    np.testing.assert_allclose(same, total, rtol=1e-6)
    # A real target token, a prompt token or a soft token does.
    for changed in (loss(soft, prompt, targets.at[1, 1].set(40))[0], loss(soft, prompt.at[0, 1].set(40), targets)[0],
                    loss(soft.at[0, 1].add(jnp.asarray(rng.normal(size=w), jnp.float32)), prompt, targets)[0]):
        assert abs(float(changed) - float(total)) > 1e-4
    # The loss is the next-token cross-entropy of the targets: check the first one of row 0 by hand.
    embeds = jnp.concatenate([soft, decoder.embed(jnp.concatenate([prompt, targets], 1))], 1)
    mask = jnp.concatenate([jnp.ones((2, 3), bool), prompt_mask, target_mask], 1)
    logits = decoder.logits_from_embeds(embeds, mask)
    first = -jax.nn.log_softmax(logits[0, 3 + 3 - 1])[20]
    one_row = target_loss(decoder.config, jnp.float32, decoder.params, soft[:1], prompt[:1], prompt_mask[:1],
                          targets[:1, :1], target_mask[:1, :1])[0]
    np.testing.assert_allclose(one_row, first, rtol=1e-5)


def test_leave_one_out_summary_never_sees_the_target_caption(decoder):
    d, m, b = 16, 4, 6
    maps = CaptionMaps(MapConfig(lm_width=decoder.config.hidden_size, feature_dim=d, num_image_tokens=2,
                                 aape=AAPEConfig(embed_dim=d, num_heads=2, generator_hidden=4)))
    params = init_maps(maps, jax.random.key(0))
    rng = np.random.default_rng(1)
    captions = rng.normal(size=(b, m, d)).astype(np.float32)
    valid = np.ones((b, m), bool)
    valid[0, 3] = False
    data = CaptionData(lm_params=decoder.params, targets=jnp.asarray(rng.integers(4, 100, (b, m, 3)), jnp.int32),
                       target_mask=jnp.ones((b, m, 3), bool), prompt_ids=jnp.full((b, 2), 9, jnp.int32),
                       prompt_mask=jnp.ones((b, 2), bool), caption_embeds=jnp.asarray(captions),
                       caption_valid=jnp.asarray(valid), logit_scale=jnp.asarray(np.log(100.0)))
    batch = {"features": jnp.asarray(rng.normal(size=(b, d)), jnp.float32), "prompt_rows": jnp.arange(b),
             "index": jnp.arange(b), "labels": jnp.arange(b)}
    key = jax.random.key(3)
    loss_fn = make_loss_fn(maps, decoder.config, jnp.float32, LossWeights())

    def loss_of_captions(embeds):
        return loss_fn(params, batch, data.replace(caption_embeds=embeds), key)[0]

    grads = np.asarray(jax.jit(jax.grad(loss_of_captions))(jnp.asarray(captions)))  # [B, M, D]
    pick = np.asarray(pick_targets(example_keys(key, batch["index"]), jnp.asarray(valid)))
    for i in range(b):
        assert not np.any(grads[i, pick[i]]), (i, pick[i])  # the target caption is not in its own summary
        others = [j for j in range(m) if j != pick[i] and valid[i, j]]
        assert all(np.any(grads[i, j]) for j in others), i  # the other captions are
    assert not np.any(grads[0, 3])  # a missing caption neither
    # In training the AAPE tokens come from the summary: the decoder's loss itself depends on the other captions.
    lm_grads = np.asarray(jax.jit(jax.grad(
        lambda e: loss_fn(params, batch, data.replace(caption_embeds=e), key)[1]["lm"]))(jnp.asarray(captions)))
    assert all(np.any(lm_grads[i, j]) for i in range(b) for j in range(m) if j != pick[i] and valid[i, j])


# ---------------------------------------------------------------- the pipeline


def test_runlocal_trains_and_writes_metrics(trained):
    workdir, metrics = trained
    on_disk = json.load(open(os.path.join(workdir, "metrics.json")))
    for prefix in ("", "limber_"):
        for key in ("cider_d", "bleu_4", "meteor", "clip_s", "refclip_s"):
            assert isinstance(on_disk[prefix + key], float), prefix + key
            assert on_disk[prefix + key] == on_disk[f"{prefix}synthetic_test_{key}"]
        assert 0 <= on_disk[prefix + "clip_s"] <= 250 and 0 <= on_disk[prefix + "refclip_s"] <= 250
        history = on_disk[prefix + "history"]
        assert len(history) == 4 and history[-1]["lm"] < history[0]["lm"], prefix
    for part in ("distill", "agg"):
        assert metrics["history"][-1][part] < metrics["history"][0][part], part
    assert "distill" not in metrics["limber_history"][0]
    for prefix in ("", "limber_"):  # NoCaps: the whole set and each domain
        for part in ("", "in_", "near_", "out_"):
            for key in ("cider_d", "bleu_4", "meteor", "clip_s", "refclip_s"):
                assert isinstance(on_disk[f"{prefix}nocaps_val_{part}{key}"], float), (prefix, part, key)
    assert len(metrics["samples"]) == 5 and all(isinstance(s["caption"], str) for s in metrics["samples"])
    # Only the maps are checkpointed (never CLIP or the decoder); the baseline in its own folder.
    for run, tree in ((workdir, {"image_map", "aape", "aape_map"}), (os.path.join(workdir, "limber"), {"image_map"})):
        steps = sorted(int(p) for p in os.listdir(os.path.join(run, "checkpoints")) if p.isdigit())
        saved = ocp.PyTreeCheckpointHandler().metadata(epath.Path(run) / "checkpoints" / str(steps[-1]) / "state")
        assert set(saved.tree["params"]) == tree
    assert json.load(open(os.path.join(workdir, "config.json")))["config"]["task"] == "captioning"
    assert metrics["num_devices"] == 8


def test_one_device_trains_the_same(trained, store, tmp_path):
    _, eight = trained
    one = captioning_train.train_and_evaluate(_config(store, num_devices=1, compare_limber=False,
                                                      coco_metrics=False), str(tmp_path))
    assert one["num_devices"] == 1
    np.testing.assert_allclose([h["loss"] for h in one["history"]], [h["loss"] for h in eight["history"]],
                               rtol=1e-4)


def test_captioner_reproduces_the_evaluation(trained):
    workdir, metrics = trained
    captioner = AAPECaptioner.load(workdir)
    test = make_captioned_dataset(0, 8).test
    captions = captioner.caption([im.image for im in test])
    assert captions[:5] == [s["caption"] for s in metrics["samples"]]
    answers = captioner.answer([im.image for im in test[:3]], ["what colour is the circle?", "how many?", "is it?"])
    assert len(answers) == 3 and all(isinstance(a, str) and "\n" not in a for a in answers)
    path = os.path.join(workdir, "one.png")
    Image.fromarray(test[0].image).save(path)
    assert captioner.caption([path]) == captions[:1]  # a path reads as the array it was saved from


_TWO_DEVICES = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")


def _main(workdir, store):
    return [sys.executable, "-m", "aape_jax.main", "--config", "experiments/limber_captioning.py:runlocal",
            f"--config.feature_store={store}", f"--workdir={workdir}", "--config.dataset.synthetic_train=32",
            "--config.eval.synthetic_test.synthetic_test=8", "--config.batch_size=8", "--config.num_epochs=8",
            "--config.decoding.max_new_tokens=6", "--config.coco_metrics=false"]


def test_resume_after_sigkill_equals_uninterrupted(store, tmp_path):
    uninterrupted = captioning_train.train_and_evaluate(
        _config(store, method="limber", num_epochs=8, num_devices=2, coco_metrics=False), str(tmp_path / "whole"))
    workdir = tmp_path / "killed"
    proc = subprocess.Popen(_main(workdir, store), cwd=REPO, env=_TWO_DEVICES, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        ckpts = workdir / "checkpoints"
        if ckpts.is_dir() and any(p.name.isdigit() and int(p.name) >= 12 for p in ckpts.iterdir()):
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    assert proc.wait() == -signal.SIGKILL, "the run ended before the kill"
    assert not (workdir / "metrics.json").exists()
    subprocess.run(_main(workdir, store), cwd=REPO, env=_TWO_DEVICES, check=True, capture_output=True)
    resumed = json.load(open(workdir / "metrics.json"))
    np.testing.assert_allclose([h["loss"] for h in resumed["history"]],
                               [h["loss"] for h in uninterrupted["history"]], rtol=1e-6)
    assert resumed["cider_d"] == pytest.approx(uninterrupted["cider_d"], abs=1e-6)


# ---------------------------------------------------------------- bad input


def _karpathy(root, captions_per_image):
    """A Karpathy-format COCO tree: one 32-px JPEG per entry of `captions_per_image` (train split)."""
    images = []
    for i, caps in enumerate(captions_per_image):
        name = f"COCO_train2014_{i:012d}.jpg"
        os.makedirs(os.path.join(root, "train2014"), exist_ok=True)
        Image.fromarray(np.full((32, 32, 3), 40 * i % 255, np.uint8)).save(os.path.join(root, "train2014", name))
        images.append({"filepath": "train2014", "filename": name, "split": "train", "imgid": i,
                       "sentences": [{"raw": c} for c in caps]})
    with open(os.path.join(root, "dataset_coco.json"), "w") as f:
        json.dump({"dataset": "coco", "images": images}, f)
    return str(root)


def _coco_config(root, store, **overrides):
    config = _config(store, **overrides)
    config.dataset.name = "coco"
    config.dataset.root = root
    config.batch_size, config.num_devices = 2, 2
    return config


def test_single_caption_images_need_limber(store, tmp_path):
    root = _karpathy(tmp_path / "coco", [["a dog", "a brown dog"], ["a cat"], ["a car", "a red car"]])
    with pytest.raises(ConfigError, match=r"1 training images have a single caption.*COCO_train2014_000000000001"):
        captioning_train.train_and_evaluate(_coco_config(root, store), str(tmp_path / "run"))
    assert not (tmp_path / "run" / "random_lm").exists()  # stopped before any slow work


def test_caption_longer_than_the_context_is_a_clear_error(store, tmp_path):
    long = "a " + " ".join(["very"] * 300) + " long caption"
    root = _karpathy(tmp_path / "coco", [["a dog", long], ["a cat", "a grey cat"]])
    with pytest.raises(ConfigError, match=r"more than the context of .*random_lm \(128 positions\)"):
        captioning_train.train_and_evaluate(_coco_config(root, store, method="limber", max_caption_tokens=400,
                                                         compare_limber=False), str(tmp_path / "run"))


def test_pmap_loss_and_gradients_equal_jit(decoder):
    """The pmap branch: the token mean over the global batch and the gathered CLIP reward."""
    d, m, b = 16, 3, 8
    maps = CaptionMaps(MapConfig(lm_width=decoder.config.hidden_size, feature_dim=d, num_image_tokens=2,
                                 aape=AAPEConfig(embed_dim=d, num_heads=2, generator_hidden=4)))
    params = init_maps(maps, jax.random.key(0))
    rng = np.random.default_rng(2)
    lengths = rng.integers(1, 5, (b, m))  # targets of unequal lengths: per-device token counts differ
    mask = np.arange(5)[None, None, :] < lengths[..., None]
    data = CaptionData(lm_params=decoder.params, targets=jnp.asarray(rng.integers(4, 100, (b, m, 5)), jnp.int32),
                       target_mask=jnp.asarray(mask), prompt_ids=jnp.full((b, 2), 9, jnp.int32),
                       prompt_mask=jnp.ones((b, 2), bool),
                       caption_embeds=jnp.asarray(rng.normal(size=(b, m, d)), jnp.float32),
                       caption_valid=jnp.ones((b, m), bool), logit_scale=jnp.asarray(np.log(100.0)))
    batch = {"features": jnp.asarray(rng.normal(size=(b, d)), jnp.float32), "prompt_rows": jnp.arange(b),
             "index": jnp.arange(b), "labels": jnp.arange(b)}
    key = jax.random.key(4)
    single = jax.jit(jax.grad(make_loss_fn(maps, decoder.config, jnp.float32, LossWeights()), has_aux=True))
    grads, parts = single(params, batch, data, key)
    n = jax.device_count()
    assert n == 8
    per_device = make_loss_fn(maps, decoder.config, jnp.float32, LossWeights(), axis_name="d")

    def step(batch):
        g, p = jax.grad(per_device, has_aux=True)(params, batch, data, key)
        return jax.lax.pmean(g, "d"), jax.lax.pmean(p, "d")

    split = {k: v.reshape(n, b // n, *v.shape[1:]) for k, v in batch.items()}
    pgrads, pparts = jax.pmap(step, axis_name="d")(split)
    for name in ("loss", "lm", "distill", "agg"):
        np.testing.assert_allclose(pparts[name][0], parts[name], rtol=1e-5, err_msg=name)
    jax.tree.map(lambda a, b_: np.testing.assert_allclose(a[0], b_, rtol=1e-4, atol=1e-6), pgrads, grads)


def test_grid_rows_split_into_the_feature_and_the_patch_tokens(tmp_path, decoder):
    import torch
    import transformers

    from aape_jax import clip as clip_lib
    from aape_jax.captioning.captioner import AAPECaptioner
    from aape_jax.captioning.train_step import split_features
    from aape_jax.clip import tiny as clip_tiny

    model_clip = clip_lib.load(clip_tiny.write_checkpoint(tmp_path / "clip"))
    pixels = np.random.default_rng(0).normal(size=(3, 32, 32, 3)).astype(np.float32)
    rows = model_clip.encode_image_grid(pixels)
    c = model_clip.config
    maps = CaptionMaps(MapConfig(lm_width=decoder.config.hidden_size, image_input="grid", feature_dim=c.projection_dim,
                                 grid_width=c.vision.hidden_size, num_image_tokens=0))
    pooled, grid = split_features(maps, jnp.asarray(rows))
    np.testing.assert_allclose(np.asarray(pooled), model_clip.encode_image(pixels), atol=1e-6)
    reference = transformers.CLIPModel.from_pretrained(tmp_path / "clip").eval()
    with torch.no_grad():
        hidden = reference.vision_model(pixel_values=torch.tensor(pixels).permute(0, 3, 1, 2)).last_hidden_state
    np.testing.assert_allclose(np.asarray(grid), hidden[:, 1:].numpy(), atol=1e-5)  # [N, P, W], patch order
    # One soft token per patch reaches the decoder.
    captioner = AAPECaptioner(model_clip, decoder, maps, init_maps(maps, jax.random.key(0)),
                              decoding={"method": "greedy", "max_new_tokens": 3}, batch_size=4)
    assert captioner._soft(captioner.params, jnp.asarray(rows)).shape == (3, c.vision.num_patches,
                                                                          decoder.config.hidden_size)
    assert len(captioner.caption_features(rows)) == 3
