"""catalogue_cross_entropy against a float64 NumPy oracle: the weighted sum of full-softmax
cross-entropies and its gradients (queries, table, bias), eager, graph and XLA, with
padding rows that cost nothing and chunk sizes that do not divide the rows."""

import numpy as np
import pytest
import tensorflow as tf

from tfrs_linear.ops.catalogue_loss import catalogue_cross_entropy, rows_per_chunk


def _oracle(q, table, bias, targets, weights):
    """Loss and gradients in float64 (softmax - one_hot, weighted)."""
    q, table, bias = (np.asarray(x, np.float64) for x in (q, table, bias))
    logits = q @ table.T + bias
    top = logits.max(axis=1, keepdims=True)
    lse = top[:, 0] + np.log(np.exp(logits - top).sum(axis=1))
    rows = np.arange(len(q))
    loss = float(np.sum(weights * (lse - logits[rows, targets])))
    probs = np.exp(logits - lse[:, None])
    probs[rows, targets] -= 1.0
    probs *= weights[:, None]
    return loss, probs @ table, probs.T @ q, probs.sum(axis=0)


def _case(rng, rows, vocab, dim, real_fraction):
    q = rng.normal(size=[rows, dim]).astype(np.float32)
    table = rng.normal(size=[vocab, dim]).astype(np.float32)
    bias = rng.normal(size=[vocab]).astype(np.float32)
    bias[:2] = -1e9  # the model's padding and OOV columns
    targets = rng.integers(2, vocab, size=rows)
    weights = (rng.random(rows) < real_fraction).astype(np.float32)
    return q, table, bias, targets, weights


def _run(mode, q, table, bias, targets, weights, chunk_rows):
    def fn(q, table, bias):
        with tf.GradientTape() as tape:
            tape.watch([q, table, bias])
            loss = catalogue_cross_entropy(q, table, targets, weights, bias=bias,
                                           chunk_rows=chunk_rows)
        return (loss,) + tuple(tape.gradient(loss, [q, table, bias]))

    if mode != "eager":
        fn = tf.function(fn, jit_compile=mode == "xla")
    return [tf.convert_to_tensor(x).numpy()
            for x in fn(tf.constant(q), tf.constant(table), tf.constant(bias))]


@pytest.mark.parametrize("mode", ["eager", "graph", "xla"])
@pytest.mark.parametrize("rows,chunk_rows,real_fraction", [
    (37, 8, 0.45),   # the last chunk of real rows is partly padding; 37 is no multiple of 8
    (40, 64, 0.9),   # one chunk larger than all rows
    (24, 1, 1.0),    # one row per chunk, every row real
])
def test_matches_a_float64_oracle(mode, rows, chunk_rows, real_fraction):
    rng = np.random.default_rng(rows + chunk_rows)
    q, table, bias, targets, weights = _case(rng, rows, 23, 6, real_fraction)
    weights[weights > 0] *= rng.uniform(0.5, 2.0, size=int((weights > 0).sum()))  # not only 0/1
    got = _run(mode, q, table, bias, targets, weights, chunk_rows)
    want = _oracle(q, table, bias, targets, weights)
    np.testing.assert_allclose(got[0], want[0], rtol=2e-5)
    for g, w in zip(got[1:], want[1:]):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)
    # Padding rows: exactly zero gradient.
    assert np.all(got[1][weights == 0] == 0.0)


def test_equals_the_plain_form_and_ignores_padding_targets():
    # The model's plain form: sparse softmax CE on every row, times the weights. Padding
    # rows may hold any target (here 0, the padding id): they change nothing.
    rng = np.random.default_rng(5)
    q, table, bias, targets, weights = _case(rng, 50, 31, 8, 0.4)
    targets[weights == 0] = 0
    logits = tf.matmul(q, table, transpose_b=True) + bias
    plain = tf.reduce_sum(weights * tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=targets, logits=logits))
    got = catalogue_cross_entropy(q, table, targets, weights, bias=bias, chunk_rows=16)
    np.testing.assert_allclose(got.numpy(), plain.numpy(), rtol=1e-5)


def test_no_real_row_gives_zero_loss_and_zero_gradients():
    rng = np.random.default_rng(6)
    q, table, bias, targets, _ = _case(rng, 12, 9, 4, 0.0)
    got = _run("xla", q, table, bias, targets, np.zeros(12, np.float32), 4)
    assert got[0] == 0.0 and all(np.all(g == 0.0) for g in got[1:])


def test_unknown_batch_size_compiles_and_runs():
    rng = np.random.default_rng(7)
    q, table, bias, targets, weights = _case(rng, 19, 11, 4, 0.6)
    fn = tf.function(
        lambda q, t, w: catalogue_cross_entropy(q, table, t, w, bias=bias, chunk_rows=4),
        input_signature=[tf.TensorSpec([None, 4]), tf.TensorSpec([None], tf.int32),
                         tf.TensorSpec([None])], jit_compile=True)
    want = _oracle(q, table, bias, targets, weights)[0]
    np.testing.assert_allclose(fn(q, targets.astype(np.int32), weights).numpy(), want,
                               rtol=2e-5)


def test_rows_per_chunk_bounds_the_logits():
    assert rows_per_chunk(1682) == 4096
    assert rows_per_chunk(16_000) == 1024
    assert rows_per_chunk(1_000_000) == 16
    assert rows_per_chunk(10**9) == 16
    for vocab in (3, 1682, 50_000, 1_000_000):
        rows = rows_per_chunk(vocab)
        assert rows & (rows - 1) == 0 and (rows * vocab <= 1 << 24 or rows == 16)
