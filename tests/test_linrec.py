"""LinRec against an independent dense float64 NumPy oracle that builds the N x N matrix.

The oracle follows shared/docs/linrec.md literally (explicit per-position prefix norms in
causal mode), with none of the library's code: the efficient chunked path, the layer and
the block are all checked against it.
"""

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tfrs_linear import ops
from tfrs_linear.layers import LinRecAttention, TransformerBlock

EPS = 1e-6


# --------------------------------------------------------------------------- oracle
def _elu(x):
    return np.where(x > 0, x, np.expm1(np.minimum(x, 0)))


def dense_matrix(q, k, mask, causal, normalization, eps=EPS):
    """The implicit attention matrix A [B, H, T, S], built position by position."""
    q = np.asarray(q, np.float64)
    k = np.asarray(k, np.float64)
    b_, h_, t_, d = q.shape
    s_ = k.shape[2]
    m = np.ones((b_, s_)) if mask is None else np.asarray(mask, np.float64)
    pq = _elu(q)
    pk = _elu(k) * m[:, None, :, None]
    qh = pq / np.maximum(np.linalg.norm(pq, axis=-1, keepdims=True), eps)
    a = np.zeros((b_, h_, t_, s_))
    for b in range(b_):
        for h in range(h_):
            if normalization == "token":
                kh = pk[b, h] / np.maximum(np.linalg.norm(pk[b, h], axis=-1, keepdims=True), eps)
                a[b, h] = qh[b, h] @ kh.T / np.sqrt(d)
                if causal:
                    a[b, h] = np.tril(a[b, h])
            elif not causal:
                n = m[b].sum()
                col = np.maximum(np.linalg.norm(pk[b, h], axis=0), eps)
                kh = pk[b, h] / (np.sqrt(max(n, 1.0)) * col)
                a[b, h] = (qh[b, h] / np.sqrt(d)) @ kh.T
            else:
                for t in range(t_):
                    n_t = m[b, : t + 1].sum()
                    col_t = np.maximum(np.linalg.norm(pk[b, h, : t + 1], axis=0), eps)
                    kh = pk[b, h, : t + 1] / (np.sqrt(max(n_t, 1.0)) * col_t)
                    a[b, h, t, : t + 1] = (qh[b, h, t] / np.sqrt(d)) @ kh.T
    if t_ == s_:
        a = a * m[:, None, :, None]  # padded queries output 0
    return a


def dense_attention(q, k, v, mask, causal, normalization, eps=EPS):
    v = np.asarray(v, np.float64)
    if mask is not None:
        v = v * np.asarray(mask, np.float64)[:, None, :, None]
    return dense_matrix(q, k, mask, causal, normalization, eps) @ v


def random_padding_mask(rng, batch, length):
    """Rows with left padding, right padding, both, none, and very short sequences."""
    mask = np.zeros((batch, length), bool)
    for b in range(batch):
        n = int(rng.integers(1, length + 1))
        kind = b % 3
        start = 0 if kind == 0 else (length - n if kind == 1 else int(rng.integers(0, length - n + 1)))
        mask[b, start : start + n] = True
    return mask


def qkv(rng, b=3, h=2, n=11, d=4, dv=5, dtype=np.float64):
    return (
        rng.standard_normal((b, h, n, d)).astype(dtype),
        rng.standard_normal((b, h, n, d)).astype(dtype),
        rng.standard_normal((b, h, n, dv)).astype(dtype),
    )


CASES = [(norm, causal) for norm in ("paper", "token") for causal in (False, True)]


# ---------------------------------------------------------------------- op vs oracle
@pytest.mark.parametrize("normalization,causal", CASES)
@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-10), (np.float32, 1e-5)])
def test_forward_matches_dense_oracle(normalization, causal, dtype, tol):
    rng = np.random.default_rng(0)
    q, k, v = qkv(rng, dtype=dtype)
    mask = random_padding_mask(rng, 3, 11)
    got = ops.linrec_attention(q, k, v, mask=mask, causal=causal, normalization=normalization, chunk_size=4)
    want = dense_attention(q, k, v, mask, causal, normalization)
    assert got.dtype == tf.as_dtype(dtype)
    np.testing.assert_allclose(got.numpy(), want, rtol=tol, atol=tol if dtype == np.float64 else 1e-4)


