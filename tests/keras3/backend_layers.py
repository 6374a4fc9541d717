"""Keras 3 LinRecAttention, LinearDispatcherAttention and InterestMemory on one backend.

Run by tests/keras3/test_backends.py in a process of its own per backend (KERAS_BACKEND
set, TF_USE_LEGACY_KERAS unset); every check compares with the float64 NumPy oracles
of tests/keras3/oracles.py.
"""

import os

import keras
import numpy as np
import pytest

from tests.keras3 import oracles as O
from tests.keras3._harness import BACKEND, TOL, TOL_LN, forward, gradients, run
from tfrs_linear.keras3 import InterestMemory, LinearDispatcherAttention, LinRecAttention

DIM, HEADS, KEY_DIM, K = 6, 2, 3, 3
CASES = [(norm, causal) for norm in ("paper", "token") for causal in (False, True)]


def test_process_runs_keras3_without_legacy_flag():
    assert "TF_USE_LEGACY_KERAS" not in os.environ
    assert keras.__version__.startswith("3.")
    assert BACKEND == os.environ["KERAS_BACKEND"]


# ----------------------------------------------------------------------------- LinRec
def make_linrec(seed=0, dtype="float64", **kw):
    keras.utils.set_random_seed(seed)
    return LinRecAttention(HEADS, KEY_DIM, dtype=dtype, bias_initializer="random_normal", **kw)


@pytest.mark.parametrize("normalization,causal", CASES)
def test_linrec_matches_dense_reference(normalization, causal):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 11, DIM))
    mask = O.random_mask(rng, 3, 11)
    layer = make_linrec(normalization=normalization, chunk_size=4)
    out, scores = forward(layer, x, x, attention_mask=mask, use_causal_mask=causal,
                          return_attention_scores=True)
    want, matrix = O.linrec_layer(O.mha_weights(layer), x, x, mask, mask, causal,
                                  normalization)
    np.testing.assert_allclose(out, want, **TOL)
    np.testing.assert_allclose(scores, matrix, **TOL)
    # Keras masks through the call's mask arguments, and the always-causal constructor.
    twin = make_linrec(normalization=normalization, chunk_size=3, causal=causal)
    got = forward(twin, x, x, query_mask=mask, value_mask=mask)
    np.testing.assert_allclose(got, want, **TOL)


@pytest.mark.parametrize("normalization", ["paper", "token"])
@pytest.mark.parametrize("masked", [False, True])
def test_linrec_causal_over_many_chunks_matches_dense_reference(normalization, masked):
    """More chunks than one masked matmul sums over (37 chunks of 1: the cumulative-sum
    branch of the prefix over chunks), with and without a padding mask."""
    rng = np.random.default_rng(12)
    x = rng.normal(size=(2, 37, DIM))
    mask = O.random_mask(rng, 2, 37) if masked else None
    layer = make_linrec(normalization=normalization, chunk_size=1, causal=True)
    got = forward(layer, x, x, query_mask=mask, value_mask=mask)
    want = O.linrec_layer(O.mha_weights(layer), x, x, mask, mask, True, normalization)[0]
    np.testing.assert_allclose(got, want, **TOL)


def test_linrec_cross_attention_and_unmasked():
    rng = np.random.default_rng(1)
    query, value = rng.normal(size=(2, 5, DIM)), rng.normal(size=(2, 9, DIM))
    mask = O.random_mask(rng, 2, 9)
    layer = make_linrec()
    got = forward(layer, query, value, attention_mask=mask)  # masks the keys only
    want = O.linrec_layer(O.mha_weights(layer), query, value, mask, None, False, "paper")[0]
    np.testing.assert_allclose(got, want, **TOL)
    got = forward(layer, value, value, use_causal_mask=True)
    want = O.linrec_layer(O.mha_weights(layer), value, value, None, None, True, "paper")[0]
    np.testing.assert_allclose(got, want, **TOL)


