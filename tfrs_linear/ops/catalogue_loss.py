"""Softmax cross-entropy over a whole catalogue, on the real rows only, chunk by chunk.

The full loss of a sequential retrieval model scores every training position against
every item: logits ``[rows, V]`` with ``rows = batch · positions``. Two things make the
plain form (one ``[rows, V]`` matmul and ``tf.nn.sparse_softmax_cross_entropy_with_logits``)
wasteful for left-padded sequences:

* most rows can be padding (weight 0): at ``max_len`` 200 on ml-100k about 56% of the
  positions of a training batch are, and the plain form scores them all (forward and
  backward) only to multiply their losses by 0;
* the logits and their gradient are materialised whole: ``2 · rows · V`` floats
  (3.4 GB at batch 128, ``max_len`` 200 and 16,000 items).

:func:`catalogue_cross_entropy` gathers the real rows to the front (a stable sort on the
weights: static shapes, so it compiles under XLA), and runs the loss over them in chunks
of :func:`rows_per_chunk` rows in a ``tf.while_loop`` whose trip count is the number of
chunks that hold real rows (at most ``ceil(rows / chunk)``: XLA gets a static bound). Its
gradient is written by hand (``tf.custom_gradient``): a second loop recomputes each
chunk's logits and forms ``(softmax - one_hot) · weight`` for the query, table and bias
gradients, so no ``[rows, V]`` tensor and no per-iteration intermediates are kept.

Cost: the plain form does three ``rows x d x V`` matmuls (logits, query gradient, table
gradient) over every row; this one does four (the logits once more in the backward pass)
over the real rows only, plus a sort and a gather of ``[rows, d]``. Memory: a few
``chunk x V`` tensors. Results equal the plain form's up to float32 rounding (the tests
compare both with a float64 oracle).

Numerics: the log-sum-exp of each row is computed with its maximum subtracted
(``tf.reduce_logsumexp``) and kept from the forward pass; the backward pass's
probabilities are ``exp(logit - lse) <= 1``. A bias of ``-1e9`` (the model's padding and
OOV columns) gives probabilities of exactly 0.
"""

import math

import tensorflow as tf

# Target size of one chunk's logits, in floats (64 MiB of float32): chunks of
# 2**24 / V rows, a power of two between _MIN_ROWS and _MAX_ROWS.
_CHUNK_FLOATS = 1 << 24
_MIN_ROWS = 16
_MAX_ROWS = 4096


