"""Learner modules: aggregators, generator, heads, the text-encoder seam, the AAPE module."""

import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import ml_collections
import pytest

from aape_jax import clip
from aape_jax.clip import tiny
from aape_jax.clip.config import CLIPConfig, TextConfig, VisionConfig
from aape_jax.clip.model import CLIP
from aape_jax.configs import classification
from aape_jax.models import aggregator as agg
from aape_jax.models.aape import AAPE, AAPEConfig, aape_config
from aape_jax.models.generator import PromptGenerator
from aape_jax.models.heads import (
    COMBINE_MODES,
    TEXT_MEMORY_GB,
    TOKEN_POSITIONS,
    ClassPrefixCache,
    ClassText,
    FeatureHead,
    FeatureProjection,
    TokenHead,
    TokenProjection,
    class_prefix_cache,
    classes_per_chunk,
    insert_tokens,
    make_head,
    pair_activation_bytes,
    template_ids,
)
from aape_jax.numerics import l2_normalize

B, M, D = 3, 5, 16
NUM_HEADS = 4


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    return clip.load(tiny.write_checkpoint(tmp_path_factory.mktemp("tiny_clip")))


def _inputs(seed=0, b=B, m=M, d=D):
    """Normalised q [b, d], prompts [b, m, d], a mask [b, m] with 1..m valid prompts per row (not a prefix)."""
    kq, kp = jax.random.split(jax.random.key(seed))
    q = l2_normalize(jax.random.normal(kq, (b, d)))
    prompts = jax.random.normal(kp, (b, m, d))
    rng = np.random.default_rng(seed)
    mask = np.zeros((b, m), bool)
    for row in range(b):
        count = 1 + row % m if row < m else m
        count = max(2, count) if row == 0 else count
        mask[row, rng.choice(m, size=count, replace=False)] = True
    return q, prompts, jnp.asarray(mask)


def _make(name):
    if name == "attention":
        return agg.AttentionAggregator(num_heads=NUM_HEADS)
    if name == "mlp":
        return agg.MLPAggregator(hidden=8)
    return agg.AGGREGATORS[name]()


def _init(module, q, prompts, mask, seed=1):
    params = module.init(jax.random.key(seed), q, prompts, mask)
    if isinstance(module, agg.MLPAggregator):
        # fc2 starts at zero (the MLP is the mean at init); make it do something so the tests bite.
        fc2 = params["params"]["fc2"]
        fc2["kernel"] = 0.5 * jax.random.normal(jax.random.key(seed + 7), fc2["kernel"].shape)
        fc2["bias"] = 0.1 * jax.random.normal(jax.random.key(seed + 8), fc2["bias"].shape)
    return params


def _row_permute(x, perm):
    """Per-row permutation along axis 1 of x [B, M, ...] with perm [B, M]."""
    idx = perm.reshape(perm.shape + (1,) * (x.ndim - 2))
    return jnp.take_along_axis(x, idx, axis=1)


# ----------------------------------------------------------------------------- aggregators


def test_aggregator_registry():
    assert set(agg.AGGREGATORS) == {"attention", "mean", "random", "mlp"}
    assert agg.AGGREGATORS["attention"] is agg.AttentionAggregator
    assert agg.AGGREGATORS["mean"] is agg.MeanAggregator
    assert agg.AGGREGATORS["random"] is agg.RandomAggregator
    assert agg.AGGREGATORS["mlp"] is agg.MLPAggregator


def test_masked_mean_by_hand():
    prompts = np.arange(2 * 3 * 2, dtype=np.float32).reshape(2, 3, 2)
    mask = np.array([[True, False, True], [False, True, False]])
    expected = np.stack([(prompts[0, 0] + prompts[0, 2]) / 2, prompts[1, 1]])
    np.testing.assert_array_equal(np.asarray(agg.masked_mean(jnp.asarray(prompts), jnp.asarray(mask))), expected)


def test_masked_mean_with_no_valid_prompt_is_finite_zero():
    prompts = jnp.ones((1, 3, 2))
    out = agg.masked_mean(prompts, jnp.zeros((1, 3), bool))
    chex.assert_trees_all_equal(out, jnp.zeros((1, 2)))


@pytest.mark.parametrize("name", ["attention", "mean", "random", "mlp"])
def test_aggregator_shapes(name):
    q, prompts, mask = _inputs()
    module = _make(name)
    params = _init(module, q, prompts, mask)
    out = module.apply(params, q, prompts, mask)
    chex.assert_shape(out, (B, D))
    chex.assert_tree_all_finite(out)
    if name == "random":
        keys = jax.random.split(jax.random.key(3), B)
        out = module.apply(params, q, prompts, mask, keys)
        chex.assert_shape(out, (B, D))


