"""Tests of ELASTIC: LinearDispatcherAttention, InterestMemory and their ops.

The oracles are independent of the implementation: dense float64 NumPy references with
explicit softmax matrices (the causal one builds every position's prefix weights
explicitly, O(N²)), brute-force search over all memory slots, and finite differences of
the NumPy reference for gradients.
"""

import os
import tempfile

import numpy as np
import pytest

import tfrs_linear  # noqa: F401  (sets TF_USE_LEGACY_KERAS before tf.keras is used)
import tensorflow as tf

from tfrs_linear.layers import elastic as elastic_layers
from tfrs_linear.layers.elastic import InterestMemory, LinearDispatcherAttention
from tfrs_linear.layers.transformer import TransformerBlock
from tfrs_linear.ops import elastic as elastic_ops

DIM, HEADS, KEY_DIM, K = 6, 2, 3, 3


# --------------------------------------------------------------------------- helpers


def _numeric_gradient(fn, arr, h=1e-6):
    """Central differences of the scalar ``fn`` at ``arr`` (float64)."""
    grad = np.zeros_like(arr)
    for idx in np.ndindex(*arr.shape):
        plus, minus = arr.copy(), arr.copy()
        plus[idx] += h
        minus[idx] -= h
        grad[idx] = (fn(plus) - fn(minus)) / (2 * h)
    return grad


def random_mask(rng, batch, length, min_real=1):
    """Rows with random left and right padding (at least ``min_real`` real items)."""
    mask = np.zeros([batch, length], bool)
    for b in range(batch):
        n_real = rng.integers(min_real, length + 1)
        left = rng.integers(0, length - n_real + 1)
        mask[b, left:left + n_real] = True
    return mask


def make_layer(causal, dtype="float64", seed=0, value_dim=None, chunk_size=4, **kw):
    tf.keras.utils.set_random_seed(seed)
    layer = LinearDispatcherAttention(
        num_heads=HEADS,
        key_dim=KEY_DIM,
        num_interests=K,
        value_dim=value_dim,
        causal=causal,
        chunk_size=chunk_size,
        dtype=dtype,
        bias_initializer="random_normal",
        **kw,
    )
    layer.build([None, None, DIM])
    if not causal:  # non-trivial LayerNorm parameters
        layer.interest_norm.gamma.assign(
            1.0 + 0.3 * tf.random.normal([DIM], dtype=layer.interest_norm.gamma.dtype)
        )
        layer.interest_norm.beta.assign(
            0.3 * tf.random.normal([DIM], dtype=layer.interest_norm.beta.dtype)
        )
    return layer


def weights_of(layer):
    w = {
        name: np.asarray(getattr(layer, name).numpy(), np.float64)
        for name in (
            "interest_tokens",
            "query_1_kernel", "query_1_bias", "key_1_kernel", "key_1_bias",
            "value_1_kernel", "value_1_bias", "output_1_kernel",
            "query_2_kernel", "query_2_bias", "key_2_kernel", "key_2_bias",
            "value_2_kernel", "value_2_bias", "output_2_kernel", "output_2_bias",
        )
    }
    if layer.interest_norm is not None:
        w["gamma"] = layer.interest_norm.gamma.numpy().astype(np.float64)
        w["beta"] = layer.interest_norm.beta.numpy().astype(np.float64)
        w["eps"] = layer.interest_norm.epsilon
    return w


def _proj(z, kernel, bias):
    # z [L, d], kernel [d, H, e], bias [H, e] -> [H, L, e]
    return np.einsum("ld,dhe->hle", z, kernel) + bias[:, None, :]


def _softmax_rows(logits, valid):
    """Explicit softmax over the last axis restricted to ``valid``; no valid entry -> 0."""
    out = np.zeros_like(logits)
    it = np.ndindex(*logits.shape[:-1])
    for idx in it:
        row, ok = logits[idx], valid[idx]
        if ok.any():
            e = np.exp(row[ok] - row[ok].max())
            out[idx][ok] = e / e.sum()
    return out