@pytest.mark.parametrize("causal", [False, True])
def test_linrec_padding_is_exact_zero_and_invariant(causal):
    rng = np.random.default_rng(2)
    real = rng.normal(size=(1, 5, DIM))
    layer = make_linrec(use_bias=False, chunk_size=4)
    outs = []
    for pad in (0, 3, 6):
        x = np.concatenate([np.zeros((1, pad, DIM)) + 7.0, real], axis=1)  # left padding
        mask = np.arange(pad + 5)[None] >= pad
        out = forward(layer, x, x, attention_mask=mask, use_causal_mask=causal)
        assert np.all(out[:, :pad] == 0.0)
        outs.append(out[:, pad:])
    for out in outs[1:]:
        np.testing.assert_allclose(out, outs[0], **TOL)


def test_linrec_has_the_weights_of_multi_head_attention():
    for kw in (dict(), dict(value_dim=5, output_shape=7, use_bias=False), dict(use_gate=True)):
        ours = LinRecAttention(HEADS, KEY_DIM, name="att", **kw)
        theirs = keras.layers.MultiHeadAttention(HEADS, KEY_DIM, name="att", **kw)
        for layer in (ours, theirs):
            layer.build((None, 4, DIM), (None, 9, DIM + 2))
        assert [(w.path, tuple(w.shape)) for w in ours.weights] == [
            (w.path, tuple(w.shape)) for w in theirs.weights
        ]
        assert isinstance(ours, keras.layers.MultiHeadAttention)


def test_linrec_clear_errors():
    layer = make_linrec()
    x = np.zeros((2, 4, DIM))
    with pytest.raises(ValueError, match="padding and causal masks only"):
        layer(x, x, attention_mask=np.ones((2, 4, 4), bool))
    with pytest.raises(ValueError, match="normalization"):
        LinRecAttention(HEADS, KEY_DIM, normalization="cosine")
    with pytest.raises(ValueError, match="sequence axis"):
        LinRecAttention(HEADS, KEY_DIM, attention_axes=(2,))
    with pytest.raises(ValueError, match="sliding_window"):
        LinRecAttention(HEADS, KEY_DIM, sliding_window=4)


@pytest.mark.parametrize("normalization", ["paper", "token"])
def test_linrec_causal_gradients_match_finite_differences(normalization):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(1, 5, DIM))
    mask = np.array([[False, True, True, True, True]])
    cot = rng.normal(size=(1, 5, DIM))
    layer = make_linrec(normalization=normalization, chunk_size=2)
    g_x, g_w = gradients(layer, x, cot, x, attention_mask=mask, use_causal_mask=True)
    w = O.mha_weights(layer)

    def ref(arr):  # the gradient through the query (the value argument is held fixed)
        return (O.linrec_layer(w, arr, x, mask, mask, True, normalization)[0] * cot).sum()

    np.testing.assert_allclose(g_x, O.numeric_gradient(ref, x), rtol=1e-6, atol=1e-7)
    assert all(np.all(np.isfinite(g)) for g in g_w)


# ----------------------------------------------------------------------------- ELASTIC
def make_lda(causal, seed=0, dtype="float64", chunk_size=4, **kw):
    keras.utils.set_random_seed(seed)
    layer = LinearDispatcherAttention(HEADS, KEY_DIM, K, causal=causal, chunk_size=chunk_size,
                                      dtype=dtype, bias_initializer="random_normal", **kw)
    layer.build((None, None, DIM))
    if not causal:  # non-trivial LayerNorm parameters
        rng = np.random.default_rng(seed)
        layer.interest_norm.gamma.assign(1.0 + 0.3 * rng.normal(size=DIM))
        layer.interest_norm.beta.assign(0.3 * rng.normal(size=DIM))
    return layer


@pytest.mark.parametrize("recency", [False, True])
@pytest.mark.parametrize("causal", [False, True])
def test_lda_matches_dense_reference(causal, recency):
    rng = np.random.default_rng(4)
    x = rng.normal(size=(3, 11, DIM))
    mask = O.random_mask(rng, 3, 11)
    layer = make_lda(causal, recency_bias=recency)
    if recency:  # steeper than the initial slopes, so that the decay matters at N = 11
        layer.recency_raw.assign(rng.normal(size=(HEADS, K)))
    out, interests = forward(layer, x, mask=mask)
    want, want_p = O.lda(O.lda_weights(layer), x, mask, causal)
    tol = TOL if causal else TOL_LN
    np.testing.assert_allclose(out, want, **tol)
    np.testing.assert_allclose(interests, want_p, **tol)
    last = forward(layer, x, mask=mask, last_only=True)[0]
    np.testing.assert_allclose(last, want[:, -1:], **tol)


