"""LinRecAttention (:mod:`tfrs_linear.layers.linrec`): the layer against the independent
dense float64 NumPy oracle of :mod:`tests.oracles` (through its own projections), its
``MultiHeadAttention`` drop-in behaviour, masks, hooks, serialization and precision."""

import numpy as np
import pytest
import tensorflow as tf

from tests.oracles import dense_attention, dense_matrix, random_padding_mask
from tfrs_linear.layers import LinRecAttention, TransformerBlock


def _layer_reference(layer, x, mask, causal):
    """The layer's own projections, then the dense oracle, then its output projection."""
    ws = {w.name.split("/")[-2] + "/" + w.name.split("/")[-1].split(":")[0]: w.numpy().astype(np.float64) for w in layer.weights}
    x = x.astype(np.float64)
    proj = lambda name: np.einsum("btd,dnh->bnth", x, ws[f"{name}/kernel"]) + ws[f"{name}/bias"][None, :, None, :]  # noqa: E731
    out = dense_attention(proj("query"), proj("key"), proj("value"), mask, causal, layer.normalization)
    return np.einsum("bnth,nhd->btd", out, ws["attention_output/kernel"]) + ws["attention_output/bias"]


@pytest.mark.parametrize("causal", [False, True])
def test_layer_matches_oracle_with_keras_mask_and_padding_mask(causal):
    ids = np.array([[0, 0, 3, 4, 5, 6], [7, 8, 9, 0, 0, 0]])
    emb = tf.keras.layers.Embedding(10, 8, mask_zero=True)
    layer = LinRecAttention(num_heads=2, key_dim=3, causal=causal)
    x = emb(ids)
    out_keras_mask = layer(x, x).numpy()  # the mask travels on x as _keras_mask
    mask = ids > 0
    want = _layer_reference(layer, x.numpy(), mask, causal)
    real = mask[..., None]
    np.testing.assert_allclose(out_keras_mask * real, want * real, atol=1e-5)
    plain = tf.constant(x.numpy())  # no Keras mask: pass the padding mask explicitly
    out_explicit = layer(plain, plain, attention_mask=mask, use_causal_mask=causal).numpy()
    np.testing.assert_allclose(out_explicit, out_keras_mask, atol=1e-6)


def test_layer_is_a_multi_head_attention_drop_in():
    layer = LinRecAttention(num_heads=2, key_dim=4, value_dim=3, output_shape=5, dropout=0.1)
    assert isinstance(layer, tf.keras.layers.MultiHeadAttention)
    x = tf.random.normal([2, 7, 6])
    out, scores = layer(x, x, return_attention_scores=True)
    assert out.shape == (2, 7, 5) and scores.shape == (2, 2, 7, 7)
    mha = tf.keras.layers.MultiHeadAttention(num_heads=2, key_dim=4, value_dim=3, output_shape=5)
    mha(x, x)
    assert [w.shape for w in mha.weights] == [w.shape for w in layer.weights]
    # Cross-attention with a different key length.
    y = tf.random.normal([2, 9, 6])
    assert layer(x, y).shape == (2, 7, 5)


def test_layer_refuses_pairwise_masks_and_unsupported_axes():
    layer = LinRecAttention(num_heads=1, key_dim=2)
    x = tf.zeros([1, 4, 2])
    with pytest.raises(ValueError, match="padding and causal masks only"):
        layer(x, x, attention_mask=tf.ones([1, 4, 4], tf.bool))
    with pytest.raises(ValueError, match="attention_axes"):
        LinRecAttention(num_heads=1, key_dim=2, attention_axes=(1, 2))
    with pytest.raises(ValueError, match=r"\[batch, length, dim\]"):
        LinRecAttention(num_heads=1, key_dim=2)(tf.zeros([1, 2, 4, 2]), tf.zeros([1, 2, 4, 2]))