def _layer_norm(z, gamma, beta, eps):
    mean = z.mean(-1, keepdims=True)
    var = ((z - mean) ** 2).mean(-1, keepdims=True)
    return (z - mean) / np.sqrt(var + eps) * gamma + beta


def reference(w, x, mask, causal, interests=None, slopes=None):
    """Dense float64 LDA, one batch row at a time. Returns (outputs, interests).

    ``slopes [H, k]``: the recency bias written as what it should amount to, a decay
    ``exp(-slope · age)`` of every aggregate weight, the age of item ``s`` seen from
    position ``t`` being ``t - s`` (causal) or ``N - 1 - s`` (non-causal).
    """
    x = np.asarray(x, np.float64)
    batch, n, _ = x.shape
    dk = w["query_1_kernel"].shape[-1]
    outs, final = [], []
    for b in range(batch):
        xb, m = x[b], np.asarray(mask[b], bool)
        p = w["interest_tokens"] if interests is None else np.asarray(interests[b], np.float64)
        q1 = _proj(p, w["query_1_kernel"], w["query_1_bias"])  # [H, k, dk]
        k1 = _proj(xb, w["key_1_kernel"], w["key_1_bias"])  # [H, N, dk]
        v1 = _proj(xb, w["value_1_kernel"], w["value_1_bias"])  # [H, N, dv]
        q2 = _proj(xb, w["query_2_kernel"], w["query_2_bias"])  # [H, N, dk]
        logits = np.einsum("hid,hnd->hin", q1, k1) / np.sqrt(dk)
        lam = np.zeros([HEADS, K]) if slopes is None else np.asarray(slopes, np.float64)
        if not causal:
            logits = logits - lam[:, :, None] * (n - 1 - np.arange(n))
            valid = np.broadcast_to(m, logits.shape)
            a = _softmax_rows(logits, valid)  # [H, k, N]
            p_new = p + np.einsum("hin,hnv,hvd->id", a, v1, w["output_1_kernel"])
            p_new = _layer_norm(p_new, w["gamma"], w["beta"], w["eps"])
            k2 = _proj(p_new, w["key_2_kernel"], w["key_2_bias"])
            v2 = _proj(p_new, w["value_2_kernel"], w["value_2_bias"])
            s = np.einsum("hnd,hid->hni", q2, k2) / np.sqrt(dk)
            attn = _softmax_rows(s, np.ones_like(s, bool))
            y = np.einsum("hni,hiv->hnv", attn, v2)
            final.append(p_new)
        else:
            # Explicit per-position prefix weights: a[h, i, t, s], s <= t and real.
            valid = np.tril(np.ones([n, n], bool)) & m[None, :]
            age = np.arange(n)[:, None] - np.arange(n)[None, :]  # [t, s]
            a = _softmax_rows(
                logits[:, :, None, :] - lam[:, :, None, None] * age,
                np.broadcast_to(valid, (HEADS, K, n, n)),
            )
            p_t = p[None] + np.einsum("hits,hsv,hvd->tid", a, v1, w["output_1_kernel"])
            y = np.zeros([HEADS, n, w["value_2_kernel"].shape[-1]])
            for t in range(n):
                k2 = _proj(p_t[t], w["key_2_kernel"], w["key_2_bias"])
                v2 = _proj(p_t[t], w["value_2_kernel"], w["value_2_bias"])
                s = np.einsum("hd,hid->hi", q2[:, t], k2) / np.sqrt(dk)
                e = np.exp(s - s.max(-1, keepdims=True))
                y[:, t] = np.einsum("hi,hiv->hv", e / e.sum(-1, keepdims=True), v2)
            final.append(p_t[-1])
        out = np.einsum("hnv,hvd->nd", y, w["output_2_kernel"]) + w["output_2_bias"]
        outs.append(out * m[:, None])
    return np.stack(outs), np.stack(final)


def run(layer, x, mask, interests=None, training=False):
    out, p = layer(
        tf.constant(x, layer.compute_dtype),
        mask=None if mask is None else tf.constant(mask),
        interests=interests,
        training=training,
    )
    return out.numpy(), p.numpy()


@pytest.fixture
def restore_policy():
    yield
    tf.keras.mixed_precision.set_global_policy("float32")