@pytest.mark.parametrize("name", ["mean", "random"])
def test_parameter_free_aggregators_have_no_params(name):
    q, prompts, mask = _inputs()
    params = _make(name).init(jax.random.key(0), q, prompts, mask)
    assert jax.tree_util.tree_leaves(params) == []


def test_mean_aggregator_is_masked_mean():
    q, prompts, mask = _inputs()
    module = agg.MeanAggregator()
    out = module.apply({}, q, prompts, mask)
    np.testing.assert_allclose(np.asarray(out), np.asarray(agg.masked_mean(prompts, mask)), rtol=0, atol=0)


def test_random_aggregator_without_keys_is_masked_mean():
    q, prompts, mask = _inputs()
    out = agg.RandomAggregator().apply({}, q, prompts, mask, None)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(agg.masked_mean(prompts, mask)))


def test_mlp_aggregator_at_init_is_the_mean():
    q, prompts, mask = _inputs()
    module = agg.MLPAggregator(hidden=8)
    params = module.init(jax.random.key(0), q, prompts, mask)
    np.testing.assert_allclose(
        np.asarray(module.apply(params, q, prompts, mask)), np.asarray(agg.masked_mean(prompts, mask)), atol=1e-6
    )


@pytest.mark.parametrize("name", ["attention", "mean", "mlp"])
def test_aggregator_is_invariant_to_prompt_order(name):
    q, prompts, mask = _inputs(seed=2)
    module = _make(name)
    params = _init(module, q, prompts, mask)
    base = module.apply(params, q, prompts, mask)
    for seed in range(3):
        perm = jnp.asarray(np.stack([np.random.default_rng(seed * 10 + r).permutation(M) for r in range(B)]))
        out = module.apply(params, q, _row_permute(prompts, perm), _row_permute(mask, perm))
        np.testing.assert_allclose(np.asarray(out), np.asarray(base), rtol=1e-5, atol=1e-6)
    # Guard: the property is not trivially true because the output ignores the prompts.
    other = module.apply(params, q, prompts.at[:, :, 0].add(1.0), mask)
    assert float(jnp.abs(other - base).max()) > 1e-3


def test_random_aggregator_picks_a_valid_prompt_deterministically():
    q, prompts, mask = _inputs(seed=3)
    module = agg.RandomAggregator()
    for seed in range(4):
        keys = jax.random.split(jax.random.key(seed), B)
        out = np.asarray(module.apply({}, q, prompts, mask, keys))
        again = np.asarray(module.apply({}, q, prompts, mask, keys))
        np.testing.assert_array_equal(out, again)
        # The same, with the prompts permuted: still one of the valid prompts.
        perm = jnp.asarray(np.stack([np.random.default_rng(seed + r).permutation(M) for r in range(B)]))
        out_perm = np.asarray(module.apply({}, q, _row_permute(prompts, perm), _row_permute(mask, perm), keys))
        for result in (out, out_perm):
            for row in range(B):
                hits = [j for j in range(M) if np.array_equal(result[row], np.asarray(prompts[row, j]))]
                assert len(hits) == 1, f"row {row}: output is not exactly one prompt"
                assert bool(mask[row, hits[0]]), f"row {row}: picked padded prompt {hits[0]}"


def test_random_aggregator_reaches_every_valid_prompt_and_no_padded_one():
    # One example tiled over many keys: every valid prompt is drawn, never a padded one.
    n = 256
    prompts = jnp.broadcast_to(jnp.arange(M, dtype=jnp.float32)[:, None], (M, D))[None]  # prompt j == j
    mask = jnp.array([[True, False, True, True, False]])
    keys = jax.random.split(jax.random.key(0), n)
    out = agg.RandomAggregator().apply(
        {}, jnp.zeros((n, D)), jnp.broadcast_to(prompts, (n, M, D)), jnp.broadcast_to(mask, (n, M)), keys
    )
    picked = np.asarray(out[:, 0]).astype(int)
    assert set(picked.tolist()) == {0, 2, 3}
    # Each key decides its own row: row i does not depend on the batch around it.
    single = agg.RandomAggregator().apply({}, jnp.zeros((1, D)), prompts, mask, keys[5:6])
    np.testing.assert_array_equal(np.asarray(single[0]), np.asarray(out[5]))


