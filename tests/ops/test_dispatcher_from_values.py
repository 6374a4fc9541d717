"""``ops.dispatcher_attention_from_values``: the dispatcher with its value contributions
given as ``values`` and per-head folds (the layer's form; the causal fast path never forms
the folded values). Against the dense float64 NumPy oracle of :mod:`tests.oracles` and,
for the gradients, against ``dispatcher_attention`` on the folded values."""

import numpy as np
import pytest
import tensorflow as tf

from tests.ops.test_dispatcher_causal import op_tensors
from tests.oracles import DISPATCHER_ARGS, dispatcher_op_inputs, dispatcher_op_reference
from tfrs_linear import ops

D_VAL = 4  # the values' width: neither d_k (3) nor d_v (5), so no axis can be mistaken


def inputs(seed, n=23, dtype=np.float64):
    """Dispatcher inputs whose value_key/value_value are folds of random values."""
    rng = np.random.default_rng(seed)
    t, mask = dispatcher_op_inputs(rng, n=n, dtype=dtype)
    batch, heads = t["key"].shape[:2]
    t["values"] = rng.normal(size=[batch, heads, n, D_VAL]).astype(dtype)
    t["fold_key"] = (0.7 * rng.normal(size=[heads, D_VAL, heads, 3])).astype(dtype)
    t["fold_value"] = (0.7 * rng.normal(size=[heads, D_VAL, heads, 5])).astype(dtype)
    t["value_key"] = np.einsum("bhnv,hvge->bhnge", t["values"], t["fold_key"])
    t["value_value"] = np.einsum("bhnv,hvge->bhnge", t["values"], t["fold_value"])
    return t, mask


FACTORED = DISPATCHER_ARGS[:5] + ("values", "fold_key", "fold_value")


def run(t, mask, chunk, path, factored=True, jit=False, bias=None, causal=True):
    """Output and the gradients, with respect to the factored inputs (and ``bias``), of a
    random projection of the output; ``factored=False`` runs ``dispatcher_attention`` on
    the folds of the same tensors (``ops.fold_values``)."""
    tensors, r, m = op_tensors(t, FACTORED, mask, bias, seed=7)

    def fn(tensors):
        bias_t = tensors[8] if len(tensors) > 8 else None
        kwargs = dict(mask=m, causal=causal, chunk_size=chunk, aggregate_bias=bias_t,
                      causal_path=path)
        with tf.GradientTape() as tape:
            tape.watch(tensors)
            if factored:
                out = ops.dispatcher_attention_from_values(*tensors[:8], **kwargs)
            else:
                out = ops.dispatcher_attention(
                    *tensors[:5], *ops.fold_values(*tensors[5:8]), **kwargs)
            loss = tf.reduce_sum(out * r)
        return out, tape.gradient(loss, tensors)

    if jit:
        fn = tf.function(fn, jit_compile=True)
    out, grads = fn(tensors)
    return out.numpy(), [g.numpy() for g in grads]


def assert_same(got, expected, tol):
    np.testing.assert_allclose(got[0], expected[0], **tol)
    for g, e in zip(got[1], expected[1]):
        assert np.all(np.isfinite(g))
        np.testing.assert_allclose(g, e, **tol)


TOL64 = dict(rtol=1e-10, atol=1e-10)
TOL32 = dict(rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("path", ["auto", "fast", "exact"])
@pytest.mark.parametrize("chunk", [1, 4, 32])
def test_equals_the_dense_reference_and_the_folded_op(path, chunk):
    t, mask = inputs(40 + chunk)
    t["key"] *= 3.0  # logits up to ~10: the fast path's range, several orders of weights
    got = run(t, mask, chunk, path)
    np.testing.assert_allclose(got[0], dispatcher_op_reference(t, mask), **TOL64)
    assert_same(got, run(t, mask, chunk, "exact", factored=False), TOL64)


@pytest.mark.parametrize("jit", [False, True])
def test_float32_under_xla(jit):
    t, mask = inputs(50, dtype=np.float32)
    got = run(t, mask, 8, "auto", jit=jit)
    np.testing.assert_allclose(got[0], dispatcher_op_reference(t, mask), **TOL32)
    assert_same(got, run(t, mask, 8, "auto", factored=False, jit=jit), TOL32)


@pytest.mark.parametrize("jit", [False, True])
def test_a_logit_jump_takes_the_exact_fallback(jit):
    t, mask = inputs(51, n=13)
    mask[:] = True
    direction = t["interest_query"][1, 0, 0] / np.sum(t["interest_query"][1, 0, 0] ** 2)
    t["key"][1, 0, 6] = 200.0 * np.sqrt(3.0) * direction
    t["key"][1, 0, 7] = 203.0 * np.sqrt(3.0) * direction
    assert not ops.causal_fast_path_ok(t["interest_query"], t["key"], mask=mask, chunk_size=4)
    got = run(t, mask, 4, "auto", jit=jit)
    assert not np.allclose(run(t, mask, 4, "fast")[0], got[0])  # the fallback was needed
    np.testing.assert_allclose(got[0], dispatcher_op_reference(t, mask), **TOL64)
    # The folds' gradients come from the fallback's rows (tiled folds, summed back).
    assert_same(got, run(t, mask, 4, "exact", factored=False), TOL64)


def test_recency_bias_and_its_gradient():
    t, mask = inputs(52)
    bias = np.random.default_rng(3).uniform(0.0, 0.3, size=[1, 2, 4, 1]) * np.arange(23)
    got = run(t, mask, 4, "auto", bias=bias)
    np.testing.assert_allclose(got[0], dispatcher_op_reference(t, mask, bias=bias), **TOL64)
    assert_same(got, run(t, mask, 4, "exact", factored=False, bias=bias), TOL64)


def test_non_causal():
    t, mask = inputs(53)
    got = run(t, mask, 4, "auto", causal=False)
    np.testing.assert_allclose(got[0], dispatcher_op_reference(t, mask, causal=False), **TOL64)
    assert_same(got, run(t, mask, 4, "auto", factored=False, causal=False), TOL64)


@pytest.mark.parametrize("name, shape, message", [
    ("values", [3, 2, 23], "`values` must be shaped"),
    ("fold_key", [3, D_VAL, 2, 3], "aggregate heads differ: `fold_key`"),
    ("fold_value", [2, D_VAL + 1, 2, 5], "value widths differ: `fold_value`"),
    ("fold_key", [2, D_VAL, 2, 4], "key widths differ: `fold_key`"),
    ("fold_value", [2, D_VAL, 2, 6], "value widths differ: `fold_value`"),
    ("fold_value", [2, D_VAL, 3, 5], "dispatch heads differ"),
])
def test_bad_shapes_are_named(name, shape, message):
    t, mask = inputs(54)
    t[name] = np.zeros(shape)
    with pytest.raises(ValueError, match=message.replace("`", ".")):
        ops.dispatcher_attention_from_values(*(t[n] for n in FACTORED), mask=mask,
                                             causal=True)