@pytest.mark.parametrize("normalization,causal", CASES)
def test_unmasked_and_cross_lengths(normalization, causal):
    rng = np.random.default_rng(1)
    q, k, v = qkv(rng, n=9)
    got = ops.linrec_attention(q, k, v, causal=causal, normalization=normalization, chunk_size=4)
    np.testing.assert_allclose(got.numpy(), dense_attention(q, k, v, None, causal, normalization), atol=1e-10)
    if not causal:  # query length differs from key length; the mask covers the keys only
        q2 = rng.standard_normal((3, 2, 5, 4))
        mask = random_padding_mask(rng, 3, 9)
        got = ops.linrec_attention(q2, k, v, mask=mask, normalization=normalization)
        want = dense_matrix(q2, k, mask, False, normalization) @ (v * mask[:, None, :, None])
        np.testing.assert_allclose(got.numpy(), want, atol=1e-10)


@pytest.mark.parametrize("normalization,causal", CASES)
def test_gradients_match_numerical_gradients_of_oracle(normalization, causal):
    rng = np.random.default_rng(2)
    q, k, v = qkv(rng, b=2, h=1, n=6, d=3, dv=2)
    mask = np.array([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]], bool)
    w = rng.standard_normal((2, 1, 6, 2))
    tensors = [tf.constant(x) for x in (q, k, v)]
    with tf.GradientTape() as tape:
        tape.watch(tensors)
        out = ops.linrec_attention(*tensors, mask=mask, causal=causal, normalization=normalization, chunk_size=4)
        loss = tf.reduce_sum(out * w)
    grads = tape.gradient(loss, tensors)

    def f(arrays):
        return float(np.sum(dense_attention(*arrays, mask, causal, normalization) * w))

    step = 1e-6
    for i, g in enumerate(grads):
        numeric = np.zeros_like(tensors[i].numpy())
        for idx in np.ndindex(numeric.shape):
            plus = [x.copy() for x in (q, k, v)]
            minus = [x.copy() for x in (q, k, v)]
            plus[i][idx] += step
            minus[i][idx] -= step
            numeric[idx] = (f(plus) - f(minus)) / (2 * step)
        np.testing.assert_allclose(g.numpy(), numeric, atol=1e-6, rtol=1e-5)


def test_attention_scores_equal_oracle_matrix_and_reproduce_output():
    rng = np.random.default_rng(3)
    q, k, v = qkv(rng, n=7)
    mask = random_padding_mask(rng, 3, 7)
    for normalization, causal in CASES:
        a = ops.linrec_attention_scores(q, k, mask=mask, causal=causal, normalization=normalization)
        np.testing.assert_allclose(a.numpy(), dense_matrix(q, k, mask, causal, normalization), atol=1e-10)


def test_paper_rows_have_l1_norm_at_most_one():
    """The paper's scaling: every row of A has L1 norm <= 1, whatever N."""
    rng = np.random.default_rng(4)
    for n in (5, 50, 300):
        q, k, _ = qkv(rng, b=1, h=1, n=n, d=8)
        for causal in (False, True):
            a = ops.linrec_attention_scores(q, k, causal=causal).numpy()
            assert np.abs(a).sum(-1).max() <= 1.0 + 1e-9