@pytest.mark.parametrize("name", ["attention", "mean", "mlp", "random"])
def test_padded_prompts_change_nothing(name):
    q, prompts, mask = _inputs(seed=4)
    module = _make(name)
    params = _init(module, q, prompts, mask)
    base = module.apply(params, q, prompts, mask)
    extra = 3
    garbage = 50.0 * jax.random.normal(jax.random.key(9), (B, extra, D))
    padded_prompts = jnp.concatenate([prompts, garbage], axis=1)
    padded_mask = jnp.concatenate([mask, jnp.zeros((B, extra), bool)], axis=1)
    out = module.apply(params, q, padded_prompts, padded_mask)  # random: rng None -> the mean
    np.testing.assert_allclose(np.asarray(out), np.asarray(base), rtol=1e-6, atol=1e-6)
    # Garbage in the already padded slots changes nothing either.
    scrambled = jnp.where(mask[..., None], prompts, 1e3 * jax.random.normal(jax.random.key(10), prompts.shape))
    out = module.apply(params, q, scrambled, mask)
    np.testing.assert_allclose(np.asarray(out), np.asarray(base), rtol=1e-6, atol=1e-6)


def test_attention_with_one_valid_prompt_ignores_the_rest():
    q, prompts, _ = _inputs(seed=5)
    mask = jnp.zeros((B, M), bool).at[:, 2].set(True)
    module = agg.AttentionAggregator(num_heads=NUM_HEADS)
    params = module.init(jax.random.key(0), q, prompts, mask)
    out = module.apply(params, q, prompts, mask)
    other = prompts.at[:, jnp.array([0, 1, 3, 4])].set(
        100.0 * jax.random.normal(jax.random.key(11), (B, 4, D))
    )
    other_q = l2_normalize(jax.random.normal(jax.random.key(12), (B, D)))
    np.testing.assert_allclose(np.asarray(module.apply(params, q, other, mask)), np.asarray(out), atol=1e-6)
    # With a single key the attention weight is 1: the output is out_proj(value_proj(prompt)), whatever q is.
    np.testing.assert_allclose(np.asarray(module.apply(params, other_q, other, mask)), np.asarray(out), atol=1e-6)
    p = params["params"]["attention"]
    value = jnp.einsum("bd,dhk->bhk", prompts[:, 2], p["value"]["kernel"]) + p["value"]["bias"]
    expected = jnp.einsum("bhk,hkd->bd", value, p["out"]["kernel"]) + p["out"]["bias"]
    np.testing.assert_allclose(np.asarray(out), np.asarray(expected), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- generator and heads


def test_generator_shape():
    gen = PromptGenerator(hidden=4, out_dim=D)
    x = jnp.ones((B, D))
    params = gen.init(jax.random.key(0), x)
    chex.assert_shape(gen.apply(params, x), (B, D))
    chex.assert_shape(params["params"]["linear1"]["kernel"], (D, 4))
    chex.assert_shape(params["params"]["linear2"]["kernel"], (4, D))


def test_feature_head_shape_and_zero_init():
    head = FeatureHead(embed_dim=D).module()
    assert isinstance(head, FeatureProjection) and head.embed_dim == D
    aape = jax.random.normal(jax.random.key(0), (B, D))
    params = head.init(jax.random.key(1), aape)
    out = head.apply(params, aape)
    chex.assert_shape(out, (B, D))
    chex.assert_trees_all_equal(out, jnp.zeros((B, D)))


def test_token_head_shape():
    head = TokenHead(num_tokens=3, token_width=8).module()
    assert isinstance(head, TokenProjection) and (head.num_tokens, head.token_width) == (3, 8)
    aape = jax.random.normal(jax.random.key(0), (B, D))
    params = head.init(jax.random.key(1), aape)
    out = head.apply(params, aape)
    chex.assert_shape(out, (B, 3, 8))
    # Row-major reshape of the [B, T*W] projection.
    flat = aape @ params["params"]["proj"]["kernel"] + params["params"]["proj"]["bias"]
    np.testing.assert_allclose(np.asarray(out), np.asarray(flat.reshape(B, 3, 8)), rtol=1e-6, atol=1e-7)


def test_untrained_feature_head_is_zero_shot_clip():
    c = 4
    features = l2_normalize(jax.random.normal(jax.random.key(0), (c, D)))
    class_text = ClassText(features=features, ids=jnp.zeros((c, 3), jnp.int32), eot=jnp.zeros((c,), jnp.int32))
    head = FeatureHead(embed_dim=D)
    module = head.module()
    aape = jax.random.normal(jax.random.key(1), (B, D))
    params = module.init(jax.random.key(2), aape)
    weights = head.class_weights(module.apply(params, aape), class_text)
    chex.assert_shape(weights, (B, c, D))
    np.testing.assert_allclose(
        np.asarray(weights), np.broadcast_to(np.asarray(features), (B, c, D)), rtol=1e-6, atol=1e-7
    )


def test_feature_class_weights_add_then_normalise():
    features = l2_normalize(jnp.array([[1.0, 0.0], [0.0, 1.0]]))
    class_text = ClassText(features=features, ids=jnp.zeros((2, 3), jnp.int32), eot=jnp.zeros((2,), jnp.int32))
    head_out = jnp.array([[0.0, 1.0]])
    weights = FeatureHead(embed_dim=2).class_weights(head_out, class_text)
    s = 1 / np.sqrt(2)
    np.testing.assert_allclose(np.asarray(weights), [[[s, s], [0.0, 1.0]]], rtol=1e-6)


def test_insert_tokens_exact_placement():
    c, length, t, b, w = 2, 4, 2, 3, 3
    template = np.arange(c * length * w, dtype=np.float32).reshape(c, length, w)
    tokens = 1000.0 + np.arange(b * t * w, dtype=np.float32).reshape(b, t, w)
    eot = np.array([2, 3], np.int32)
    x, positions = insert_tokens(jnp.asarray(template), jnp.asarray(eot), jnp.asarray(tokens))
    chex.assert_shape(x, (b * c, length + t, w))
    chex.assert_shape(positions, (b * c,))
    expected = np.zeros((b * c, length + t, w), np.float32)
    expected_pos = np.zeros((b * c,), np.int32)
    for i in range(b):
        for j in range(c):
            row = i * c + j  # image-major
            expected[row, 0] = template[j, 0]  # [SOS]
            expected[row, 1 : 1 + t] = tokens[i]  # the inserted tokens, in order
            expected[row, 1 + t :] = template[j, 1:]  # the rest, shifted by T
            expected_pos[row] = eot[j] + t
    np.testing.assert_array_equal(np.asarray(x), expected)
    np.testing.assert_array_equal(np.asarray(positions), expected_pos)


def test_template_ids_trimmed_with_room(tiny_clip):
    tok = tiny_clip.tokenizer
    prompts = ["a photo of a cat.", "a photo of a tabby cat."]
    full = tok(prompts)
    eot_full = tok.eot_positions(full)
    for t in (1, 3):
        ids, eot = template_ids(tok, prompts, t)
        assert ids.dtype == np.int32 and eot.dtype == np.int32
        assert ids.shape == (2, int(eot_full.max()) + 1)
        np.testing.assert_array_equal(ids, full[:, : ids.shape[1]])
        np.testing.assert_array_equal(eot, eot_full)
        assert ids.shape[1] + t <= tok.context_length


def test_template_ids_fills_the_context_exactly(tiny_clip):
    tok = tiny_clip.tokenizer
    prompts = ["a photo of a cat.", "a photo of a tabby cat."]
    longest = int(tok.eot_positions(tok(prompts)).max()) + 1
    room = tok.context_length - longest
    ids, _ = template_ids(tok, prompts, room)  # exactly fits
    assert ids.shape[1] + room == tok.context_length
    with pytest.raises(ValueError, match=re.escape(repr("a photo of a tabby cat."))):
        template_ids(tok, prompts, room + 1)


def test_template_ids_too_long_template_is_named(tiny_clip):
    tok = tiny_clip.tokenizer
    long_prompt = "a photo of a " + "cat " * 40 + "."
    with pytest.raises(ValueError, match=re.escape(repr(long_prompt))):
        template_ids(tok, ["a photo of a dog.", long_prompt], 1)


def _class_text_for(m, classnames, num_tokens):
    prompts = [f"a photo of a {name}." for name in classnames]
    ids, eot = template_ids(m.tokenizer, prompts, num_tokens)
    feats = l2_normalize(jnp.asarray(m.encode_text(m.tokenize(prompts))))
    return ClassText(features=feats, ids=jnp.asarray(ids), eot=jnp.asarray(eot))


def test_token_seam_equals_plain_clip_text_path(tiny_clip):
    """Inserting the embedding of real tokens after [SOS] gives exactly CLIP's features of the longer prompt."""
    m = tiny_clip
    classnames = ["cat", "dog", "tabby cat"]  # templates of different lengths, so different EOT positions
    class_text = _class_text_for(m, classnames, 1)
    module = m.module
    # Image 0 inserts "a", image 1 inserts "x": image-major order is checked too. (Words of one token
    # in every vocabulary, the tiny CLIP's merge-free byte-level one included.)
    words = ["a", "x"]
    word_ids = [m.tokenizer.encode(w) for w in words]
    assert all(len(i) == 1 for i in word_ids), word_ids
    tokens = module.apply(
        {"params": m.params}, jnp.asarray([i[0] for i in word_ids])[:, None], method=CLIP.embed_tokens
    )  # [B, 1, W]
    chex.assert_shape(tokens, (2, 1, m.config.text.hidden_size))
    weights = TokenHead(1, m.config.text.hidden_size).class_weights(tokens, class_text, module, m.params)
    chex.assert_shape(weights, (2, len(classnames), m.config.projection_dim))
    for b, word in enumerate(words):
        texts = [f"{word} a photo of a {name}." for name in classnames]
        ref_ids = m.tokenize(texts)
        # The longer prompt's ids really are [SOS] word template[1:].
        full = m.tokenize([f"a photo of a {name}." for name in classnames])
        np.testing.assert_array_equal(ref_ids[:, 2:], full[:, 1:-1])
        assert (ref_ids[:, 1] == word_ids[b][0]).all()
        ref = l2_normalize(jnp.asarray(m.encode_text(ref_ids)))
        np.testing.assert_allclose(np.asarray(weights[b]), np.asarray(ref), rtol=0, atol=1e-5)
    # The two images differ (the inserted token matters).
    assert float(jnp.abs(weights[0] - weights[1]).max()) > 1e-3


def test_token_seam_with_broadcast_tokens_and_jit(tiny_clip):
    m = tiny_clip
    classnames = ["cat", "dog"]
    class_text = _class_text_for(m, classnames, 1)
    module = m.module
    a_id = m.tokenizer.encode("a")
    tok_a = module.apply({"params": m.params}, jnp.asarray([a_id]), method=CLIP.embed_tokens)  # [1, 1, W]
    tokens = jnp.broadcast_to(tok_a, (2, 1, tok_a.shape[-1]))  # [B, 1, W]
    head = TokenHead(1, m.config.text.hidden_size)
    fn = jax.jit(lambda p, t, ct: head.class_weights(t, ct, module, p))
    weights = fn(m.params, tokens, class_text)
    ref = l2_normalize(jnp.asarray(m.encode_text(m.tokenize([f"a a photo of a {n}." for n in classnames]))))
    for b in range(2):
        np.testing.assert_allclose(np.asarray(weights[b]), np.asarray(ref), rtol=0, atol=1e-5)


def _suffix_head(m, num_tokens):
    return TokenHead(num_tokens, m.config.text.hidden_size, position="suffix")


def test_insert_tokens_suffix_exact_placement():
    """"suffix": tokens go right before each class's EOT, the EOT (and padding) move right by T."""
    c, length, w, t = 2, 5, 1, 2
    embeds = jnp.arange(c * length, dtype=jnp.float32).reshape(c, length, w)  # distinct values
    eot = jnp.asarray([2, 4])
    tokens = -jnp.asarray([[[1.0], [2.0]], [[3.0], [4.0]]])  # [B=2, T=2, W=1]
    x, pos = insert_tokens(embeds, eot, tokens, "suffix")
    x = np.asarray(x[..., 0]).reshape(2, c, length + t)
    np.testing.assert_array_equal(x[0, 0], [0, 1, -1, -2, 2, 3, 4])  # class 0: EOT at 2 -> 4
    np.testing.assert_array_equal(x[1, 1], [5, 6, 7, 8, -3, -4, 9])  # class 1: EOT at 4 -> 6
    np.testing.assert_array_equal(np.asarray(pos), [4, 6, 4, 6])


def test_suffix_seam_equals_plain_clip_text_path(tiny_clip):
    """Inserting the embedding of a real word before EOT gives CLIP's features of "a photo of a {c}. x"."""
    m = tiny_clip
    classnames = ["cat", "dog", "tabby cat"]
    class_text = _class_text_for(m, classnames, 1)
    head = _suffix_head(m, 1)
    module = m.module
    (word_id,) = m.tokenizer.encode("x")  # one token in every vocabulary
    tokens = module.apply({"params": m.params}, jnp.asarray([[word_id]]), method=CLIP.embed_tokens)  # [1, 1, W]
    for cached in (False, True):
        weights = head.class_weights(tokens, class_text, module, m.params, use_prefix_cache=cached)
        ref_ids = m.tokenize([f"a photo of a {n}. x" for n in classnames])
        ref = l2_normalize(jnp.asarray(m.encode_text(ref_ids)))
        np.testing.assert_allclose(np.asarray(weights[0]), np.asarray(ref), rtol=0, atol=1e-5)


@pytest.mark.parametrize("num_tokens", [2])
def test_prefix_cache_equals_plain_suffix_path(tiny_clip, num_tokens):
    """The class-prefix KV cache (jitted, precomputed or not) equals the whole-sequence path within 1e-5,
    for the weights and for their gradient with respect to the inserted tokens."""
    m = tiny_clip
    classnames = ["cat", "big red dog", "a", "photo of the bird", "tabby cat"]  # EOTs differ
    class_text = _class_text_for(m, classnames, num_tokens)
    head = _suffix_head(m, num_tokens)
    module = m.module
    tokens = 0.02 * jax.random.normal(jax.random.key(0), (4, num_tokens, m.config.text.hidden_size))
    plain = jax.jit(lambda p, t, ct: head.class_weights(t, ct, module, p, use_prefix_cache=False))
    cached = jax.jit(lambda p, t, ct: head.class_weights(t, ct, module, p))
    want = plain(m.params, tokens, class_text)
    np.testing.assert_allclose(np.asarray(cached(m.params, tokens, class_text)), np.asarray(want), atol=1e-5)
    cache = head.class_cache(class_text, module, m.params)
    got = head.class_weights(tokens, class_text, module, m.params, cache=cache)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)
    loss = lambda cache_on: jax.grad(lambda t: jnp.sum(head.class_weights(
        t, class_text, module, m.params, use_prefix_cache=cache_on)[..., 0] ** 2))(tokens)
    np.testing.assert_allclose(np.asarray(loss(True)), np.asarray(loss(False)), atol=1e-5)