# --------------------------------------------------------------------------- LDA
@pytest.mark.parametrize("causal", [False, True])
def test_lda_matches_dense_reference_float64(causal):
    rng = np.random.default_rng(1)
    layer = make_layer(causal, "float64", seed=1, value_dim=4)
    x = rng.normal(size=[4, 9, DIM])
    mask = random_mask(rng, 4, 9)
    mask[0] = False  # all padding
    mask[1] = True  # no padding
    out, p = run(layer, x, mask)
    ref_out, ref_p = reference(weights_of(layer), x, mask, causal)
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
    ref_out, ref_p = reference(weights_of(layer), x, mask, causal)
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
    ref_out, ref_p = reference(weights_of(layer), x, mask, False, interests)
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
        expected = _layer_norm(expected, w["gamma"], w["beta"], w["eps"])
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
        o, p_ = reference(w_, x_, mask, causal)
        return np.sum(o * r_out) + np.sum(p_ * r_p)

    np.testing.assert_allclose(
        g_x.numpy(), _numeric_gradient(lambda a: ref_loss(w, a), x), rtol=1e-6, atol=1e-6
    )
    for name, g in (
        ("key_1_kernel", g_k1), ("value_2_kernel", g_v2), ("interest_tokens", g_p)
    ):
        def fn(a, name=name):
            return ref_loss({**w, name: a}, x)

        np.testing.assert_allclose(g.numpy(), _numeric_gradient(fn, w[name]), rtol=1e-6, atol=1e-6)


def test_causal_chunk_size_and_op_consistency():
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
    # The fused op: non-causal means over everything == causal at the last position.
    b, h, n, dk, dv = 2, 2, 13, 3, 4
    t = {
        "query": rng.normal(size=[b, h, n, dk]),
        "key": rng.normal(size=[b, h, n, dk]),
        "interest_query": rng.normal(size=[b, h, K, dk]),
        "interest_key": rng.normal(size=[b, h, K, dk]),
        "interest_value": rng.normal(size=[b, h, K, dv]),
        "value_key": rng.normal(size=[b, h, n, h, dk]),
        "value_value": rng.normal(size=[b, h, n, h, dv]),
    }
    causal = elastic_ops.dispatcher_attention(**t, mask=mask, causal=True, chunk_size=5)
    full = elastic_ops.dispatcher_attention(**t, mask=mask, causal=False)
    np.testing.assert_allclose(causal[:, :, -1], full[:, :, -1], rtol=1e-10, atol=1e-10)
    assert not np.allclose(causal[:, :, -3], full[:, :, -3])


