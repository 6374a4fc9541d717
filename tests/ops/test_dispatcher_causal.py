"""The causal dispatcher (:mod:`tfrs_linear.ops.dispatcher_causal`, reached through
``dispatcher_attention(causal=True, causal_path=...)``): the fast path, the exact
per-position fallback and the "auto" switch between them, against each other and against
the dense float64 NumPy oracle of :mod:`tests.oracles` (explicit prefix softmaxes)."""

import numpy as np
import pytest
import tensorflow as tf

from tests.oracles import DISPATCHER_ARGS, dispatcher_op_inputs, dispatcher_op_reference
from tfrs_linear import ops

K = 3


def op_tensors(t, names, mask, bias=None, seed=99):
    """``(tensors, r, m)`` of a dispatcher op test: ``t[name]`` for ``names`` (then
    ``bias`` when given) as constants of the first one's dtype, a random projection ``r``
    of the ``[B, G, N, d_v]`` output and the mask in that dtype."""
    tensors = [tf.constant(t[name]) for name in names]
    dtype = tensors[0].dtype
    if bias is not None:
        tensors.append(tf.constant(np.asarray(bias), dtype))
    r = tf.constant(np.random.default_rng(seed).normal(
        size=t["query"].shape[:3] + t["interest_value"].shape[-1:]), dtype)
    return tensors, r, tf.constant(np.asarray(mask, np.float64), dtype)


def causal_op_run(t, mask, chunk, path, jit=False, bias=None):
    """Output, gradients (of a random projection of the output) and the fast-path flag.

    ``path`` is the public ``causal_path``; the flag is :func:`ops.causal_fast_path_ok`
    on the same inputs (what ``"auto"`` switches on). With ``bias`` (the aggregate
    logits' additive bias) its gradient comes last.
    """
    tensors, r, m = op_tensors(t, DISPATCHER_ARGS, mask, bias)

    def fn(tensors):
        bias_t = tensors[7] if len(tensors) > 7 else None
        with tf.GradientTape() as tape:
            tape.watch(tensors)
            out = ops.dispatcher_attention(
                *tensors[:7], mask=m, causal=True, chunk_size=chunk, aggregate_bias=bias_t,
                causal_path=path)
            loss = tf.reduce_sum(out * r)
        ok = ops.causal_fast_path_ok(tensors[2], tensors[1], mask=m, chunk_size=chunk,
                                     aggregate_bias=bias_t)
        return out, tape.gradient(loss, tensors), ok

    if jit:
        fn = tf.function(fn, jit_compile=True)
    out, grads, ok = fn(tensors)
    return out.numpy(), [g.numpy() for g in grads], bool(ok)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("chunk", [1, 3, 4, 8, 32])
def test_causal_fast_path_equals_per_position_path(dtype, chunk):
    rng = np.random.default_rng(20 + chunk)
    t, mask = dispatcher_op_inputs(rng, dtype=dtype)
    t["key"] *= 3.0  # logits up to ~10: several orders of magnitude between weights
    fast = causal_op_run(t, mask, chunk, "fast")
    slow = causal_op_run(t, mask, chunk, "exact")
    auto = causal_op_run(t, mask, chunk, "auto")
    assert fast[2] and auto[2]  # moderate logits: the fast path is the one taken
    tol = dict(rtol=1e-10, atol=1e-10) if dtype == np.float64 else dict(rtol=1e-5, atol=1e-5)
    for got in (fast, auto):
        np.testing.assert_allclose(got[0], slow[0], **tol)
        for g, s in zip(got[1], slow[1]):
            np.testing.assert_allclose(g, s, **tol)
    np.testing.assert_allclose(fast[0], dispatcher_op_reference(t, mask), **tol)
    assert np.all(fast[0][:, :, ~mask[0]][0] == 0.0)