def test_prefix_cache_bfloat16_close_to_fp32(tiny_clip):
    """The bf16 compute path (fp32 parameters) runs the cached path and stays close to fp32."""
    m = tiny_clip
    class_text = _class_text_for(m, ["cat", "big red dog"], 1)
    head = _suffix_head(m, 1)
    tokens = 0.02 * jax.random.normal(jax.random.key(1), (2, 1, m.config.text.hidden_size))
    f32 = head.class_weights(tokens, class_text, m.module, m.params)
    bf16 = head.class_weights(tokens, class_text, CLIP(m.config, dtype=jnp.bfloat16), m.params)
    assert bf16.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(bf16), np.asarray(f32), atol=3e-2)


def test_token_head_position():
    assert TOKEN_POSITIONS == ("prefix", "suffix")
    assert TokenHead(1, 8).position == "prefix"
    assert TokenHead(1, 8, position="suffix").position == "suffix"
    with pytest.raises(ValueError, match=re.escape("model.token_position is 'middle'")):
        TokenHead(1, 8, position="middle")
    with pytest.raises(ValueError, match=re.escape("model.num_tokens must be >= 1, got 0")):
        TokenHead(0, 8)


def test_suffix_and_prefix_heads_give_different_weights(tiny_clip):
    """The head's position, not a default, decides where the tokens go (both paths of "suffix")."""
    m = tiny_clip
    class_text = _class_text_for(m, ["cat", "big red dog"], 1)
    tokens = 0.5 * jax.random.normal(jax.random.key(2), (2, 1, m.config.text.hidden_size))
    width = m.config.text.hidden_size
    prefix = TokenHead(1, width, "prefix").class_weights(tokens, class_text, m.module, m.params)
    for cached in (False, True):
        suffix = TokenHead(1, width, "suffix").class_weights(tokens, class_text, m.module, m.params,
                                                             use_prefix_cache=cached)
        assert float(jnp.abs(suffix - prefix).max()) > 1e-3, f"use_prefix_cache={cached}"