def test_dropout_applies_to_head_outputs_in_training_only():
    x = tf.random.normal([2, 6, 8])
    layer = LinRecAttention(num_heads=2, key_dim=4, dropout=0.5)
    a = layer(x, x, training=False).numpy()
    b = layer(x, x, training=False).numpy()
    c = layer(x, x, training=True).numpy()
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_config_roundtrip_and_keras_model_save_reload(tmp_path):
    layer = LinRecAttention(num_heads=2, key_dim=4, normalization="token", causal=True, chunk_size=3, epsilon=1e-5)
    config = layer.get_config()
    clone = LinRecAttention.from_config(config)
    assert {k: clone.get_config()[k] for k in config} == config
    assert clone.normalization == "token" and clone.causal and clone.chunk_size == 3

    ids = tf.keras.Input([6], dtype=tf.int32)
    h = tf.keras.layers.Embedding(20, 8, mask_zero=True)(ids)
    # An explicit padding mask: tf.saved_model.save traces the functional model without
    # the `_keras_mask` attributes (plain MultiHeadAttention loses them the same way).
    h = LinRecAttention(num_heads=2, key_dim=4, causal=True)(h, h, attention_mask=tf.not_equal(ids, 0))
    h = TransformerBlock(num_heads=2, attention="linrec", causal=True, ffn_dim=16)(h)
    model = tf.keras.Model(ids, tf.keras.layers.Dense(3)(h))
    x = np.array([[0, 0, 1, 2, 3, 4], [5, 6, 7, 8, 9, 10]], np.int32)
    want = model(x).numpy()
    for path in (tmp_path / "model.keras", tmp_path / "savedmodel"):
        model.save(path)
        again = tf.keras.models.load_model(path)
        np.testing.assert_allclose(again(x).numpy(), want, rtol=1e-5, atol=1e-5)
    tf.saved_model.save(model, str(tmp_path / "tfsm"))
    loaded = tf.saved_model.load(str(tmp_path / "tfsm"))
    np.testing.assert_allclose(loaded(tf.constant(x)).numpy(), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("causal", [False, True])
def test_xla_equals_graph_mode(causal):
    layer = LinRecAttention(num_heads=2, key_dim=4, causal=causal, chunk_size=4)
    x = tf.random.normal([2, 10, 8])
    mask = tf.constant(random_padding_mask(np.random.default_rng(11), 2, 10))

    def f(x, mask):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, x, attention_mask=mask)
            loss = tf.reduce_sum(y * y)
        return y, tape.gradient(loss, x)

    graph = tf.function(f)(x, mask)
    xla = tf.function(f, jit_compile=True)(x, mask)
    for a, b in zip(graph, xla):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision(policy, float32_policy):
    x = tf.random.normal([2, 12, 8])
    mask = tf.constant(random_padding_mask(np.random.default_rng(12), 2, 12))
    ref = LinRecAttention(num_heads=2, key_dim=4, causal=True)
    want = ref(x, x, attention_mask=mask).numpy()
    tf.keras.mixed_precision.set_global_policy(policy)
    layer = LinRecAttention(num_heads=2, key_dim=4, causal=True)
    layer(x, x)
    layer.set_weights(ref.get_weights())
    out = layer(x, x, attention_mask=mask)
    assert out.dtype == tf.as_dtype(policy.split("_")[1])
    assert layer._key_dense.compute_dtype == "float32"  # see the gradients test below
    assert all(w.dtype == tf.float32 for w in layer.weights)
    tol = 2e-2 if policy == "mixed_bfloat16" else 3e-3
    np.testing.assert_allclose(out.numpy().astype(np.float32), want, atol=tol * 10, rtol=tol)