def test_causal_fast_path_handles_big_but_safe_logit_ranges():
    # A running maximum that rises by up to ~50 inside a chunk (below the fallback's 60):
    # weights spanning e^-50 must still be exact (column factors up to e^25).
    rng = np.random.default_rng(30)
    t, mask = dispatcher_op_inputs(rng, n=16, k=2, dk=2)
    mask[:] = True
    t["interest_query"][:] = 1.0
    ramp = np.linspace(-25.0, 25.0, 16) * np.sqrt(2.0) / 2.0
    t["key"][:] = ramp[None, None, :, None]
    fast = causal_op_run(t, mask, 16, "fast")
    slow = causal_op_run(t, mask, 16, "exact")
    auto = causal_op_run(t, mask, 16, "auto")
    assert auto[2]
    np.testing.assert_allclose(auto[0], dispatcher_op_reference(t, mask), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(fast[0], slow[0], rtol=1e-10, atol=1e-10)
    for g, s in zip(auto[1], slow[1]):
        np.testing.assert_allclose(g, s, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_causal_logit_jump_takes_exact_fallback(dtype, jit):
    rng = np.random.default_rng(31)
    t, mask = dispatcher_op_inputs(rng, n=13, dtype=dtype)
    mask[:] = True
    # Interest 0 of head 0 in row 1: logits O(1), then `jump` and `jump + 3` inside one
    # chunk. (In float32 a jump of 150 makes the unguarded fast path overflow.)
    jump = 200.0 if dtype == np.float64 else 150.0
    direction = t["interest_query"][1, 0, 0] / np.sum(t["interest_query"][1, 0, 0] ** 2)
    t["key"][1, 0, 6] = jump * np.sqrt(3.0) * direction
    t["key"][1, 0, 7] = (jump + 3.0) * np.sqrt(3.0) * direction
    auto = causal_op_run(t, mask, 4, "auto", jit=jit)
    fast = causal_op_run(t, mask, 4, "fast")
    slow = causal_op_run(t, mask, 4, "exact")
    assert not auto[2]  # the fallback was taken ...
    assert not np.allclose(fast[0], slow[0])  # ... and was needed
    tol = dict(rtol=1e-10, atol=1e-10) if dtype == np.float64 else dict(rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(auto[0], dispatcher_op_reference(t, mask), **tol)
    for g, s in zip(auto[1], slow[1]):
        assert np.all(np.isfinite(g))
        np.testing.assert_allclose(g, s, **tol)


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
            out = ops.dispatcher_attention(*tensors, mask=m, causal=True, chunk_size=4)
            loss = tf.reduce_sum(out * r)
        return out, tape.gradient(loss, tensors)

    for jump in (False, True, False):
        t, mask = dispatcher_op_inputs(rng, n=10, k=K, dk=3, dv=3, dtype=np.float32)
        if jump:
            t["key"][0, 1, 2] *= 300.0
        tensors = [tf.constant(t[name]) for name in DISPATCHER_ARGS]
        m = tf.constant(mask.astype(np.float32))
        r = tf.constant(np.random.default_rng(99).normal(size=[3, 2, 10, 3]), tf.float32)
        out, grads = fn(tensors, m, r)  # same loss as causal_op_run
        expected = causal_op_run(t, mask, 4, "exact")
        np.testing.assert_allclose(out.numpy(), expected[0], rtol=1e-4, atol=1e-4)
        for g, e in zip(grads, expected[1]):
            assert np.all(np.isfinite(g.numpy()))
            # (float32 with logits in the hundreds: XLA's rounding differs a little.)
            np.testing.assert_allclose(g.numpy(), e, rtol=1e-3, atol=1e-3 * np.abs(e).max())
        hlo = fn.experimental_get_compiler_ir(tensors, m, r)(stage="hlo")
        entry = hlo[hlo.index("ENTRY"):].split("\n")[0]
        assert "arg0" in entry  # the inputs are runtime parameters, not constants
    assert len(traces) == 1


@pytest.mark.parametrize("chunk", [1, 4, 8])
def test_recency_bias_fast_path_equals_per_position_path(chunk):
    rng = np.random.default_rng(44 + chunk)
    t, mask = dispatcher_op_inputs(rng)
    _, h, k, _ = t["interest_query"].shape
    n = t["key"].shape[2]
    bias = rng.uniform(0.0, 0.6, size=[1, h, k, 1]) * (np.arange(n) - (n - 1))
    fast = causal_op_run(t, mask, chunk, "fast", bias=bias)
    slow = causal_op_run(t, mask, chunk, "exact", bias=bias)
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
    t, mask = dispatcher_op_inputs(rng)
    _, h, k, _ = t["interest_query"].shape
    n = t["key"].shape[2]
    bias = np.full([1, h, k, 1], 40.0) * (np.arange(n) - (n - 1))
    auto = causal_op_run(t, mask, 4, "auto", bias=bias)
    slow = causal_op_run(t, mask, 4, "exact", bias=bias)
    assert not auto[2]
    np.testing.assert_allclose(auto[0], slow[0], rtol=1e-9, atol=1e-9)
    for ga, gb in zip(auto[1], slow[1]):
        assert np.all(np.isfinite(ga))
        np.testing.assert_allclose(ga, gb, rtol=1e-8, atol=1e-9)


def test_causal_path_is_checked_and_ignored_non_causally():
    t, mask = dispatcher_op_inputs(np.random.default_rng(48), n=6)
    assert ops.CAUSAL_PATHS == ("auto", "fast", "exact")
    with pytest.raises(ValueError, match=r"causal_path must be one of \('auto', 'fast', 'exact'\)"):
        ops.dispatcher_attention(**t, mask=mask, causal=True, causal_path="per_position")
    full = [ops.dispatcher_attention(**t, mask=mask, causal_path=p).numpy()
            for p in ops.CAUSAL_PATHS]
    for other in full[1:]:
        np.testing.assert_array_equal(other, full[0])