def test_feature_head_runs_no_text_tower():
    head = FeatureHead(embed_dim=D)
    assert head.uses_text_tower is False and head.num_tokens == 0
    class_text = ClassText(features=jnp.ones((2, D)), ids=jnp.zeros((2, 3), jnp.int32), eot=jnp.ones((2,), jnp.int32))
    assert head.class_cache(class_text, None, None) is None


def test_token_head_class_cache_is_the_prefix_cache_for_suffix_only(tiny_clip):
    m = tiny_clip
    width = m.config.text.hidden_size
    assert TokenHead(1, width).uses_text_tower is True
    assert TokenHead(2, width).num_tokens == 2
    class_text = _class_text_for(m, ["cat", "big red dog", "tabby cat"], 2)
    assert TokenHead(2, width, "prefix").class_cache(class_text, m.module, m.params) is None
    got = TokenHead(2, width, "suffix").class_cache(class_text, m.module, m.params)
    assert isinstance(got, ClassPrefixCache)
    chex.assert_trees_all_close(got, class_prefix_cache(class_text, m.module, m.params), rtol=0, atol=0)


def test_make_head():
    assert COMBINE_MODES == ("token", "feature")
    assert make_head("feature", D, 8) == FeatureHead(D)
    assert make_head("token", D, 8) == TokenHead(1, 8, "prefix")
    assert make_head("token", D, 8, 3, "suffix") == TokenHead(3, 8, "suffix")
    with pytest.raises(ValueError, match=re.escape("model.combine is 'concat'")):
        make_head("concat", D, 8)
    with pytest.raises(ValueError, match=re.escape("model.token_position is 'middle'")):
        make_head("token", D, 8, 1, "middle")