# --------------------------------------------------------------------------- causal fast path
def causal_op_reference(t, mask):
    """Dense float64 causal ``dispatcher_attention`` with explicit prefix softmaxes."""
    q2, k1, q1, ik, iv, vk, vv = (np.asarray(t[name], np.float64) for name in (
        "query", "key", "interest_query", "interest_key", "interest_value", "value_key",
        "value_value"))
    batch, _, n, dk = q2.shape
    out = np.zeros([batch, q2.shape[1], n, iv.shape[-1]])
    for b in range(batch):
        m = np.asarray(mask[b], bool)
        logits = np.einsum("hid,hnd->hin", q1[b], k1[b]) / np.sqrt(dk)
        valid = np.tril(np.ones([n, n], bool)) & m[None, :]  # [t, s]
        w = _softmax_rows(
            np.broadcast_to(logits[:, :, None, :], logits.shape[:2] + (n, n)).copy(),
            np.broadcast_to(valid, logits.shape[:2] + (n, n)),
        )  # [h, i, t, s]
        keys = ik[b][:, None] + np.einsum("hits,hsgd->gtid", w, vk[b])  # [g, t, i, dk]
        vals = iv[b][:, None] + np.einsum("hits,hsgd->gtid", w, vv[b])
        s = np.einsum("gtd,gtid->gti", q2[b], keys) / np.sqrt(dk)
        p = np.exp(s - s.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        out[b] = np.einsum("gti,gtid->gtd", p, vals) * m[None, :, None]
    return out


def causal_op_inputs(rng, batch=3, heads=2, n=23, k=4, dk=3, dv=5, dtype=np.float64):
    shapes = {
        "query": [batch, heads, n, dk], "key": [batch, heads, n, dk],
        "interest_query": [batch, heads, k, dk], "interest_key": [batch, heads, k, dk],
        "interest_value": [batch, heads, k, dv], "value_key": [batch, heads, n, heads, dk],
        "value_value": [batch, heads, n, heads, dv],
    }
    t = {name: rng.normal(size=s).astype(dtype) for name, s in shapes.items()}
    mask = random_mask(rng, batch, n)
    mask[0, :] = False  # all padding
    mask[0, 3:7] = True  # a short real stretch between padding
    return t, mask


_OP_ARGS = ("query", "key", "interest_query", "interest_key", "interest_value",
            "value_key", "value_value")


def causal_op_run(t, mask, chunk, path, jit=False, bias=None):
    """Output, gradients (of a random projection of the output) and the fast-path flag.

    With ``bias`` (the aggregate logits' additive bias) its gradient comes last.
    """
    tensors = [tf.constant(t[name]) for name in _OP_ARGS]
    dtype = tensors[0].dtype
    if bias is not None:
        tensors.append(tf.constant(np.asarray(bias), dtype))
    r = tf.constant(np.random.default_rng(99).normal(
        size=t["query"].shape[:3] + t["interest_value"].shape[-1:]), dtype)
    m = tf.constant(np.asarray(mask, np.float64), dtype)

    def fn(tensors):
        with tf.GradientTape() as tape:
            tape.watch(tensors)
            out, ok = elastic_ops._causal_dispatcher(
                *tensors[:7], m, chunk, path=path, with_flag=True,
                bias=tensors[7] if len(tensors) > 7 else None)
            loss = tf.reduce_sum(out * r)
        return out, tape.gradient(loss, tensors), ok

    if jit:
        fn = tf.function(fn, jit_compile=True)
    out, grads, ok = fn(tensors)
    return out.numpy(), [g.numpy() for g in grads], bool(ok)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("chunk", [1, 3, 4, 8, 32])
def test_causal_fast_path_equals_per_position_path(dtype, chunk):
    rng = np.random.default_rng(20 + chunk)
    t, mask = causal_op_inputs(rng, dtype=dtype)
    t["key"] *= 3.0  # logits up to ~10: several orders of magnitude between weights
    fast = causal_op_run(t, mask, chunk, "fast")
    slow = causal_op_run(t, mask, chunk, "per_position")
    auto = causal_op_run(t, mask, chunk, "auto")
    assert fast[2] and auto[2]  # moderate logits: the fast path is the one taken
    tol = dict(rtol=1e-10, atol=1e-10) if dtype == np.float64 else dict(rtol=1e-5, atol=1e-5)
    for got in (fast, auto):
        np.testing.assert_allclose(got[0], slow[0], **tol)
        for g, s in zip(got[1], slow[1]):
            np.testing.assert_allclose(g, s, **tol)
    np.testing.assert_allclose(fast[0], causal_op_reference(t, mask), **tol)
    assert np.all(fast[0][:, :, ~mask[0]][0] == 0.0)


def test_causal_fast_path_handles_big_but_safe_logit_ranges():
    # A running maximum that rises by up to ~50 inside a chunk (below the fallback's 60):
    # weights spanning e^-50 must still be exact (column factors up to e^25).
    rng = np.random.default_rng(30)
    t, mask = causal_op_inputs(rng, n=16, k=2, dk=2)
    mask[:] = True
    t["interest_query"][:] = 1.0
    ramp = np.linspace(-25.0, 25.0, 16) * np.sqrt(2.0) / 2.0
    t["key"][:] = ramp[None, None, :, None]
    fast = causal_op_run(t, mask, 16, "fast")
    slow = causal_op_run(t, mask, 16, "per_position")
    auto = causal_op_run(t, mask, 16, "auto")
    assert auto[2]
    np.testing.assert_allclose(auto[0], causal_op_reference(t, mask), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(fast[0], slow[0], rtol=1e-10, atol=1e-10)
    for g, s in zip(auto[1], slow[1]):
        np.testing.assert_allclose(g, s, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_causal_logit_jump_takes_exact_fallback(dtype, jit):
    rng = np.random.default_rng(31)
    t, mask = causal_op_inputs(rng, n=13, dtype=dtype)
    mask[:] = True
    # Interest 0 of head 0 in row 1: logits O(1), then `jump` and `jump + 3` inside one
    # chunk. (In float32 a jump of 150 makes the unguarded fast path overflow.)
    jump = 200.0 if dtype == np.float64 else 150.0
    direction = t["interest_query"][1, 0, 0] / np.sum(t["interest_query"][1, 0, 0] ** 2)
    t["key"][1, 0, 6] = jump * np.sqrt(3.0) * direction
    t["key"][1, 0, 7] = (jump + 3.0) * np.sqrt(3.0) * direction
    auto = causal_op_run(t, mask, 4, "auto", jit=jit)
    fast = causal_op_run(t, mask, 4, "fast")
    slow = causal_op_run(t, mask, 4, "per_position")
    assert not auto[2]  # the fallback was taken ...
    assert not np.allclose(fast[0], slow[0])  # ... and was needed
    tol = dict(rtol=1e-10, atol=1e-10) if dtype == np.float64 else dict(rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(auto[0], causal_op_reference(t, mask), **tol)
    for g, s in zip(auto[1], slow[1]):
        assert np.all(np.isfinite(g))
        np.testing.assert_allclose(g, s, **tol)


def test_causal_fallback_matches_reference_gradients(monkeypatch):
    """The layer on inputs whose logits jump by hundreds: outputs and gradients of the
    (per-position) fallback against the dense reference and its finite differences."""
    taken = []
    dispatcher = elastic_ops._causal_dispatcher

    def recording(*args, **kwargs):
        out, ok = dispatcher(*args, with_flag=True, **kwargs)
        taken.append(bool(ok))
        return out

    monkeypatch.setattr(elastic_ops, "_causal_dispatcher", recording)
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
    assert taken == [False]
    w = weights_of(layer)
    ref_out, _ = reference(w, x, mask, True)
    np.testing.assert_allclose(out.numpy(), ref_out, rtol=1e-10, atol=1e-10)
    assert np.all(np.isfinite(g_x.numpy())) and np.all(np.isfinite(g_k1.numpy()))

    def ref_loss(w_, x_):
        return np.sum(reference(w_, x_, mask, True)[0] * r_out)

    np.testing.assert_allclose(
        g_x.numpy(), _numeric_gradient(lambda a: ref_loss(w, a), x, 1e-6), rtol=1e-6, atol=1e-6
    )
    np.testing.assert_allclose(
        g_k1.numpy(),
        _numeric_gradient(lambda a: ref_loss({**w, "key_1_kernel": a}, x), w["key_1_kernel"], 1e-6),
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


def test_causal_xla_with_dynamic_shapes_compiles_once():
    """Under XLA with unknown batch and length (a Keras train step) the switch between
    the two paths must neither fail to compile nor specialise on the input values."""
    rng = np.random.default_rng(34)
    spec = [tf.TensorSpec([None, 2, None, 3], tf.float32)] * 2 + [
        tf.TensorSpec([None, 2, K, 3], tf.float32)] * 3 + [
        tf.TensorSpec([None, 2, None, 2, 3], tf.float32)] * 2
    traces = []

    @tf.function(jit_compile=True, input_signature=[
        spec, tf.TensorSpec([None, None]), tf.TensorSpec([None, 2, None, 3])])
    def fn(tensors, m, r):
        traces.append(1)
        with tf.GradientTape() as tape:
            tape.watch(tensors)
            out = elastic_ops._causal_dispatcher(*tensors, m, 4)
            loss = tf.reduce_sum(out * r)
        return out, tape.gradient(loss, tensors)

    for jump in (False, True, False):
        t, mask = causal_op_inputs(rng, n=10, k=K, dk=3, dv=3, dtype=np.float32)
        if jump:
            t["key"][0, 1, 2] *= 300.0
        tensors = [tf.constant(t[name]) for name in _OP_ARGS]
        m = tf.constant(mask.astype(np.float32))
        r = tf.constant(np.random.default_rng(99).normal(size=[3, 2, 10, 3]), tf.float32)
        out, grads = fn(tensors, m, r)  # same loss as causal_op_run
        expected = causal_op_run(t, mask, 4, "per_position")
        np.testing.assert_allclose(out.numpy(), expected[0], rtol=1e-4, atol=1e-4)
        for g, e in zip(grads, expected[1]):
            assert np.all(np.isfinite(g.numpy()))
            # (float32 with logits in the hundreds: XLA's rounding differs a little.)
            np.testing.assert_allclose(g.numpy(), e, rtol=1e-3, atol=1e-3 * np.abs(e).max())
        hlo = fn.experimental_get_compiler_ir(tensors, m, r)(stage="hlo")
        entry = hlo[hlo.index("ENTRY"):].split("\n")[0]
        assert "arg0" in entry  # the inputs are runtime parameters, not constants
    assert len(traces) == 1


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
    with pytest.raises(ValueError, match="top_m"):
        InterestMemory(2, num_keys=4, top_m=5)


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


def test_mixed_precision_lda(restore_policy):
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


# --------------------------------------------------------------------------- memory
def make_memory(seed=0, **kw):
    tf.keras.utils.set_random_seed(seed)
    kw.setdefault("num_keys", 8)
    kw.setdefault("top_m", 4)
    kw.setdefault("query_dim", 6)
    memory = InterestMemory(num_interests=K, **kw)
    memory.build([None, None, DIM])
    return memory


def test_memory_selects_true_top_m_and_matches_reference():
    rng = np.random.default_rng(13)
    memory = make_memory(13)
    x = rng.normal(size=[3, 7, DIM]).astype(np.float32)
    mask = random_mask(rng, 3, 7)
    scores, indices = memory.lookup(tf.constant(x), tf.constant(mask))
    out = memory(tf.constant(x), mask=tf.constant(mask)).numpy()
    # Independent brute force over all n² slots.
    xm = x.astype(np.float64) * mask[..., None]
    mean = xm.sum(1) / mask.sum(1, keepdims=True)
    q = mean @ memory.query_kernel.numpy() + memory.query_bias.numpy()
    q = q.reshape(3, K, 6)
    k1, k2 = memory.sub_keys_1.numpy(), memory.sub_keys_2.numpy()
    full = (q[..., :3] @ k1.T)[..., :, None] + (q[..., 3:] @ k2.T)[..., None, :]
    full = full.reshape(3, K, 64)  # slot index i1 * 8 + i2
    best = np.argsort(-full, axis=-1)[..., :4]
    np.testing.assert_array_equal(indices.numpy(), best)
    np.testing.assert_allclose(
        scores.numpy(), np.take_along_axis(full, best, -1), rtol=1e-5, atol=1e-5
    )
    top = np.take_along_axis(full, best, -1)
    wts = np.exp(top - top.max(-1, keepdims=True))
    wts /= wts.sum(-1, keepdims=True)
    rows = memory.memory.numpy()[best]  # [B, k, m, dim]
    expected = memory.base_tokens.numpy()[None] + np.einsum("bkm,bkmd->bkd", wts, rows)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_product_key_lookup_brute_force_leading_dims():
    rng = np.random.default_rng(14)
    q = rng.normal(size=[2, 3, 4, 8])
    k1, k2 = rng.normal(size=[5, 4]), rng.normal(size=[5, 4])
    scores, idx = elastic_ops.product_key_lookup(q, k1, k2, 3)
    full = (q[..., :4] @ k1.T)[..., :, None] + (q[..., 4:] @ k2.T)[..., None, :]
    full = full.reshape(2, 3, 4, 25)
    best = np.argsort(-full, axis=-1)[..., :3]
    assert idx.dtype == tf.int32 and scores.dtype == tf.float64
    np.testing.assert_array_equal(idx.numpy(), best)
    np.testing.assert_allclose(scores.numpy(), np.take_along_axis(full, best, -1), rtol=1e-12)
    with pytest.raises(ValueError, match="twice the sub-key width"):
        elastic_ops.product_key_lookup(q[..., :6], k1, k2, 3)


def test_memory_gradient_reaches_selected_rows_only():
    rng = np.random.default_rng(15)
    memory = make_memory(15)
    x = tf.constant(rng.normal(size=[2, 5, DIM]), tf.float32)
    _, indices = memory.lookup(x)
    with tf.GradientTape() as tape:
        out = memory(x)
        loss = tf.reduce_sum(out * tf.constant(rng.normal(size=[2, K, DIM]), tf.float32))
    grad = tape.gradient(loss, memory.memory)
    assert isinstance(grad, tf.IndexedSlices)
    dense = tf.convert_to_tensor(grad).numpy()
    touched = set(np.nonzero(np.abs(dense).sum(-1))[0].tolist())
    assert touched == set(indices.numpy().ravel().tolist())
    assert len(touched) < 64


def test_memory_all_padding_is_finite():
    memory = make_memory(16)
    x = tf.random.normal([2, 4, DIM])
    with tf.GradientTape() as tape:
        tape.watch(x)
        out = memory(x, mask=tf.zeros([2, 4], tf.bool))
        loss = tf.reduce_sum(out ** 2)
    grads = tape.gradient(loss, [x] + memory.trainable_variables)
    assert np.all(np.isfinite(out.numpy()))
    for g in grads:
        assert np.all(np.isfinite(tf.convert_to_tensor(g).numpy()))


def test_memory_xla_equals_graph_mode():
    memory = make_memory(17)
    x = tf.random.normal([2, 6, DIM])
    mask = tf.constant(random_mask(np.random.default_rng(17), 2, 6))
    graph = tf.function(lambda x, m: memory(x, mask=m))(x, mask)
    xla = tf.function(lambda x, m: memory(x, mask=m), jit_compile=True)(x, mask)
    np.testing.assert_allclose(xla.numpy(), graph.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_memory_mixed_precision(policy, restore_policy):
    tf.keras.mixed_precision.set_global_policy(policy)
    memory = InterestMemory(num_interests=K, num_keys=8, top_m=4, query_dim=6)
    x = tf.random.normal([2, 5, DIM])
    with tf.GradientTape() as tape:
        out = memory(x)
        loss = tf.reduce_sum(tf.cast(out, tf.float32))
    assert out.shape == (2, K, DIM)
    assert out.dtype == tf.as_dtype(policy.split("_")[1])
    assert memory.memory.dtype == tf.float32
    grad = tape.gradient(loss, memory.memory)
    assert isinstance(grad, tf.IndexedSlices)
    assert np.all(np.isfinite(tf.convert_to_tensor(grad).numpy()))


# --------------------------------------------------------------------------- serialization
def test_config_round_trip():
    layer = LinearDispatcherAttention(
        num_heads=2, key_dim=3, num_interests=5, value_dim=4, causal=True, dropout=0.1,
        use_bias=False, chunk_size=7, kernel_regularizer="l2",
    )
    clone = LinearDispatcherAttention.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    memory = InterestMemory(num_interests=5, num_keys=6, top_m=2, query_dim=4)
    clone = InterestMemory.from_config(memory.get_config())
    assert clone.get_config() == memory.get_config()


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


@pytest.mark.parametrize("causal", [False, True])
def test_model_save_and_reload(causal):
    model = _model(causal)
    ids = np.array([[0, 0, 3, 4, 5, 9], [6, 7, 8, 0, 0, 0]], np.int32)
    expected = model(ids)
    with tempfile.TemporaryDirectory() as tmp:
        for path in (os.path.join(tmp, "saved"), os.path.join(tmp, "model.keras")):
            model.save(path)
            loaded = tf.keras.models.load_model(path)
            for a, b in zip(loaded(ids), expected):
                np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------------- block
@pytest.mark.parametrize("causal", [False, True])
def test_transformer_block_elastic(causal):
    tf.keras.utils.set_random_seed(19)
    x = tf.random.normal([2, 6, 8])
    mask = tf.constant(random_mask(np.random.default_rng(19), 2, 6))
    block_1 = TransformerBlock(num_heads=2, attention="elastic", causal=causal, num_interests=4)
    block_2 = TransformerBlock(num_heads=2, attention="elastic", causal=causal, num_interests=4)
    y, p = block_1(x, mask=mask, return_interests=True)
    assert y.shape == (2, 6, 8) and p.shape == (2, 4, 8)
    assert np.all(y.numpy()[~mask.numpy()] == 0.0)
    if causal:
        z = block_2(y, mask=mask)
        assert z.shape == (2, 6, 8)
        with pytest.raises(ValueError, match="interests"):
            block_2(y, mask=mask, interests=p)
    else:
        z, p2 = block_2(y, mask=mask, interests=p, return_interests=True)
        z_default = block_2(y, mask=mask)
        assert p2.shape == (2, 4, 8)
        assert not np.allclose(z.numpy(), z_default.numpy())  # the hand-off is used


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
        p = np.asarray(slopes, np.float64) / elastic_layers._MAX_SLOPE
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
    ref_out, ref_p = reference(weights_of(layer), x, mask, causal, slopes=slopes)
    np.testing.assert_allclose(out, ref_out, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(p, ref_p, rtol=1e-10, atol=1e-10)
    # ... and the decay matters: without it the outputs differ.
    plain, _ = reference(weights_of(layer), x, mask, causal)
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
    g_slopes = _numeric_gradient(
        lambda s_: float(np.sum(reference(w, x, mask, True, slopes=s_)[0] * r)), slopes)
    sig = slopes / elastic_layers._MAX_SLOPE  # d slope / d raw = max · sig · (1 - sig)
    np.testing.assert_allclose(
        g_raw, g_slopes * elastic_layers._MAX_SLOPE * sig * (1 - sig), rtol=1e-6, atol=1e-8)
    assert np.max(np.abs(g_raw)) > 1e-4


@pytest.mark.parametrize("chunk", [1, 4, 8])
def test_recency_bias_fast_path_equals_per_position_path(chunk):
    rng = np.random.default_rng(44 + chunk)
    t, mask = causal_op_inputs(rng)
    _, h, k, _ = t["interest_query"].shape
    n = t["key"].shape[2]
    bias = rng.uniform(0.0, 0.6, size=[1, h, k, 1]) * (np.arange(n) - (n - 1))
    fast = causal_op_run(t, mask, chunk, "fast", bias=bias)
    slow = causal_op_run(t, mask, chunk, "per_position", bias=bias)
    auto = causal_op_run(t, mask, chunk, "auto", bias=bias)
    assert fast[2] and auto[2]
    for a, b in ((fast, slow), (auto, slow)):
        np.testing.assert_allclose(a[0], b[0], rtol=1e-9, atol=1e-9)
        for ga, gb in zip(a[1], b[1]):
            np.testing.assert_allclose(ga, gb, rtol=1e-8, atol=1e-9)
    # The bias's own gradient (the last) is not 0, and the fallback's agrees with it.
    assert np.max(np.abs(slow[1][-1])) > 1e-4


def test_recency_bias_steep_slopes_take_the_fallback_exactly():
    """A bias rising by > 60 inside a chunk sends the call to the per-position form,
    whose values and gradients (bias included) equal the forced per-position path."""
    rng = np.random.default_rng(47)
    t, mask = causal_op_inputs(rng)
    _, h, k, _ = t["interest_query"].shape
    n = t["key"].shape[2]
    bias = np.full([1, h, k, 1], 40.0) * (np.arange(n) - (n - 1))
    auto = causal_op_run(t, mask, 4, "auto", bias=bias)
    slow = causal_op_run(t, mask, 4, "per_position", bias=bias)
    assert not auto[2]
    np.testing.assert_allclose(auto[0], slow[0], rtol=1e-9, atol=1e-9)
    for ga, gb in zip(auto[1], slow[1]):
        assert np.all(np.isfinite(ga))
        np.testing.assert_allclose(ga, gb, rtol=1e-8, atol=1e-9)


@pytest.mark.parametrize("causal", [False, True])
def test_recency_bias_last_only_and_xla_mixed_precision(causal, restore_policy):
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