def test_mixed_precision_gradients_follow_float32s(float32_policy, policy="mixed_bfloat16"):
    """Low-precision key projections land on exactly zero where their matmul and a trained
    bias cancel, and the causal prefix norms' gradient there is ~1/epsilon: bfloat16
    training got every gradient below the attention 30-700x too large. Keys are computed
    in float32 under mixed policies, so the gradients stay those of float32."""
    rng = np.random.default_rng(13)
    x = tf.constant(rng.normal(size=[32, 16, 32]), tf.float32)
    mask = tf.constant(random_padding_mask(rng, 32, 16))
    ref = LinRecAttention(num_heads=2, key_dim=16, causal=True)
    ref(x, x)
    weights = ref.get_weights()
    # A trained model's key bias (zero at initialisation), of the projections' scale.
    weights[3] = rng.normal(scale=0.5, size=weights[3].shape).astype(np.float32)
    ref.set_weights(weights)
    tf.keras.mixed_precision.set_global_policy(policy)
    layer = LinRecAttention(num_heads=2, key_dim=16, causal=True)
    layer(x, x)
    layer.set_weights(weights)
    assert layer._key_dense.compute_dtype == "float32"
    assert layer._query_dense.compute_dtype == policy.split("_")[1]

    def grads(attention):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = tf.cast(attention(x, x, attention_mask=mask), tf.float32)
            loss = tf.reduce_sum(y * tf.sin(tf.range(32, dtype=tf.float32)))
        return [tf.convert_to_tensor(g).numpy() for g in
                tape.gradient(loss, [x] + attention.trainable_variables)]

    for want, got in zip(grads(ref), grads(layer)):
        assert np.all(np.isfinite(got))
        assert np.linalg.norm(got - want) <= 0.1 * np.linalg.norm(want)


def test_attention_hook_gets_masks_and_flags_as_arguments_and_no_state_is_kept():
    """A subclass overriding the documented `_compute_attention` hook receives the
    padding masks, the causal flag and the scores request as arguments; calls with
    flags leave the layer's attributes as they were."""
    seen = []

    class Recording(LinRecAttention):
        def _compute_attention(self, query, key, value, attention_mask=None, training=None,
                               **kwargs):
            seen.append(kwargs)
            return super()._compute_attention(query, key, value, attention_mask, training,
                                              **kwargs)

    rng = np.random.default_rng(21)
    x = tf.constant(rng.normal(size=[2, 7, 6]), tf.float32)
    mask = random_padding_mask(rng, 2, 7)
    layer, plain = Recording(num_heads=2, key_dim=3, chunk_size=4), LinRecAttention(
        num_heads=2, key_dim=3, chunk_size=4)
    plain(x, x)
    layer(x, x)
    layer.set_weights(plain.get_weights())
    state = {k: v for k, v in vars(layer).items() if isinstance(v, (bool, int, float, str))}
    out, scores = layer(x, x, attention_mask=mask, use_causal_mask=True,
                        return_attention_scores=True)
    assert {k: v for k, v in vars(layer).items()
            if isinstance(v, (bool, int, float, str))} == state
    want, want_scores = plain(x, x, attention_mask=mask, use_causal_mask=True,
                              return_attention_scores=True)
    np.testing.assert_array_equal(out.numpy(), want.numpy())
    np.testing.assert_array_equal(scores.numpy(), want_scores.numpy())
    assert seen[-1]["causal"] is True and seen[-1]["return_attention_scores"] is True
    np.testing.assert_array_equal(seen[-1]["query_mask"].numpy(), mask)
    np.testing.assert_array_equal(seen[-1]["key_mask"].numpy(), mask)
    layer(x, x[:, :5])  # cross-attention, non-causal, no scores
    assert seen[-1]["causal"] is False and seen[-1]["return_attention_scores"] is False
    assert seen[-1]["query_mask"] is None and seen[-1]["key_mask"] is None


# ------------------------------------------------- issue 14: causal, query length != value length
def _cross_reference(layer, xq, xv, key_mask, query_mask):
    """Projections with the layer's weights (float64), then the dense oracle's causal
    [T, S] matrix (query i sees keys j <= i), then the output projection."""
    ws = {w.name.split("/")[-2] + "/" + w.name.split("/")[-1].split(":")[0]: w.numpy().astype(np.float64)
          for w in layer.weights}

    def proj(name, x):
        return np.einsum("btd,dnh->bnth", x.astype(np.float64), ws[f"{name}/kernel"]) + \
            ws[f"{name}/bias"][None, :, None, :]

    q, k, v = proj("query", xq), proj("key", xv), proj("value", xv)
    scores = dense_matrix(q, k, key_mask, True, layer.normalization)  # [B, N, T, S]
    scores = scores * query_mask[:, None, :, None]
    out = scores @ (v * key_mask[:, None, :, None])
    return np.einsum("bnth,nhd->btd", out, ws["attention_output/kernel"]) + ws["attention_output/bias"], scores