def rows_per_chunk(vocab_size):
    """The rows of one chunk of :func:`catalogue_cross_entropy` for a catalogue of
    ``vocab_size`` columns: the power of two nearest below ``2**24 / vocab_size``,
    clamped to ``[16, 4096]`` (4,096 rows up to 4,096 items, 16 at a million)."""
    vocab_size = max(int(vocab_size), 1)
    rows = 1 << max(int(math.floor(math.log2(max(_CHUNK_FLOATS // vocab_size, 1)))), 0)
    return int(min(max(rows, _MIN_ROWS), _MAX_ROWS))


def catalogue_cross_entropy(queries, table, targets, weights, bias=None, chunk_rows=None):
    """``Σ_r weights[r] · CE_r``: the weighted sum of the softmax cross-entropies of the
    rows with a positive weight, each over every column of ``table``.

    ``CE_r = logsumexp_j(queries[r] · table[j] + bias[j]) - (queries[r] · table[t_r] +
    bias[t_r])`` with ``t_r = targets[r]``. Rows with weight 0 cost nothing (their
    gradient is exactly 0); see the module docstring for the method.

    Args:
      queries: float32 ``[rows, d]``.
      table: float32 ``[V, d]``, the candidates (gradients flow to it).
      targets: int ``[rows]`` in ``[0, V)`` (only the rows with a positive weight are
        read).
      weights: float ``[rows]``, >= 0.
      bias: optional float32 ``[V]`` added to every row's logits (gradients flow to it).
      chunk_rows: rows per chunk; default :func:`rows_per_chunk` of ``V`` (or 1,024 when
        ``V`` is not static).

    Returns:
      A float32 scalar (divide by the weights' sum for a mean).
    """
    queries = tf.convert_to_tensor(queries, tf.float32)
    table = tf.convert_to_tensor(table, tf.float32)
    if queries.shape.rank != 2 or table.shape.rank != 2:
        raise ValueError(f"queries and table must be [rows, d] and [V, d], got "
                         f"{queries.shape} and {table.shape}.")
    vocab = table.shape[0]
    if chunk_rows is None:
        chunk_rows = rows_per_chunk(vocab) if vocab is not None else 1024
    chunk = int(chunk_rows)
    if chunk < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}.")
    if bias is None:
        bias = tf.zeros(tf.shape(table)[:1], tf.float32)
    bias = tf.convert_to_tensor(bias, tf.float32)
    targets = tf.cast(tf.reshape(targets, [-1]), tf.int32)
    weights = tf.cast(tf.reshape(weights, [-1]), tf.float32)

    # The real rows first (stable: the same order every time), padded to whole chunks.
    real = tf.cast(weights > 0, tf.int32)
    order = tf.argsort(-real, stable=True)
    n_real = tf.reduce_sum(real)
    rows = tf.shape(queries)[0]
    padded = (rows + chunk - 1) // chunk * chunk
    fill = [[0, padded - rows]]
    q_sorted = tf.pad(tf.gather(queries, order), fill + [[0, 0]])
    t_sorted = tf.pad(tf.gather(targets, order), fill)
    w_sorted = tf.pad(tf.gather(weights, order), fill)
    n_chunks = (n_real + chunk - 1) // chunk
    max_chunks = _static_or(padded, lambda p: p // chunk)
    return _chunked_loss(q_sorted, table, bias, t_sorted, w_sorted, n_chunks, max_chunks,
                         chunk)


def _static_or(value, fn):
    static = tf.get_static_value(value)
    return fn(int(static)) if static is not None else fn(value)


def _chunk_rows(i, chunk):
    """The row indices ``[chunk, 1]`` of chunk ``i``."""
    return (i * chunk + tf.range(chunk))[:, tf.newaxis]


def _chunked_loss(q, table, bias, targets, weights, n_chunks, max_chunks, chunk):
    """The loss over whole chunks of sorted, padded rows; the gradient by hand."""
    dim = tf.shape(q)[1]

    def logits_of(i, q_, table_, bias_):
        qc = tf.slice(q_, tf.stack([i * chunk, 0]), tf.stack([chunk, dim]))
        return qc, tf.matmul(qc, table_, transpose_b=True) + bias_

    def part(x, i):
        return tf.slice(x, [i * chunk], [chunk])

    @tf.custom_gradient
    def run(q_, table_, bias_):
        def body(i, total, lse):
            _, logits = logits_of(i, q_, table_, bias_)
            row_lse = tf.reduce_logsumexp(logits, axis=-1)
            picked = tf.gather(logits, part(targets, i), batch_dims=1)
            total += tf.reduce_sum((row_lse - picked) * part(weights, i))
            return i + 1, total, tf.tensor_scatter_nd_update(lse, _chunk_rows(i, chunk), row_lse)

        _, total, lse = tf.while_loop(
            lambda i, *_: i < n_chunks, body,
            (tf.constant(0), tf.constant(0.0), tf.zeros(tf.shape(q_)[:1])),
            maximum_iterations=max_chunks, parallel_iterations=1,
        )

        def grad(dy):
            def back(i, d_q, d_table, d_bias):
                qc, logits = logits_of(i, q_, table_, bias_)
                probs = tf.exp(logits - part(lse, i)[:, tf.newaxis])
                probs -= tf.one_hot(part(targets, i), tf.shape(logits)[1], dtype=probs.dtype)
                probs *= (part(weights, i) * dy)[:, tf.newaxis]
                d_q = tf.tensor_scatter_nd_update(d_q, _chunk_rows(i, chunk),
                                                  tf.matmul(probs, table_))
                d_table += tf.matmul(probs, qc, transpose_a=True)
                return i + 1, d_q, d_table, d_bias + tf.reduce_sum(probs, axis=0)

            _, d_q, d_table, d_bias = tf.while_loop(
                lambda i, *_: i < n_chunks, back,
                (tf.constant(0), tf.zeros_like(q_), tf.zeros_like(table_),
                 tf.zeros_like(bias_)),
                maximum_iterations=max_chunks, parallel_iterations=1,
            )
            return d_q, d_table, d_bias

        return total, grad

    return run(q, table, bias)


__all__ = ["catalogue_cross_entropy", "rows_per_chunk"]