# ----------------------------------------------------------------------------- AAPE config and module


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(aggregator="max"), "model.aggregator"),
        (dict(aggregator="attention", num_heads=5), "model.num_heads"),
        (dict(generator_hidden=0), "model.generator_hidden"),
    ],
)
def test_aape_config_errors_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=re.escape(field)):
        AAPEConfig(embed_dim=32, head=make_head("token", 32, 64), **kwargs)


def test_aape_config_valid():
    for combine in ("token", "feature"):
        for name in ("attention", "mean", "random", "mlp"):
            AAPEConfig(embed_dim=32, head=make_head(combine, 32, 64), aggregator=name, num_heads=4)


def _model_block(**overrides):
    block = dict(aggregator="mlp", num_heads=4, aggregator_hidden=8, generator_hidden=4, num_tokens=2)
    block.update(overrides)
    return block


@pytest.mark.parametrize("as_config_dict", [False, True])
def test_aape_config_of_a_model_block(tiny_clip, as_config_dict):
    wrap = ml_collections.ConfigDict if as_config_dict else dict
    geometry = tiny_clip.config
    d, w = geometry.projection_dim, geometry.text.hidden_size
    got = aape_config(wrap(_model_block(combine="token", token_position="suffix")), geometry)
    assert got == AAPEConfig(embed_dim=d, head=TokenHead(2, w, "suffix"), aggregator="mlp", num_heads=4,
                             aggregator_hidden=8, generator_hidden=4)
    # A block from before `token_position` (and `text_memory_gb`) existed: "prefix", the default budget.
    assert aape_config(wrap(_model_block(combine="token")), geometry).head == TokenHead(2, w, "prefix")
    assert aape_config(wrap(_model_block(combine="token", text_memory_gb=0.5)), geometry).head == TokenHead(
        2, w, "prefix", text_memory_gb=0.5)
    assert classification.base2new("runlocal", "aape").model.text_memory_gb == TEXT_MEMORY_GB
    assert aape_config(wrap(_model_block(combine="feature")), geometry).head == FeatureHead(d)
    # No `combine` (retrieval's block): no head.
    assert aape_config(wrap(_model_block()), geometry).head is None
    with pytest.raises(ValueError, match=re.escape("model.combine is 'concat'")):
        aape_config(wrap(_model_block(combine="concat")), geometry)