def test_lda_given_interests_and_no_tokens_of_its_own():
    rng = np.random.default_rng(5)
    x, p = rng.normal(size=(2, 7, DIM)), rng.normal(size=(2, K, DIM))
    mask = O.random_mask(rng, 2, 7)
    layer = make_lda(False, learned_interests=False)
    assert layer.interest_tokens is None
    out, interests = forward(layer, x, mask=mask, interests=p)
    want, want_p = O.lda(O.lda_weights(layer), x, mask, False, interests=p)
    np.testing.assert_allclose(out, want, **TOL_LN)
    np.testing.assert_allclose(interests, want_p, **TOL_LN)
    with pytest.raises(ValueError, match="learned_interests"):
        LinearDispatcherAttention(HEADS, KEY_DIM, K, causal=True, learned_interests=False)
    with pytest.raises(ValueError, match="interests"):
        make_lda(True)(x, mask=mask, interests=p)


def test_lda_causal_logit_jumps_stay_exact():
    """Aggregate logits that jump by far more than 60 inside a chunk (the fast path's
    bound: every backend then takes its exact per-position fallback)."""
    rng = np.random.default_rng(6)
    x = rng.normal(size=(2, 13, DIM))
    x[:, 6] *= 40.0
    mask = O.random_mask(rng, 2, 13, min_real=8)
    layer = make_lda(True, chunk_size=8)
    layer.key_1_kernel.assign(layer.key_1_kernel.numpy() * 30.0)
    out, _ = forward(layer, x, mask=mask)
    want = O.lda(O.lda_weights(layer), x, mask, True)[0]
    np.testing.assert_allclose(out, want, rtol=1e-8, atol=1e-8)
    # The fast path still runs beside the fallback (on zeroed logits): no NaN reaches
    # the gradients through the branch that is discarded.
    g_x, g_w = gradients(layer, x, rng.normal(size=x.shape), mask=mask)
    assert all(np.all(np.isfinite(g)) for g in [g_x, *g_w])


@pytest.mark.parametrize("path", ["fast", "exact"])
def test_lda_causal_keras_ops_paths_each_match_the_reference(monkeypatch, path):
    """The ``keras.ops`` causal form (what JAX and PyTorch run; here forced on TensorFlow
    too) with its switch pinned to one branch: the fast path alone and the exact
    per-position form alone each give the dense float64 outputs, and their input and
    weight gradients agree."""
    from tfrs_linear.keras3 import _common, _elastic_math

    monkeypatch.setattr(_common, "backend_name", lambda: "keras.ops")
    monkeypatch.setattr(_elastic_math, "fast_path_ok", lambda refs: path == "fast")
    rng = np.random.default_rng(9)
    x = rng.normal(size=(3, 13, DIM))
    mask = O.random_mask(rng, 3, 13)
    layer = make_lda(True, recency_bias=True, chunk_size=4)
    layer.recency_raw.assign(rng.normal(size=(HEADS, K)))
    out, interests = forward(layer, x, mask=mask)
    want, want_p = O.lda(O.lda_weights(layer), x, mask, True)
    np.testing.assert_allclose(out, want, **TOL)
    np.testing.assert_allclose(interests, want_p, **TOL)
    cot = rng.normal(size=x.shape)
    g_x, g_w = gradients(layer, x, cot, mask=mask)
    monkeypatch.setattr(_elastic_math, "fast_path_ok", lambda refs: path != "fast")
    other_x, other_w = gradients(layer, x, cot, mask=mask)
    assert all(np.all(np.isfinite(g)) for g in [g_x, other_x, *g_w, *other_w])
    np.testing.assert_allclose(g_x, other_x, rtol=1e-9, atol=1e-11)
    assert len(g_w) == len(other_w) > 0
    for g, other in zip(g_w, other_w):
        np.testing.assert_allclose(g, other, rtol=1e-9, atol=1e-11)


