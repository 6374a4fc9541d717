"""LinRec's op (:mod:`tfrs_linear.ops.linrec`) against an independent dense float64 NumPy
oracle that builds the N x N matrix (:mod:`tests.oracles`, which follows docs/linrec.md
literally, with explicit per-position prefix norms in causal mode and none of the
library's code)."""

import numpy as np
import pytest
import tensorflow as tf

from tests.oracles import dense_attention, dense_matrix, qkv, random_padding_mask
from tfrs_linear import ops

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


# ------------------------------------------------- the chunked causal path's pieces
@pytest.mark.parametrize("n_chunks", [1, 2, 5, 32, 33, 40])
def test_exclusive_chunk_sum_matches_numpy(n_chunks):
    """Both branches: the masked matmul (<= 32 chunks) and the cumulative sum (more)."""
    rng = np.random.default_rng(10)
    x = rng.standard_normal((2, 3, n_chunks, 4, 5))
    want = np.cumsum(x, axis=2) - x
    got = ops.linrec.exclusive_chunk_sum(tf.constant(x)).numpy()
    np.testing.assert_allclose(got, want, atol=1e-12)


def test_exclusive_chunk_sum_with_unknown_chunk_count():
    x = np.random.default_rng(11).standard_normal((1, 2, 7, 3))
    fn = tf.function(ops.linrec.exclusive_chunk_sum,
                     input_signature=[tf.TensorSpec([1, 2, None, 3], tf.float64)])
    np.testing.assert_allclose(fn(tf.constant(x)).numpy(), np.cumsum(x, axis=2) - x, atol=1e-12)


@pytest.mark.parametrize("n,chunk_size", [(80, 2), (70, 1), (64, 32), (65, 32)])
def test_causal_paper_beyond_32_chunks_and_with_a_partial_chunk(n, chunk_size):
    """More than 32 chunks (the cumulative-sum branch) and a zero-padded last chunk,
    against the dense oracle."""
    rng = np.random.default_rng(12)
    q, k, v = qkv(rng, b=2, h=2, n=n, d=4, dv=3)
    mask = random_padding_mask(rng, 2, n)
    got = ops.linrec_attention(q, k, v, mask=mask, causal=True, chunk_size=chunk_size)
    np.testing.assert_allclose(got.numpy(), dense_attention(q, k, v, mask, True, "paper"), atol=1e-10)


def test_causal_paper_under_xla_with_unknown_length_matches_oracle():
    rng = np.random.default_rng(13)
    q, k, v = qkv(rng, b=2, h=1, n=21, d=4, dv=3, dtype=np.float32)
    mask = random_padding_mask(rng, 2, 21)
    spec = tf.TensorSpec([2, 1, None, None], tf.float32)

    @tf.function(input_signature=[spec, spec, spec, tf.TensorSpec([2, None], tf.bool)],
                 jit_compile=True)
    def step(q, k, v, m):
        return ops.linrec_attention(q, k, v, mask=m, causal=True, chunk_size=8)

    want = dense_attention(q, k, v, mask, True, "paper")
    np.testing.assert_allclose(step(q, k, v, mask).numpy(), want, rtol=1e-5, atol=1e-5)


def test_causal_linear_attention_keeps_its_signature():
    """``causal_linear_attention(q, k, v, chunk_size)`` (used by the recurrent form) is the
    plain masked product Σ_{s<=t} (q_t·k_s) v_s."""
    rng = np.random.default_rng(14)
    q, k, v = (rng.standard_normal((2, 2, 37, 3)) for _ in range(3))
    want = np.einsum("bhts,bhse->bhte", np.tril(np.einsum("bhtd,bhsd->bhts", q, k)), v)
    for chunk_size in (1, 4, 37, 64):
        got = ops.causal_linear_attention(q, k, v, chunk_size)
        np.testing.assert_allclose(got.numpy(), want, atol=1e-10)
    with pytest.raises(ValueError, match="chunk_size"):
        ops.causal_linear_attention(q, k, v, 0)
    with pytest.raises(ValueError, match="chunk_size"):
        ops.linrec_attention(q, k, v, causal=True, chunk_size=0)