# ------------------------------------------------------------ properties of the op
@pytest.mark.parametrize("normalization,causal", CASES)
def test_padding_invariance(normalization, causal):
    rng = np.random.default_rng(5)
    q, k, v = qkv(rng, b=1, h=2, n=6, d=4)
    outs = []
    for left, right in ((0, 0), (5, 0), (0, 7), (3, 4)):
        n = 6 + left + right
        pad = lambda x: np.concatenate(  # noqa: E731
            [rng.standard_normal((1, 2, left, x.shape[-1])) * 50, x, rng.standard_normal((1, 2, right, x.shape[-1])) * 50],
            axis=2,
        )
        mask = np.zeros((1, n), bool)
        mask[0, left : left + 6] = True
        out = ops.linrec_attention(pad(q), pad(k), pad(v), mask=mask, causal=causal, normalization=normalization, chunk_size=4)
        out = out.numpy()
        # Padded queries output exactly 0, real ones do not depend on the padding.
        assert np.all(out[:, :, :left] == 0) and np.all(out[:, :, left + 6 :] == 0)
        outs.append(out[:, :, left : left + 6])
    for out in outs[1:]:
        np.testing.assert_allclose(out, outs[0], atol=1e-12)


@pytest.mark.parametrize("normalization", ["paper", "token"])
def test_causal_is_leak_free(normalization):
    rng = np.random.default_rng(6)
    q, k, v = qkv(rng, b=2, n=13)
    base = ops.linrec_attention(q, k, v, causal=True, normalization=normalization, chunk_size=4).numpy()
    for t in (0, 3, 4, 8, 11):
        q2, k2, v2 = (x.copy() for x in (q, k, v))
        for x in (q2, k2, v2):
            x[:, :, t + 1 :] = rng.standard_normal(x[:, :, t + 1 :].shape) * 10
        out = ops.linrec_attention(q2, k2, v2, causal=True, normalization=normalization, chunk_size=4).numpy()
        np.testing.assert_allclose(out[:, :, : t + 1], base[:, :, : t + 1], atol=1e-12)
        if t < 12:
            assert not np.allclose(out[:, :, t + 1 :], base[:, :, t + 1 :])


@pytest.mark.parametrize("normalization,causal", CASES)
def test_all_padding_rows_give_zeros_and_finite_gradients(normalization, causal):
    rng = np.random.default_rng(7)
    q, k, v = (tf.constant(x) for x in qkv(rng, b=2, n=5, dtype=np.float32))
    mask = np.array([[0] * 5, [1] * 5], bool)
    with tf.GradientTape() as tape:
        tape.watch([q, k, v])
        out = ops.linrec_attention(q, k, v, mask=mask, causal=causal, normalization=normalization)
        loss = tf.reduce_sum(out)
    grads = tape.gradient(loss, [q, k, v])
    assert np.all(out.numpy()[0] == 0)
    for g in grads:
        assert np.all(np.isfinite(g.numpy()))
        assert np.all(g.numpy()[0] == 0)
    # Zero inputs too: every norm is at its epsilon floor.
    zeros = tf.zeros([1, 1, 4, 3])
    with tf.GradientTape() as tape:
        tape.watch(zeros)
        loss = tf.reduce_sum(ops.linrec_attention(zeros, zeros, zeros, causal=causal, normalization=normalization))
    assert np.all(np.isfinite(tape.gradient(loss, zeros).numpy()))


@pytest.mark.parametrize("chunk_size", [1, 3, 4, 16, 64])
def test_causal_result_does_not_depend_on_chunk_size(chunk_size):
    rng = np.random.default_rng(8)
    q, k, v = qkv(rng, n=17)
    mask = random_padding_mask(rng, 3, 17)
    got = ops.linrec_attention(q, k, v, mask=mask, causal=True, chunk_size=chunk_size)
    np.testing.assert_allclose(got.numpy(), dense_attention(q, k, v, mask, True, "paper"), atol=1e-10)