def test_lda_causal_switch_takes_the_fast_path_unless_the_logits_jump():
    """``fast_path_ok`` (the ``keras.ops`` switch): True while the running maximum of the
    aggregate logits rises by at most 60 over a chunk's positions with a real prefix,
    False above; a rise before the first real item, or across chunks, does not count."""
    from tfrs_linear.keras3._elastic_fast import fast_path_ok, fast_references

    def ok(logits, mask, chunk=4):
        logits = np.asarray(logits, np.float64)[None, None, None]  # [1, 1, 1, N]
        m = np.asarray(mask, np.float64)[None]
        return bool(run(lambda a, b: fast_path_ok(fast_references(a, b, chunk)), logits, m))

    ones = [1] * 8
    assert ok(np.random.default_rng(0).normal(size=8) * 5, ones)
    assert ok([0, 60, 0, 0, 0, 0, 0, 0], ones)  # a rise of exactly 60
    assert not ok([0, 60.5, 0, 0, 0, 0, 0, 0], ones)
    assert ok([0, 0, 0, 0, 500, 0, 0, 0], ones)  # the jump starts a chunk
    assert ok([0, 500, 0, 0, 0, 0, 0, 0], [0, 1, 1, 1, 1, 1, 1, 1])  # no real prefix before
    assert not ok([0, 0, 500, 0, 0, 0, 0, 0], [0, 1, 1, 1, 1, 1, 1, 1])


@pytest.mark.parametrize("causal", [False, True])
def test_lda_gradients_match_finite_differences(causal):
    """Input gradients against central differences of the oracle; an all-padding row
    outputs exact zeros and every gradient is finite."""
    rng = np.random.default_rng(8)
    x = rng.normal(size=(2, 6, DIM))
    mask = np.array([[False] * 6, [False, True, True, False, True, True]])
    cot = rng.normal(size=(2, 6, DIM))
    layer = make_lda(causal, recency_bias=True, chunk_size=4)
    out, interests = forward(layer, x, mask=mask)
    assert np.all(out[0] == 0.0) and np.all(out[1, ~mask[1]] == 0.0)
    g_x, g_w = gradients(layer, x, cot, mask=mask)
    assert all(np.all(np.isfinite(g)) for g in g_w)
    w = O.lda_weights(layer)
    want_p = O.lda(w, x, mask, causal)[1]
    np.testing.assert_allclose(interests, want_p, **(TOL if causal else TOL_LN))
    numeric = O.numeric_gradient(lambda a: (O.lda(w, a, mask, causal)[0] * cot).sum(), x)
    float32_norm = not causal and BACKEND != "tensorflow"  # see TOL_LN
    tol = dict(rtol=1e-4, atol=1e-5) if float32_norm else dict(rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(g_x, numeric, **tol)


# ----------------------------------------------------------------------------- memory
def make_memory(seed=0, dtype="float64", **kw):
    keras.utils.set_random_seed(seed)
    memory = InterestMemory(K, num_keys=8, top_m=4, query_dim=6, dtype=dtype, **kw)
    memory.build((None, None, DIM))
    return memory


def test_memory_selects_true_top_m_and_matches_reference():
    rng = np.random.default_rng(9)
    memory = make_memory(9)
    x = rng.normal(size=(3, 7, DIM))
    mask = O.random_mask(rng, 3, 7)
    mask[0] = False  # all padding: a zero query, finite
    want, best = O.memory(O.memory_weights(memory), x, mask, K, 4)
    _, indices = run(memory.lookup, x, mask)
    np.testing.assert_array_equal(indices, best)
    np.testing.assert_allclose(forward(memory, x, mask=mask), want, **TOL)


def test_memory_variables_stay_float32_under_mixed_precision():
    memory = make_memory(dtype="mixed_float16")
    assert {v.dtype for v in memory.weights} == {"float32"}
    x = np.random.default_rng(10).normal(size=(2, 5, DIM)).astype("float16")
    out = forward(memory, x)
    assert out.dtype == np.float16 and np.all(np.isfinite(out))