def _aape(name, combine, num_tokens=2):
    config = AAPEConfig(
        embed_dim=D, head=make_head(combine, D, 8, num_tokens), aggregator=name, num_heads=NUM_HEADS,
        aggregator_hidden=8, generator_hidden=4,
    )
    model = AAPE(config)
    q, prompts, mask = _inputs(seed=6)
    params = model.init(jax.random.key(0), q, prompts, mask)
    return model, params, (q, prompts, mask)


@pytest.mark.parametrize("name", ["attention", "mean", "random", "mlp"])
@pytest.mark.parametrize("combine", ["token", "feature"])
def test_aape_module_shapes_and_params(name, combine):
    model, params, (q, prompts, mask) = _aape(name, combine)
    expected_keys = {"generator", "head"} | ({"aggregator"} if name in ("attention", "mlp") else set())
    assert set(params["params"]) == expected_keys
    summary, head_out = model.apply(params, q, prompts, mask)
    chex.assert_shape(summary, (B, D))
    chex.assert_shape(head_out, (B, 2, 8) if combine == "token" else (B, D))
    np.testing.assert_allclose(np.linalg.norm(np.asarray(summary), axis=-1), 1.0, rtol=1e-5)
    aape = model.apply(params, q, method=AAPE.generate)
    chex.assert_shape(aape, (B, D))
    np.testing.assert_allclose(
        np.asarray(model.apply(params, aape, method=AAPE.project)), np.asarray(head_out), rtol=1e-6, atol=1e-7
    )


