"""Loss terms: task cross-entropy, distillation (with its stop-gradient), CLIP reward."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np

from aape_jax import losses


def _log_sum_exp(values):
    return math.log(sum(math.exp(v) for v in values))


def test_cross_entropy_matches_hand_computation():
    logits = jnp.array([[1.0, 2.0, 3.0], [1.0, 0.0, -1.0]])
    labels = jnp.array([2, 0])
    expected = 0.5 * ((_log_sum_exp([1.0, 2.0, 3.0]) - 3.0) + (_log_sum_exp([1.0, 0.0, -1.0]) - 1.0))
    np.testing.assert_allclose(float(losses.cross_entropy(logits, labels)), expected, rtol=1e-6)


def test_cross_entropy_uses_the_labels():
    logits = jnp.array([[1.0, 2.0, 3.0], [1.0, 0.0, -1.0]])
    a = losses.cross_entropy(logits, jnp.array([2, 0]))
    b = losses.cross_entropy(logits, jnp.array([0, 2]))
    expected_b = 0.5 * ((_log_sum_exp([1.0, 2.0, 3.0]) - 1.0) + (_log_sum_exp([1.0, 0.0, -1.0]) + 1.0))
    np.testing.assert_allclose(float(b), expected_b, rtol=1e-6)
    assert float(b) > float(a)


def test_distill_loss_hand_case():
    # Row 0: n([3, 4]) = [0.6, 0.8]; minus [1, 0] -> [-0.4, 0.8]; squared norm 0.8.
    # Row 1: n([0, 2]) = [0, 1] equals the summary -> 0. Mean over the batch: 0.4.
    aape = jnp.array([[3.0, 4.0], [0.0, 2.0]])
    summary = jnp.array([[1.0, 0.0], [0.0, 1.0]])
    np.testing.assert_allclose(float(losses.distill_loss(aape, summary)), 0.4, rtol=1e-6)


def test_distill_loss_normalises_the_aape_only():
    # Scaling the AAPE changes nothing; the summary is taken as given (already normalised upstream).
    aape = jnp.array([[3.0, 4.0]])
    summary = jnp.array([[1.0, 0.0]])
    np.testing.assert_allclose(float(losses.distill_loss(10.0 * aape, summary)), 0.8, rtol=1e-6)


def test_distill_loss_gradient_flows_to_the_aape_only():
    key_a, key_s = jax.random.split(jax.random.key(0))
    aape = jax.random.normal(key_a, (4, 8))
    summary = jax.random.normal(key_s, (4, 8))
    summary = summary / jnp.linalg.norm(summary, axis=-1, keepdims=True)
    grad_aape, grad_summary = jax.grad(losses.distill_loss, argnums=(0, 1))(aape, summary)
    chex.assert_trees_all_equal(grad_summary, jnp.zeros_like(summary))
    assert float(jnp.abs(grad_aape).max()) > 1e-3
    chex.assert_tree_all_finite(grad_aape)


def _clip_reward_hand(summary, image, scale):
    logits = [[scale * sum(s * i for s, i in zip(srow, irow)) for irow in image] for srow in summary]
    n = len(logits)
    rows = sum(_log_sum_exp(logits[b]) - logits[b][b] for b in range(n)) / n
    cols = sum(_log_sum_exp([logits[r][b] for r in range(n)]) - logits[b][b] for b in range(n)) / n
    return 0.5 * (rows + cols)


def test_clip_reward_loss_hand_2x2():
    # Asymmetric similarity [[1, 0.6], [0, 0.8]]: the row and column directions differ.
    summary = [[1.0, 0.0], [0.0, 1.0]]
    image = [[1.0, 0.0], [0.6, 0.8]]
    scale = 2.0
    # Written out: logits = [[2, 1.2], [0, 1.6]].
    expected = 0.5 * (
        0.5 * ((_log_sum_exp([2.0, 1.2]) - 2.0) + (_log_sum_exp([0.0, 1.6]) - 1.6))
        + 0.5 * ((_log_sum_exp([2.0, 0.0]) - 2.0) + (_log_sum_exp([1.2, 1.6]) - 1.6))
    )
    np.testing.assert_allclose(_clip_reward_hand(summary, image, scale), expected, rtol=1e-12)
    got = losses.clip_reward_loss(jnp.array(summary), jnp.array(image), jnp.log(scale))
    np.testing.assert_allclose(float(got), expected, rtol=1e-6)


def test_clip_reward_loss_takes_the_log_scale():
    summary = jnp.array([[1.0, 0.0], [0.0, 1.0]])
    image = jnp.array([[1.0, 0.0], [0.6, 0.8]])
    for scale in (1.0, 10.0, 100.0):
        got = losses.clip_reward_loss(summary, image, jnp.asarray(np.log(scale), jnp.float32))
        np.testing.assert_allclose(
            float(got), _clip_reward_hand(summary.tolist(), image.tolist(), scale), rtol=1e-5, atol=1e-7
        )


def test_clip_reward_loss_perfect_alignment_is_near_zero():
    eye = jnp.eye(4)
    got = losses.clip_reward_loss(eye, eye, jnp.log(100.0))
    assert 0.0 <= float(got) < 1e-6
    # At scale 1 the same alignment is far from zero: the scale is actually applied.
    assert float(losses.clip_reward_loss(eye, eye, jnp.asarray(0.0))) > 0.5


def test_clip_reward_loss_is_symmetric():
    key_s, key_i = jax.random.split(jax.random.key(1))
    summary = jax.random.normal(key_s, (5, 8))
    image = jax.random.normal(key_i, (5, 8))
    summary = summary / jnp.linalg.norm(summary, axis=-1, keepdims=True)
    image = image / jnp.linalg.norm(image, axis=-1, keepdims=True)
    scale = jnp.log(20.0)
    a = losses.clip_reward_loss(summary, image, scale)
    b = losses.clip_reward_loss(image, summary, scale)
    np.testing.assert_allclose(float(a), float(b), rtol=1e-6)
    # And it matches the hand formula on this non-trivial case.
    np.testing.assert_allclose(
        float(a), _clip_reward_hand(np.asarray(summary).tolist(), np.asarray(image).tolist(), 20.0), rtol=1e-5
    )
