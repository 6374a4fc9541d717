"""LinearDispatcherAttention (:mod:`tfrs_linear.layers.dispatcher`) against the dense
float64 NumPy oracle of :mod:`tests.oracles` (explicit softmax matrices; the causal one
builds every position's prefix weights explicitly, O(N²)) and finite differences of it
for gradients; its masks, errors, precision, serialization and recency bias."""

import os
import tempfile

import numpy as np
import pytest
import tensorflow as tf

from tests.layers.common import DIM, HEADS, KEY_DIM, K, make_layer, run, weights_of
from tests.oracles import layer_norm, lda_reference, numeric_gradient, proj, random_mask
from tfrs_linear import ops
from tfrs_linear.layers import InterestMemory, LinearDispatcherAttention, MAX_RECENCY_SLOPE


# --------------------------------------------------------------------------- LDA vs the oracle
@pytest.mark.parametrize("causal", [False, True])
def test_lda_matches_dense_reference_float64(causal):
    rng = np.random.default_rng(1)
    layer = make_layer(causal, "float64", seed=1, value_dim=4)
    x = rng.normal(size=[4, 9, DIM])
    mask = random_mask(rng, 4, 9)
    mask[0] = False  # all padding
    mask[1] = True  # no padding
    out, p = run(layer, x, mask)
    ref_out, ref_p = lda_reference(weights_of(layer), x, mask, causal)
    np.testing.assert_allclose(out, ref_out, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(p, ref_p, rtol=1e-10, atol=1e-10)
    assert np.all(out[~mask] == 0.0)


@pytest.mark.parametrize("causal", [False, True])
def test_lda_matches_dense_reference_float32(causal):
    rng = np.random.default_rng(2)
    layer = make_layer(causal, "float32", seed=2)
    x = rng.normal(size=[3, 11, DIM]).astype(np.float32)
    mask = random_mask(rng, 3, 11)
    out, p = run(layer, x, mask)
    ref_out, ref_p = lda_reference(weights_of(layer), x, mask, causal)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, ref_out, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(p, ref_p, rtol=1e-5, atol=1e-4)


def test_lda_given_interests_match_reference():
    rng = np.random.default_rng(3)
    layer = make_layer(False, "float64", seed=3)
    x = rng.normal(size=[2, 7, DIM])
    interests = rng.normal(size=[2, K, DIM])
    mask = random_mask(rng, 2, 7)
    out, p = run(layer, x, mask, interests=tf.constant(interests))
    ref_out, ref_p = lda_reference(weights_of(layer), x, mask, False, interests)
    np.testing.assert_allclose(out, ref_out, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(p, ref_p, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("causal", [False, True])
def test_padding_invariance(causal):
    rng = np.random.default_rng(4)
    layer = make_layer(causal, "float64", seed=4)
    seq = rng.normal(size=[5, DIM])
    outs, interests = [], []
    for left, right in ((0, 0), (3, 0), (0, 4), (2, 5)):
        n = left + 5 + right
        x = rng.normal(size=[1, n, DIM]) * 10.0  # garbage in the padding
        x[0, left:left + 5] = seq
        mask = np.zeros([1, n], bool)
        mask[0, left:left + 5] = True
        out, p = run(layer, x, mask)
        outs.append(out[0, left:left + 5])
        interests.append(p[0])
        assert np.all(out[0, ~mask[0]] == 0.0)
    for o, p in zip(outs[1:], interests[1:]):
        np.testing.assert_allclose(o, outs[0], rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(p, interests[0], rtol=1e-10, atol=1e-10)


def test_causal_is_leak_free():
    rng = np.random.default_rng(5)
    layer = make_layer(True, "float64", seed=5, chunk_size=3)
    x = rng.normal(size=[2, 10, DIM])
    mask = random_mask(rng, 2, 10)
    mask[:, 2:6] = True
    out, _ = run(layer, x, mask)
    for t in (2, 4, 5):
        changed = x.copy()
        # Large future inputs: the causal running maximum must not let them rescale
        # (and underflow) the past.
        changed[:, t + 1:] = rng.normal(size=changed[:, t + 1:].shape) * 1000.0
        out2, _ = run(layer, changed, mask)
        np.testing.assert_allclose(out2[:, : t + 1], out[:, : t + 1], rtol=1e-12, atol=1e-12)
        assert not np.allclose(out2[:, t + 1:][mask[:, t + 1:]], out[:, t + 1:][mask[:, t + 1:]])
    # Non-causal mode does depend on the future (sanity check of the test itself).
    nc = make_layer(False, "float64", seed=5)
    a, _ = run(nc, x, mask)
    changed = x.copy()
    changed[:, 6:] += 1.0
    b, _ = run(nc, changed, mask)
    assert not np.allclose(a[:, :3][mask[:, :3]], b[:, :3][mask[:, :3]])


@pytest.mark.parametrize("causal", [False, True])
def test_all_padding_is_finite_with_finite_gradients(causal):
    layer = make_layer(causal, "float32", seed=6)
    x = tf.random.normal([2, 5, DIM]) * 100.0
    mask = tf.zeros([2, 5], tf.bool)
    with tf.GradientTape() as tape:
        tape.watch(x)
        out, p = layer(x, mask=mask)
        loss = tf.reduce_sum(out) + tf.reduce_sum(p * p)
    grads = tape.gradient(loss, [x] + layer.trainable_variables)
    assert np.all(out.numpy() == 0.0)
    assert np.all(np.isfinite(p.numpy()))
    w = weights_of(layer)
    expected = w["interest_tokens"]
    if not causal:  # A = 0, so P' = LayerNorm(P)
        expected = layer_norm(expected, w["gamma"], w["beta"], w["eps"])
    np.testing.assert_allclose(p[0], expected, rtol=1e-5, atol=1e-5)
    for g in grads:
        if g is not None:
            assert np.all(np.isfinite(tf.convert_to_tensor(g).numpy()))


@pytest.mark.parametrize("causal", [False, True])
def test_gradients_match_finite_differences_of_reference(causal):
    rng = np.random.default_rng(7)
    layer = make_layer(causal, "float64", seed=7, chunk_size=2)
    x = rng.normal(size=[2, 5, DIM])
    mask = random_mask(rng, 2, 5)
    mask[0, -1] = False
    r_out = rng.normal(size=[2, 5, DIM])
    r_p = rng.normal(size=[2, K, DIM])
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        out, p = layer(xt, mask=tf.constant(mask))
        loss = tf.reduce_sum(out * r_out) + tf.reduce_sum(p * r_p)
    g_x, g_k1, g_v2, g_p = tape.gradient(
        loss, [xt, layer.key_1_kernel, layer.value_2_kernel, layer.interest_tokens]
    )
    w = weights_of(layer)

    def ref_loss(w_, x_):
        o, p_ = lda_reference(w_, x_, mask, causal)
        return np.sum(o * r_out) + np.sum(p_ * r_p)

    np.testing.assert_allclose(
        g_x.numpy(), numeric_gradient(lambda a: ref_loss(w, a), x), rtol=1e-6, atol=1e-6
    )
    for name, g in (
        ("key_1_kernel", g_k1), ("value_2_kernel", g_v2), ("interest_tokens", g_p)
    ):
        def fn(a, name=name):
            return ref_loss({**w, name: a}, x)

        np.testing.assert_allclose(g.numpy(), numeric_gradient(fn, w[name]), rtol=1e-6, atol=1e-6)


def test_causal_result_does_not_depend_on_chunk_size():
    rng = np.random.default_rng(8)
    x = rng.normal(size=[2, 13, DIM])
    mask = random_mask(rng, 2, 13)
    mask[:, -1] = True
    outs = []
    for chunk in (1, 4, 64):
        layer = make_layer(True, "float64", seed=8, chunk_size=chunk)
        outs.append(run(layer, x, mask)[0])
    for o in outs[1:]:
        np.testing.assert_allclose(o, outs[0], rtol=1e-10, atol=1e-10)
    # (The fused op's non-causal == causal-at-the-last-position half of this check is
    # tests/ops/test_dispatcher.py::test_fused_non_causal_equals_causal_at_the_last_position.)


# --------------------------------------------------------------------------- the causal paths
def test_causal_fallback_matches_reference_gradients():
    """The layer on inputs whose logits jump by hundreds: outputs and gradients of the
    (per-position) fallback against the dense reference and its finite differences."""
    rng = np.random.default_rng(32)
    layer = make_layer(True, "float64", seed=32, chunk_size=3)
    # Unit-scale interest tokens (whatever the default initializer): logits O(1) ...
    layer.interest_tokens.assign(rng.normal(size=layer.interest_tokens.shape))
    x = rng.normal(size=[2, 7, DIM])
    x[:, 4] *= 200.0  # ... and O(100) at position 4 (the middle of a chunk)
    mask = random_mask(rng, 2, 7, min_real=6)
    mask[:, 4] = True
    r_out = rng.normal(size=[2, 7, DIM])
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        out, _ = layer(xt, mask=tf.constant(mask))
        loss = tf.reduce_sum(out * r_out)
    g_x, g_k1 = tape.gradient(loss, [xt, layer.key_1_kernel])
    w = weights_of(layer)
    # The flag "auto" switched on, from the layer's own aggregate inputs: the fallback
    # was taken ...
    q1 = np.stack([proj(w["interest_tokens"], w["query_1_kernel"], w["query_1_bias"])] * 2)
    k1 = np.stack([proj(xb, w["key_1_kernel"], w["key_1_bias"]) for xb in x])
    assert not bool(ops.causal_fast_path_ok(q1, k1, mask=mask, chunk_size=3))
    # ... it is what the layer computed (forced, the same numbers) ...
    exact = make_layer(True, "float64", seed=32, chunk_size=3, causal_path="exact")
    exact.set_weights(layer.get_weights())
    np.testing.assert_allclose(run(exact, x, mask)[0], out.numpy(), rtol=1e-12, atol=1e-12)
    ref_out, _ = lda_reference(w, x, mask, True)
    np.testing.assert_allclose(out.numpy(), ref_out, rtol=1e-10, atol=1e-10)
    assert np.all(np.isfinite(g_x.numpy())) and np.all(np.isfinite(g_k1.numpy()))

    def ref_loss(w_, x_):
        return np.sum(lda_reference(w_, x_, mask, True)[0] * r_out)

    np.testing.assert_allclose(
        g_x.numpy(), numeric_gradient(lambda a: ref_loss(w, a), x, 1e-6), rtol=1e-6, atol=1e-6
    )
    np.testing.assert_allclose(
        g_k1.numpy(),
        numeric_gradient(lambda a: ref_loss({**w, "key_1_kernel": a}, x), w["key_1_kernel"], 1e-6),
        rtol=1e-6, atol=1e-6,
    )


def test_causal_huge_inputs_float32_are_finite():
    layer = make_layer(True, "float32", seed=33, chunk_size=4)
    rng = np.random.default_rng(33)
    x = rng.normal(size=[2, 12, DIM]).astype(np.float32)
    x[:, 5:] *= 1000.0
    mask = random_mask(rng, 2, 12)
    xt = tf.constant(x)
    for jit in (False, True):
        def fn(xt):
            with tf.GradientTape() as tape:
                tape.watch(xt)
                out, p = layer(xt, mask=tf.constant(mask))
                loss = tf.reduce_sum(out) + tf.reduce_sum(p)
            return out, tape.gradient(loss, [xt] + layer.trainable_variables)

        out, grads = (tf.function(fn, jit_compile=True) if jit else fn)(xt)
        assert np.all(np.isfinite(out.numpy()))
        for g in grads:
            assert np.all(np.isfinite(tf.convert_to_tensor(g).numpy()))


@pytest.mark.parametrize("causal", [False, True])
def test_xla_equals_graph_mode(causal):
    rng = np.random.default_rng(9)
    layer = make_layer(causal, "float32", seed=9)
    x = tf.constant(rng.normal(size=[2, 10, DIM]), tf.float32)
    mask = tf.constant(random_mask(rng, 2, 10))

    def fn(x, mask):
        return layer(x, mask=mask)

    graph = tf.function(fn)(x, mask)
    xla = tf.function(fn, jit_compile=True)(x, mask)
    for g, a in zip(graph, xla):
        np.testing.assert_allclose(a.numpy(), g.numpy(), rtol=1e-5, atol=1e-5)


def test_dropout_only_in_training():
    layer = make_layer(False, "float32", seed=10, dropout=0.5)
    x = tf.random.normal([2, 6, DIM])
    a, _ = layer(x, training=False)
    b, _ = layer(x, training=False)
    c, _ = layer(x, training=True)
    np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert not np.allclose(a.numpy(), c.numpy())


def test_keras_mask_from_embedding():
    tf.keras.utils.set_random_seed(11)
    emb = tf.keras.layers.Embedding(20, DIM, mask_zero=True)
    layer = LinearDispatcherAttention(num_heads=HEADS, key_dim=KEY_DIM, num_interests=K)
    ids = tf.constant([[0, 0, 3, 4, 5], [6, 7, 8, 0, 0]])
    out, _ = layer(emb(ids))
    explicit, _ = layer(emb(ids), mask=ids > 0)
    np.testing.assert_array_equal(out.numpy(), explicit.numpy())
    assert np.all(out.numpy()[ids.numpy() == 0] == 0.0)


def test_clear_errors():
    causal = make_layer(True, "float32")
    with pytest.raises(ValueError, match="interests"):
        causal(tf.zeros([1, 4, DIM]), interests=tf.zeros([1, K, DIM]))
    layer = make_layer(False, "float32")
    with pytest.raises(ValueError, match=r"\[batch, num_interests, dim\]"):
        layer(tf.zeros([1, 4, DIM]), interests=tf.zeros([1, K + 1, DIM]))
    with pytest.raises(ValueError, match="padding mask"):
        layer(tf.zeros([1, 4, DIM]), mask=tf.ones([1, 4, 4], tf.bool))
    with pytest.raises(ValueError, match="causal_path must be one of"):
        make_layer(True, "float32", causal_path="per_position")
    # (InterestMemory's error is tests/layers/test_interest_memory.py::
    # test_memory_refuses_top_m_above_num_keys.)


def test_long_causal_sequence_runs_in_linear_memory():
    tf.keras.utils.set_random_seed(12)
    layer = LinearDispatcherAttention(
        num_heads=2, key_dim=4, num_interests=4, causal=True, chunk_size=64
    )
    x = tf.random.normal([1, 8192, 8])
    out, p = tf.function(lambda x: layer(x))(x)
    assert out.shape == (1, 8192, 8) and p.shape == (1, 4, 8)
    assert np.all(np.isfinite(out.numpy()))
    # Causal: the first 100 outputs equal those of the first 100 inputs alone.
    prefix, _ = layer(x[:, :100])
    np.testing.assert_allclose(out[:, :100].numpy(), prefix.numpy(), rtol=1e-5, atol=1e-5)


def test_mixed_precision_lda(float32_policy):
    for policy in ("mixed_float16", "mixed_bfloat16"):
        tf.keras.mixed_precision.set_global_policy(policy)
        for causal in (False, True):
            layer = LinearDispatcherAttention(
                num_heads=HEADS, key_dim=KEY_DIM, num_interests=K, causal=causal
            )
            out, p = layer(tf.random.normal([2, 7, DIM]), mask=random_mask(
                np.random.default_rng(0), 2, 7))
            assert out.dtype == layer.compute_dtype and p.dtype == layer.compute_dtype
            assert np.all(np.isfinite(tf.cast(out, tf.float32).numpy()))


# --------------------------------------------------------------------------- serialization
def test_config_round_trip():
    layer = LinearDispatcherAttention(
        num_heads=2, key_dim=3, num_interests=5, value_dim=4, causal=True, dropout=0.1,
        use_bias=False, chunk_size=7, kernel_regularizer="l2",
    )
    clone = LinearDispatcherAttention.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    # (InterestMemory's round trip: tests/layers/test_interest_memory.py.)
    forced = LinearDispatcherAttention(num_heads=2, key_dim=3, num_interests=5, causal=True,
                                       causal_path="exact")
    config = forced.get_config()
    assert config["causal_path"] == "exact" and layer.get_config()["causal_path"] == "auto"
    assert LinearDispatcherAttention.from_config(config).get_config() == config
    del config["causal_path"]  # a configuration saved before the argument existed
    assert LinearDispatcherAttention.from_config(config).causal_path == "auto"


def _model(causal):
    tf.keras.utils.set_random_seed(18)
    ids = tf.keras.Input(shape=(None,), dtype=tf.int32)
    emb = tf.keras.layers.Embedding(30, DIM, mask_zero=True)(ids)
    if causal:
        out, interests = LinearDispatcherAttention(2, 3, K, causal=True, chunk_size=3)(emb)
    else:
        p0 = InterestMemory(K, num_keys=4, top_m=2, query_dim=4)(emb)
        out, interests = LinearDispatcherAttention(2, 3, K)(emb, interests=p0)
    return tf.keras.Model(ids, [out, interests])


# The causal layer through the .keras file only: its Keras SavedModel traces the large
# causal graph several times (most of a minute) and saves the same config; causal
# SavedModels are exported and reloaded by the serving tests.
@pytest.mark.parametrize("causal,formats", [(False, ("saved", "model.keras")),
                                            (True, ("model.keras",))])
def test_model_save_and_reload(causal, formats):
    model = _model(causal)
    ids = np.array([[0, 0, 3, 4, 5, 9], [6, 7, 8, 0, 0, 0]], np.int32)
    expected = model(ids)
    with tempfile.TemporaryDirectory() as tmp:
        for path in (os.path.join(tmp, name) for name in formats):
            model.save(path)
            loaded = tf.keras.models.load_model(path)
            for a, b in zip(loaded(ids), expected):
                np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------- learned interests
@pytest.mark.parametrize("causal,memory", [(True, False), (False, False), (False, True)])
def test_encoder_has_no_unused_interest_tokens(causal, memory):
    # Every trainable variable gets a gradient: blocks that receive the previous block's
    # (or the memory's) interests have no tokens of their own.
    from tfrs_linear.models import SequenceEncoder

    tf.keras.utils.set_random_seed(23)
    encoder = SequenceEncoder(vocab_size=15, max_len=6, d_model=8, num_layers=3, num_heads=2,
                              ffn_dim=16, attention="elastic", causal=causal, num_interests=3,
                              use_memory=memory, memory_keys=4, memory_top_m=2, dropout=0.0,
                              attention_dropout=0.0)
    ids = tf.constant([[0, 3, 4, 5, 6, 7], [2, 3, 9, 10, 11, 12]])
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tf.square(encoder(ids)))
    grads = tape.gradient(loss, encoder.trainable_variables)
    missing = [v.name for v, g in zip(encoder.trainable_variables, grads) if g is None]
    assert missing == []
    tokens = sorted(v.name for v in encoder.trainable_variables if "interest_tokens" in v.name)
    want = 3 if causal else (0 if memory else 1)
    assert len(tokens) == want, tokens


def test_learned_interests_false_needs_interests_and_non_causal():
    layer = LinearDispatcherAttention(num_heads=2, key_dim=4, num_interests=3,
                                      learned_interests=False)
    x = tf.random.normal([2, 5, 8])
    with pytest.raises(ValueError, match="no interest tokens of its own"):
        layer(x)
    y, p = layer(x, interests=tf.random.normal([2, 3, 8]))
    assert y.shape == (2, 5, 8) and p.shape == (2, 3, 8)
    assert not any("interest_tokens" in w.name for w in layer.weights)
    config = layer.get_config()
    assert config["learned_interests"] is False
    assert LinearDispatcherAttention.from_config(config).get_config() == config
    with pytest.raises(ValueError, match="learned_interests=False needs causal=False"):
        LinearDispatcherAttention(num_heads=2, key_dim=4, num_interests=3, causal=True,
                                  learned_interests=False)


# --------------------------------------------------------------------------- recency bias
def _recency_layer(causal, seed, slopes=None, **kw):
    layer = make_layer(causal, "float64", seed=seed, recency_bias=True, **kw)
    if slopes is not None:  # raw = logit(slope / max)
        p = np.asarray(slopes, np.float64) / MAX_RECENCY_SLOPE
        layer.recency_raw.assign(np.log(p / (1.0 - p)))
    return layer


@pytest.mark.parametrize("causal", [False, True])
def test_recency_bias_matches_decayed_reference(causal):
    """The bias slope·(s - (N-1)) on the logits equals decaying every aggregate weight
    by exp(-slope · age): the oracle writes the decay per (t, s) pair explicitly."""
    rng = np.random.default_rng(41)
    slopes = rng.uniform(0.01, 0.6, size=[HEADS, K])
    layer = _recency_layer(causal, 41, slopes)
    np.testing.assert_allclose(layer.recency_slopes().numpy(), slopes, rtol=1e-12)
    x = rng.normal(size=[4, 13, DIM])
    mask = random_mask(rng, 4, 13)
    mask[0] = False
    mask[1] = True
    out, p = run(layer, x, mask)
    ref_out, ref_p = lda_reference(weights_of(layer), x, mask, causal, slopes=slopes)
    np.testing.assert_allclose(out, ref_out, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(p, ref_p, rtol=1e-10, atol=1e-10)
    # ... and the decay matters: without it the outputs differ.
    plain, _ = lda_reference(weights_of(layer), x, mask, causal)
    assert np.max(np.abs(plain - ref_out)) > 1e-3


def test_recency_bias_initial_half_lives_and_config():
    layer = _recency_layer(True, 42)
    half_lives = np.log(2.0) / layer.recency_slopes().numpy()
    np.testing.assert_allclose(half_lives[0], half_lives[1])  # same for every head
    np.testing.assert_allclose(half_lives[0, 0], 2.0, rtol=1e-6)
    np.testing.assert_allclose(half_lives[0, -1], 1024.0, rtol=1e-6)
    assert np.all(np.diff(half_lives[0]) > 0)
    config = layer.get_config()
    assert config["recency_bias"] is True
    clone = LinearDispatcherAttention.from_config(config)
    clone.build([None, None, DIM])
    assert clone.recency_raw.shape == (HEADS, K)
    assert make_layer(True).recency_raw is None


def test_recency_bias_gradients_match_finite_differences():
    """Causal form, chunked (chunk 4 < N): the slopes' gradient against finite
    differences of the dense decayed reference."""
    rng = np.random.default_rng(43)
    slopes = rng.uniform(0.05, 0.5, size=[HEADS, K])
    layer = _recency_layer(True, 43, slopes)
    x = rng.normal(size=[2, 10, DIM])
    mask = random_mask(rng, 2, 10, min_real=4)
    r = rng.normal(size=[2, 10, DIM])
    with tf.GradientTape() as tape:
        out, _ = layer(tf.constant(x), mask=tf.constant(mask))
        loss = tf.reduce_sum(out * r)
    g_raw = tape.gradient(loss, layer.recency_raw).numpy()
    w = weights_of(layer)
    g_slopes = numeric_gradient(
        lambda s_: float(np.sum(lda_reference(w, x, mask, True, slopes=s_)[0] * r)), slopes)
    sig = slopes / MAX_RECENCY_SLOPE  # d slope / d raw = max · sig · (1 - sig)
    np.testing.assert_allclose(
        g_raw, g_slopes * MAX_RECENCY_SLOPE * sig * (1 - sig), rtol=1e-6, atol=1e-8)
    assert np.max(np.abs(g_raw)) > 1e-4


@pytest.mark.parametrize("causal", [False, True])
def test_recency_bias_last_only_and_xla_mixed_precision(causal, float32_policy):
    rng = np.random.default_rng(48)
    layer = _recency_layer(causal, 48, rng.uniform(0.01, 0.6, size=[HEADS, K]))
    x = tf.constant(rng.normal(size=[3, 12, DIM]))
    mask = tf.constant(random_mask(rng, 3, 12))
    full, p_full = layer(x, mask=mask)
    last, p_last = layer(x, mask=mask, last_only=True)
    np.testing.assert_allclose(last.numpy(), full.numpy()[:, -1:], rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(p_last.numpy(), p_full.numpy(), rtol=1e-10, atol=1e-10)
    xla, _ = tf.function(lambda a, m: layer(a, mask=m), jit_compile=True)(x, mask)
    np.testing.assert_allclose(xla.numpy(), full.numpy(), rtol=1e-9, atol=1e-9)
    # mixed_float16: the slopes stay float32 variables; outputs close to float32's.
    tf.keras.mixed_precision.set_global_policy("mixed_float16")
    tf.keras.utils.set_random_seed(48)
    mp = LinearDispatcherAttention(num_heads=HEADS, key_dim=KEY_DIM, num_interests=K,
                                   causal=causal, chunk_size=4, recency_bias=True)
    mp.build([None, None, DIM])
    tf.keras.mixed_precision.set_global_policy("float32")
    tf.keras.utils.set_random_seed(48)
    ref = LinearDispatcherAttention(num_heads=HEADS, key_dim=KEY_DIM, num_interests=K,
                                    causal=causal, chunk_size=4, recency_bias=True)
    ref.build([None, None, DIM])
    ref.set_weights(mp.get_weights())
    assert mp.recency_raw.dtype == tf.float32
    x200 = rng.normal(size=[2, 200, DIM]).astype(np.float32)
    m200 = tf.constant(random_mask(rng, 2, 200, min_real=150))
    out16, _ = mp(tf.constant(x200, tf.float16), mask=m200)
    out32, _ = ref(tf.constant(x200), mask=m200)
    assert out16.dtype == tf.float16
    np.testing.assert_allclose(out16.numpy().astype(np.float32), out32.numpy(),
                               rtol=0.05, atol=0.05)