@pytest.mark.parametrize("name", ["attention", "mean", "random", "mlp"])
def test_aape_summarize_is_unit_norm(name):
    model, params, (q, prompts, mask) = _aape(name, "feature")
    # Scale the prompts up so a missing normalisation cannot pass by accident.
    prompts = 7.0 * prompts
    keys = jax.random.split(jax.random.key(4), B) if name == "random" else None
    summary = model.apply(params, q, prompts, mask, keys, method=AAPE.summarize)
    chex.assert_shape(summary, (B, D))
    np.testing.assert_allclose(np.linalg.norm(np.asarray(summary), axis=-1), 1.0, rtol=1e-5)
    raw = model.apply(params, q, prompts, mask, keys, method=lambda mdl, *a: mdl.aggregator(*a))
    np.testing.assert_allclose(np.asarray(summary), np.asarray(l2_normalize(raw)), rtol=1e-6, atol=1e-7)
    if name == "mean":
        np.testing.assert_allclose(
            np.asarray(summary), np.asarray(l2_normalize(agg.masked_mean(prompts, mask))), rtol=1e-6, atol=1e-7
        )


@pytest.mark.parametrize("chunk", [8, 1, 36])
def test_token_path_in_class_chunks_equals_all_at_once(tiny_clip, chunk):
    """Chunked (rematerialised) class encoding == all classes in one call, values and gradients."""
    m = tiny_clip
    names = [f"class number {i}" for i in range(37)]
    ids, eot = template_ids(m.tokenizer, [f"a photo of a {n}." for n in names], 1)
    ct = ClassText(features=jnp.zeros((37, m.config.projection_dim)), ids=jnp.asarray(ids), eot=jnp.asarray(eot))
    tokens = 0.02 * jax.random.normal(jax.random.key(0), (3, 1, m.config.text.hidden_size))

    head = TokenHead(1, m.config.text.hidden_size)

    def loss(t, k):
        return jnp.sum(head.class_weights(t, ct, m.module, m.params, class_chunk=k) ** 3)

    whole = head.class_weights(tokens, ct, m.module, m.params, class_chunk=37)
    np.testing.assert_allclose(np.asarray(head.class_weights(tokens, ct, m.module, m.params, class_chunk=chunk)),
                               np.asarray(whole), atol=1e-5)
    np.testing.assert_allclose(np.asarray(jax.grad(loss)(tokens, chunk)), np.asarray(jax.grad(loss)(tokens, 37)),
                               atol=1e-5)


def test_text_memory_budget_sets_the_chunk_and_bounds_xla_buffers():
    """`text_memory_gb` picks the class chunk; XLA's buffers of the backward pass follow the estimate
    (calibrated on ViT-B/16, here a CLIP-proportioned W=256 text tower) and shrink with the budget."""
    cfg = CLIPConfig(text=TextConfig(vocab_size=100, hidden_size=256, intermediate_size=1024, num_layers=2,
                                     num_heads=4, context_length=16, eot_token_id=99),
                     vision=VisionConfig(hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2,
                                         image_size=16, patch_size=8),
                     projection_dim=32)
    params = jax.tree.map(jnp.asarray, tiny.random_params(cfg, 0))
    module = CLIP(cfg, remat_text=True)  # FrozenCLIP.module's: the chunked path does not add per-block remat
    b, c, length = 8, 24, 11
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 98, (c, length))
    eot = rng.integers(4, length, c)
    ids[np.arange(c), eot] = 99
    ct = ClassText(features=jnp.zeros((c, 32)), ids=jnp.asarray(ids, jnp.int32), eot=jnp.asarray(eot, jnp.int32))
    tokens = jnp.zeros((b, 1, 256))
    per_pair = pair_activation_bytes(cfg.text, length + 1, 4)
    temps = {}
    for classes in (c, 6, 1):
        budget = b * classes * per_pair
        assert classes_per_chunk(b, c, cfg.text, length + 1, 4, budget) == classes
        assert classes_per_chunk(b, c, cfg.text, length + 1, 4, budget - 1) == max(1, classes - 1)
        head = TokenHead(1, 256, text_memory_gb=budget / 2**30)
        grad = jax.jit(jax.grad(lambda t, p: jnp.sum(head.class_weights(t, ct, module, p) ** 3)))
        temps[classes] = grad.lower(tokens, params).compile().memory_analysis().temp_size_in_bytes
        assert 0.7 * budget < temps[classes] < 1.4 * budget, (classes, temps[classes], budget)
    assert temps[c] > 3 * temps[6] > 3 * temps[1]
    with pytest.raises(ValueError, match="text_memory_gb"):
        TokenHead(1, 256, text_memory_gb=0.0)