class _ThroughTheHook(LinRecAttention):
    """Overrides `_compute_attention` (by calling it): `call` must take the hook's path."""

    def _compute_attention(self, *args, **kwargs):
        return super()._compute_attention(*args, **kwargs)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("use_bias", [True, False])
def test_projections_into_heads_equal_the_hook_path_values_and_gradients(causal, use_bias):
    """`call` without an overridden hook projects straight into the op's layout (one 2-D
    MatMul per projection). It must give the parent's projections + the hook's numbers,
    forward and backward, eager and under XLA; a subclass overriding the hook still
    gets it called."""
    rng = np.random.default_rng(5)
    x = tf.constant(rng.normal(size=[3, 9, 6]), tf.float32)
    mask = random_padding_mask(rng, 3, 9)
    kwargs = dict(num_heads=2, key_dim=4, value_dim=3, chunk_size=4, causal=causal,
                  use_bias=use_bias)
    fast, hooked = LinRecAttention(**kwargs), _ThroughTheHook(**kwargs)
    fast(x, x)
    hooked(x, x)
    hooked.set_weights(fast.get_weights())
    calls = []
    projected = fast._projected_heads
    fast._projected_heads = lambda *a: calls.append(1) or projected(*a)

    def value_and_grads(layer):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, x, attention_mask=mask)
            loss = tf.reduce_sum(tf.sin(y))
        return [y] + tape.gradient(loss, [x] + layer.trainable_weights)

    for run in (value_and_grads, tf.function(value_and_grads, jit_compile=True)):
        calls.clear()
        got, want = run(fast), run(hooked)
        assert calls, "the layer did not take its projections-into-heads path"
        for g, w in zip(got, want):
            np.testing.assert_allclose(g.numpy(), w.numpy(), rtol=1e-5, atol=1e-6)
    calls.clear()
    fast(x, x, attention_mask=mask, return_attention_scores=True)
    assert not calls, "scores are the hook's: that call must take the hook's path"


@pytest.mark.parametrize("normalization", ["paper", "token"])
@pytest.mark.parametrize("t_len,s_len", [(4, 9), (9, 4)])
def test_causal_mask_with_query_and_value_of_different_lengths(normalization, t_len, s_len):
    """MultiHeadAttention's causal mask is the lower-triangular [T, S] matrix; LinRec applies
    it without forming it (this crashed inside LogicalAnd / raised 'same length')."""
    rng = np.random.default_rng(14)
    xq = rng.normal(size=[3, t_len, 6]).astype(np.float32)
    xv = rng.normal(size=[3, s_len, 6]).astype(np.float32)
    key_mask = random_padding_mask(rng, 3, s_len)
    query_mask = random_padding_mask(rng, 3, t_len)
    layer = LinRecAttention(num_heads=2, key_dim=3, normalization=normalization, chunk_size=3)
    query = tf.constant(xq)
    query._keras_mask = tf.constant(query_mask)  # the query's own padding (a Keras mask)
    out, scores = layer(query, tf.constant(xv), attention_mask=key_mask, use_causal_mask=True,
                        return_attention_scores=True)
    want, want_scores = _cross_reference(layer, xq, xv, key_mask.astype(np.float64),
                                         query_mask.astype(np.float64))
    assert out.shape == (3, t_len, layer._query_shape[-1]) and scores.shape == (3, 2, t_len, s_len)
    np.testing.assert_allclose(out.numpy(), want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(scores.numpy(), want_scores, rtol=1e-4, atol=1e-6)
    # causal=True at construction is the same mask; so is the compiled (XLA) path.
    fixed = LinRecAttention(num_heads=2, key_dim=3, normalization=normalization, chunk_size=3,
                            causal=True)
    fixed(query, tf.constant(xv))
    fixed.set_weights(layer.get_weights())
    compiled = tf.function(lambda q, v, m: fixed(q, v, attention_mask=m), jit_compile=True)
    got = compiled(tf.constant(xq), tf.constant(xv), tf.constant(key_mask)).numpy()
    np.testing.assert_allclose(got * query_mask[..., None], want, rtol=1e-4, atol=1e-5)