def test_bad_arguments_raise_clear_errors():
    x = tf.zeros([1, 1, 4, 2])
    with pytest.raises(ValueError, match="normalization"):
        ops.linrec_attention(x, x, x, normalization="softmax")
    with pytest.raises(ValueError, match=r"\[batch, heads, length, dim\]"):
        ops.linrec_attention(tf.zeros([4, 2]), x, x)
    with pytest.raises(ValueError, match="same length"):
        ops.linrec_attention(tf.zeros([1, 1, 3, 2]), x, x, causal=True)
    with pytest.raises(ValueError, match="padding mask"):
        ops.linrec_attention(x, x, x, mask=tf.ones([1, 4, 4]))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_low_precision_inputs_compute_in_float32(dtype):
    rng = np.random.default_rng(9)
    q, k, v = qkv(rng, n=40, dtype=np.float32)
    low = [tf.cast(x, dtype) for x in (q, k, v)]
    for causal in (False, True):
        out = ops.linrec_attention(*low, causal=causal, chunk_size=8)
        assert out.dtype == tf.as_dtype(dtype)
        # The same rounded inputs in float32: only the final cast differs.
        ref = ops.linrec_attention(*[tf.cast(x, tf.float32) for x in low], causal=causal, chunk_size=8)
        np.testing.assert_allclose(
            out.numpy().astype(np.float32), tf.cast(tf.cast(ref, dtype), tf.float32).numpy(), atol=1e-6
        )


def test_long_input_has_nothing_quadratic():
    """N = 8192, causal and not: no tensor of the forward or backward graph has N*N
    elements (a structural check, independent of the machine), and it runs."""
    n = 8192
    spec = tf.TensorSpec([1, 1, n, 16], tf.float32)

    @tf.function
    def step(q, k, v, causal):
        with tf.GradientTape() as tape:
            tape.watch([q, k, v])
            out = ops.linrec_attention(q, k, v, mask=tf.ones([1, n]), causal=causal)
            loss = tf.reduce_sum(out * out)
        return loss, tape.gradient(loss, [q, k, v])

    for causal in (False, True):
        graph = step.get_concrete_function(spec, spec, spec, causal).graph
        biggest = 0
        for op in graph.get_operations():
            for t in op.outputs:
                if t.shape.rank and t.shape.is_fully_defined():
                    biggest = max(biggest, t.shape.num_elements())
        assert biggest < n * n // 16, biggest
        x = tf.random.normal([1, 1, n, 16])
        loss, grads = step(x, x, x, causal)
        assert np.isfinite(loss.numpy()) and all(np.all(np.isfinite(g.numpy())) for g in grads)


# -------------------------------------------------------------------------- layer
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
    assert all(w.dtype == tf.float32 for w in layer.weights)
    tol = 2e-2 if policy == "mixed_bfloat16" else 3e-3
    np.testing.assert_allclose(out.numpy().astype(np.float32), want, atol=tol * 10, rtol=tol)


# -------------------------------------------------------------------------- block
@pytest.mark.parametrize("attention", ["softmax", "linrec"])
@pytest.mark.parametrize("causal", [False, True])
def test_transformer_block_padding_invariance(attention, causal):
    block = TransformerBlock(num_heads=2, attention=attention, causal=causal, ffn_dim=16)
    rng = np.random.default_rng(13)
    x = rng.standard_normal((1, 5, 8)).astype(np.float32)
    padded = np.concatenate([rng.standard_normal((1, 3, 8)).astype(np.float32), x], axis=1)
    out = block(x, mask=tf.ones([1, 5], tf.bool)).numpy()
    out_padded = block(padded, mask=tf.constant([[False] * 3 + [True] * 5])).numpy()
    np.testing.assert_allclose(out_padded[:, 3:], out, atol=1e-5)
    assert np.all(out_padded[:, :3] == 0)
    assert TransformerBlock.from_config(block.get_config()).get_config() == block.get_config()


def test_transformer_block_rejects_unknown_attention():
    with pytest.raises(ValueError, match="attention must be one of"):
        TransformerBlock(num_heads=2, attention="performer")


# ------------------------------------------------------------------------- import
def _run(code, **env):
    full_env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    full_env.update(env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full_env, timeout=300)


def test_import_sets_legacy_keras_and_refuses_keras_3():
    ok = _run("import tensorflow as tf; import tfrs_linear, os; "
              "print(os.environ['TF_USE_LEGACY_KERAS'], tf.keras.__name__)")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.split() == ["1", "tf_keras.api._v2.keras"]
    bad = _run("import tfrs_linear", TF_USE_LEGACY_KERAS="0")
    assert bad.returncode != 0
    assert "ImportError" in bad.stderr and "TF_USE_LEGACY_KERAS=1" in bad.stderr
