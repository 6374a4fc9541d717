"""The non-causal dispatcher ops (:mod:`tfrs_linear.ops.dispatcher`): aggregate, dispatch,
the fused form and the masked softmax, against the float64 NumPy oracles of
:mod:`tests.oracles` (explicit softmax matrices)."""

import numpy as np
import pytest
import tensorflow as tf

from tests.oracles import (
    dispatcher_op_inputs,
    dispatcher_op_reference,
    random_mask,
    softmax_rows,
)
from tfrs_linear import ops

K = 3


def test_fused_non_causal_equals_causal_at_the_last_position():
    # The fused op: non-causal means over everything == causal at the last position.
    rng = np.random.default_rng(8)
    rng.normal(size=[2, 13, 6])  # (the draws of the layer half of this check, kept)
    mask = random_mask(rng, 2, 13)
    mask[:, -1] = True
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
    causal = ops.dispatcher_attention(**t, mask=mask, causal=True, chunk_size=5)
    full = ops.dispatcher_attention(**t, mask=mask, causal=False)
    np.testing.assert_allclose(causal[:, :, -1], full[:, :, -1], rtol=1e-10, atol=1e-10)
    assert not np.allclose(causal[:, :, -3], full[:, :, -3])


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-10), (np.float32, 1e-5)])
def test_fused_non_causal_matches_dense_oracle(dtype, tol):
    rng = np.random.default_rng(50)
    t, mask = dispatcher_op_inputs(rng, n=9, dtype=dtype)
    bias = rng.uniform(0.0, 0.5, size=[1, 2, 4, 1]) * (np.arange(9) - 8)
    out = ops.dispatcher_attention(**t, mask=mask, aggregate_bias=bias)
    assert out.dtype == tf.as_dtype(dtype)
    want = dispatcher_op_reference(t, mask, causal=False, bias=bias)
    np.testing.assert_allclose(out.numpy(), want, rtol=tol, atol=tol)


def test_aggregate_and_dispatch_match_explicit_softmaxes():
    rng = np.random.default_rng(51)
    q = rng.normal(size=[2, 2, K, 4])
    keys = rng.normal(size=[2, 2, 7, 4])
    values = rng.normal(size=[2, 2, 7, 5])
    mask = random_mask(rng, 2, 7)
    mask[0] = False  # all padding: the aggregate is exactly 0
    agg = ops.dispatcher_aggregate(q, keys, values, mask).numpy()
    a = softmax_rows(np.einsum("bhid,bhnd->bhin", q, keys) / 2.0,
                     np.broadcast_to(mask[:, None, None, :], [2, 2, K, 7]))
    np.testing.assert_allclose(agg, np.einsum("bhin,bhnv->bhiv", a, values), atol=1e-12)
    assert np.all(agg[0] == 0.0)
    out = ops.dispatcher_dispatch(keys, q, agg, mask).numpy()
    p = softmax_rows(np.einsum("bhnd,bhid->bhni", keys, q) / 2.0, np.ones([2, 2, 7, K], bool))
    want = np.einsum("bhni,bhiv->bhnv", p, agg) * mask[:, None, :, None]
    np.testing.assert_allclose(out, want, atol=1e-12)


def test_masked_softmax_all_masked_rows_are_zero_with_finite_gradients():
    logits = tf.constant([[3.0, -1.0, 2.0], [1e4, -1e4, 0.0]])
    mask = tf.constant([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    with tf.GradientTape() as tape:
        tape.watch(logits)
        w = ops.masked_softmax_weights(logits, mask)
        loss = tf.reduce_sum(w * tf.constant([[1.0, 2.0, 3.0]]))
    grad = tape.gradient(loss, logits).numpy()
    e = np.exp([3.0, 2.0] - np.float64(3.0))
    np.testing.assert_allclose(w.numpy()[0], [e[0] / e.sum(), 0.0, e[1] / e.sum()], rtol=1e-6)
    assert np.all(w.numpy()[1] == 0.0) and np.all(np.isfinite(grad))


def test_fused_op_names_the_wrong_layout():
    t, mask = dispatcher_op_inputs(np.random.default_rng(52), n=5)
    layout = r"`interest_key` must be shaped \[batch, heads, k, key_dim\]"
    with pytest.raises(ValueError, match=layout):
        ops.dispatcher_attention(**{**t, "interest_key": t["interest_key"][0]}, mask=mask)
    with pytest.raises(ValueError, match="lengths differ"):
        ops.dispatcher_attention(**{**t, "key": t["key"][:, :, :4]}, mask=mask)
    with pytest.raises(ValueError, match="chunk_size must be >= 1"):
        ops.dispatcher_attention(**t, mask=mask, causal=True, chunk_size=0)
