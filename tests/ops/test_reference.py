"""The dense O(N²) references (:mod:`tfrs_linear.ops.reference`) against the independent
float64 NumPy oracles of :mod:`tests.oracles`, and against the efficient ops they mirror."""

import numpy as np
import pytest
import tensorflow as tf

from tests.oracles import (
    DISPATCHER_ARGS,
    dense_attention,
    dense_matrix,
    dispatcher_op_inputs,
    dispatcher_op_reference,
    qkv,
    random_padding_mask,
    softmax_rows,
)
from tfrs_linear import ops

CASES = [(norm, causal) for norm in ("paper", "token") for causal in (False, True)]


# --------------------------------------------------------------------------- LinRec
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


@pytest.mark.parametrize("normalization,causal", CASES)
def test_linrec_reference_equals_oracle_and_the_chunked_op(normalization, causal):
    rng = np.random.default_rng(40)
    q, k, v = qkv(rng, n=9)
    mask = random_padding_mask(rng, 3, 9)
    dense = ops.linrec_attention_reference(q, k, v, mask=mask, causal=causal,
                                           normalization=normalization)
    want = dense_attention(q, k, v, mask, causal, normalization)
    np.testing.assert_allclose(dense.numpy(), want, atol=1e-10)
    chunked = ops.linrec_attention(q, k, v, mask=mask, causal=causal,
                                   normalization=normalization, chunk_size=4)
    np.testing.assert_allclose(dense.numpy(), chunked.numpy(), atol=1e-10)
    assert np.all(dense.numpy()[~np.broadcast_to(mask[:, None, :], dense.shape[:3])] == 0)


def test_linrec_reference_keeps_the_input_dtype():
    rng = np.random.default_rng(41)
    q, k, v = (tf.cast(x, tf.float16) for x in qkv(rng, n=6, dtype=np.float32))
    out = ops.linrec_attention_reference(q, k, v, causal=True)
    assert out.dtype == tf.float16
    want = ops.linrec_attention(*(tf.cast(x, tf.float32) for x in (q, k, v)), causal=True)
    np.testing.assert_allclose(out.numpy().astype(np.float32), want.numpy(), atol=2e-3)


# --------------------------------------------------------------------------- dispatcher
@pytest.mark.parametrize("causal", [False, True])
def test_dispatcher_aggregate_weights_equal_explicit_softmaxes(causal):
    rng = np.random.default_rng(42)
    t, mask = dispatcher_op_inputs(rng, n=9)
    bias = rng.uniform(0.0, 0.5, size=[1, 2, 4, 1]) * (np.arange(9) - 8)
    got = ops.dispatcher_aggregate_weights(t["interest_query"], t["key"], mask=mask,
                                           causal=causal, aggregate_bias=bias).numpy()
    logits = np.einsum("bhid,bhnd->bhin", t["interest_query"], t["key"]) / np.sqrt(3) + bias
    pairs = np.tril(np.ones([9, 9], bool)) if causal else np.ones([9, 9], bool)
    valid = pairs[None] & mask[:, None, :]  # [b, t, s]
    want = softmax_rows(np.broadcast_to(logits[:, :, :, None, :], got.shape).copy(),
                        np.broadcast_to(valid[:, None, None], got.shape))
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    assert np.all(got[0, ..., :3] == 0.0)  # padded positions get no weight
    if causal:
        assert np.all(got[0, :, :, :3] == 0.0)  # rows with no real item in their prefix
    else:
        np.testing.assert_array_equal(got[:, :, :, 0], got[:, :, :, -1])


@pytest.mark.parametrize("causal", [False, True])
def test_dispatcher_reference_equals_oracle_and_the_fused_op(causal):
    rng = np.random.default_rng(43)
    t, mask = dispatcher_op_inputs(rng, n=11)
    bias = rng.uniform(0.0, 0.5, size=[1, 2, 4, 1]) * (np.arange(11) - 10)
    dense = ops.dispatcher_attention_reference(**t, mask=mask, causal=causal,
                                               aggregate_bias=bias).numpy()
    np.testing.assert_allclose(dense, dispatcher_op_reference(t, mask, causal, bias),
                               rtol=1e-10, atol=1e-10)
    fused = ops.dispatcher_attention(**t, mask=mask, causal=causal, chunk_size=4,
                                     aggregate_bias=bias).numpy()
    np.testing.assert_allclose(dense, fused, rtol=1e-10, atol=1e-10)
    assert np.all(dense[:, :, ~mask[0]][0] == 0.0)


def test_dispatcher_reference_checks_layouts():
    t, _ = dispatcher_op_inputs(np.random.default_rng(44), n=5)
    t["value_key"] = t["value_key"][..., 0, :]
    with pytest.raises(ValueError, match=r"value_key.*\[batch, heads, length, heads, key_dim\]"):
        ops.dispatcher_attention_reference(*(t[name] for name in DISPATCHER_ARGS))
