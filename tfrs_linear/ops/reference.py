"""Dense O(N²) references of the package's attentions, as pure TensorFlow (no Keras).

The efficient ops (:mod:`tfrs_linear.ops.linrec`, :mod:`tfrs_linear.ops.dispatcher`,
:mod:`tfrs_linear.ops.dispatcher_causal`) never form an N x N matrix nor a state per
position. The functions here do, on purpose: they build the implicit attention matrices
and the per-position interests explicitly, in the plainest order, so that a user can
inspect what a model attends to (``LinRecAttention(return_attention_scores=True)`` uses
:func:`linrec_attention_scores`) and check an efficient op on short sequences. They take
the same arguments as the ops they mirror (minus ``chunk_size``).

Numerics
--------
* O(N²) time and memory per head (the dispatcher's: per head and interest): for
  inspection, tests and short sequences only.
* float16/bfloat16 inputs are computed in float32 and the result is cast back; float64
  stays float64.
* They share the ops' feature maps (:func:`tfrs_linear.ops.linrec_features`) and masked
  softmax (:func:`tfrs_linear.ops.masked_softmax_weights`), so they agree with the ops up
  to rounding, padding and all-padding rows included (padded queries give exactly 0).
  They are not independent oracles: the package's tests check both the ops and these
  references against their own float64 NumPy code.
"""

import tensorflow as tf

from tfrs_linear.ops._common import (
    aggregate_logits, check_aggregate_bias, check_rank, compute_dtype, float_mask,
    inverse_sqrt_width,
)
from tfrs_linear.ops.dispatcher import masked_softmax_weights, validate_dispatcher_inputs
from tfrs_linear.ops.linrec import linrec_features


# ------------------------------------------------------------------ LinRec
def _linrec_matrix(q, k, causal, q_mask):
    """``q kᵀ`` of LinRec's effective features, lower-triangular if causal, query-masked."""
    scores = tf.einsum("bhtd,bhsd->bhts", q, k)
    if causal:
        length = tf.shape(scores)[-1]
        scores = scores * tf.linalg.band_part(
            tf.ones([length, length], scores.dtype), -1, 0
        )
    if q_mask is not None:
        scores = scores * q_mask[:, tf.newaxis, :, tf.newaxis]
    return scores


def linrec_attention_scores(query, key, mask=None, causal=False, normalization="paper",
                            epsilon=1e-6, query_mask=None):
    """The implicit ``[B, H, T, S]`` attention matrix of :func:`tfrs_linear.ops.linrec_attention`.

    For inspection only: it is O(N²) in time and memory, which the attention itself never
    is. ``linrec_attention(q, k, v, ...) == scores @ v`` (up to rounding). Arguments as in
    :func:`tfrs_linear.ops.linrec_attention` (no value, no chunk size).
    """
    query = tf.convert_to_tensor(query)
    key = tf.convert_to_tensor(key, dtype_hint=query.dtype)
    value = key[..., :1]
    q, k, _, q_mask = linrec_features(
        query, key, value, mask, causal, normalization, epsilon, query_mask
    )
    return tf.cast(_linrec_matrix(q, k, causal, q_mask), query.dtype)


def linrec_attention_reference(query, key, value, mask=None, causal=False,
                               normalization="paper", epsilon=1e-6, query_mask=None):
    """:func:`tfrs_linear.ops.linrec_attention` through its implicit matrix: ``A @ value``.

    ``A`` is :func:`linrec_attention_scores` (kept in the compute dtype, not rounded to
    the input dtype in between). Arguments as in :func:`tfrs_linear.ops.linrec_attention`
    (no chunk size: nothing is chunked). Returns ``[B, H, T, d_v]`` in the dtype of
    ``query``; O(N²) time and memory.
    """
    query = tf.convert_to_tensor(query)
    q, k, v, q_mask = linrec_features(
        query, key, value, mask, causal, normalization, epsilon, query_mask
    )
    out = tf.einsum("bhts,bhse->bhte", _linrec_matrix(q, k, causal, q_mask), v)
    return tf.cast(out, query.dtype)


# ------------------------------------------------------------------ dispatcher
def dispatcher_aggregate_weights(
    interest_query, key, mask=None, causal=False, aggregate_bias=None
):
    """The aggregate softmax weights of the dispatcher, per query position: ``[B, H, k, T, S]``.

    ``weights[b, h, i, t, s]`` is the weight of position ``s`` in interest ``i``'s mean
    (aggregate head ``h``) as seen from position ``t``: a softmax of the scaled aggregate
    logits ``interest_query · key / sqrt(d_k) (+ aggregate_bias)`` over the real positions
    (non-causal: every row ``t`` is the same) or over the real ``s <= t`` (causal). A row
    with no real position is exactly 0.

    Args:
      interest_query: ``[B, H, k, d_k]``, the aggregate queries (``P W_q1``).
      key: ``[B, H, N, d_k]``, the aggregate keys (``X W_k1``).
      mask: optional ``[B, N]`` padding mask (True/1 = real item).
      causal: prefix weights (``s <= t``) instead of weights over the whole sequence.
      aggregate_bias: optional additive bias of the scaled logits, broadcastable to
        ``[B, H, k, N]``, as in :func:`tfrs_linear.ops.dispatcher_attention`.

    Returns:
      ``[B, H, k, N, N]`` in the dtype of ``interest_query``; O(N²·H·k) memory.
    """
    interest_query = tf.convert_to_tensor(interest_query)
    key = tf.convert_to_tensor(key)
    check_rank("interest_query", interest_query, 4, "[batch, heads, k, key_dim]")
    check_rank("key", key, 4, "[batch, heads, length, key_dim]")
    dtype = compute_dtype(interest_query.dtype)
    q1, k1 = tf.cast(interest_query, dtype), tf.cast(key, dtype)
    logits = aggregate_logits(q1, k1, check_aggregate_bias(aggregate_bias))  # [B, H, k, S]
    shape = tf.shape(logits)
    length = shape[3]
    pairs = tf.ones([length, length], dtype)  # [t, s]
    if causal:
        pairs = tf.linalg.band_part(pairs, -1, 0)
    if mask is not None:
        pairs = pairs * float_mask(mask, dtype)[:, tf.newaxis, :]  # [B, t, s]
    logits = tf.broadcast_to(
        logits[..., tf.newaxis, :], tf.concat([shape[:3], [length, length]], axis=0)
    )  # [B, H, k, t, s]
    weights = masked_softmax_weights(logits, pairs[..., tf.newaxis, tf.newaxis, :, :])
    return tf.cast(weights, interest_query.dtype)


def dispatcher_attention_reference(query, key, interest_query, interest_key, interest_value,
                                   value_key, value_value, mask=None, causal=False,
                                   aggregate_bias=None):
    """:func:`tfrs_linear.ops.dispatcher_attention` with explicit per-position interests.

    The definition written out: the aggregate weights of every position
    (:func:`dispatcher_aggregate_weights`), the dispatch keys and values each position
    sees, ``K'[t, g, i] = interest_key[g, i] + Σ_h Σ_s a_t[h, i, s] value_key[h, s, g]``
    (and ``V'`` likewise from ``value_value``), materialised, then per position a softmax
    over the interests: ``Y[t, g] = softmax_i(query[g, t] · K'[t, g, i] / sqrt(d_k)) ·
    V'[t, g, i]``. Padded positions output exactly 0. Arguments as in
    :func:`tfrs_linear.ops.dispatcher_attention` (no chunk size, no causal path).

    Returns:
      ``[B, G, N, d_v]`` in the dtype of ``query``; O(N²·H·k + N·G·k·d) memory.
    """
    tensors = validate_dispatcher_inputs(
        query, key, interest_query, interest_key, interest_value, value_key, value_value
    )
    query = tensors[0]
    dtype = compute_dtype(query.dtype)
    q2, k1, q1, ik, iv, vk, vv = (tf.cast(x, dtype) for x in tensors)
    weights = dispatcher_aggregate_weights(q1, k1, mask, causal, aggregate_bias)
    keys = ik[:, :, tf.newaxis] + tf.einsum("bhits,bhsgd->bgtid", weights, vk)
    values = iv[:, :, tf.newaxis] + tf.einsum("bhits,bhsgd->bgtid", weights, vv)
    logits = tf.einsum("bgtd,bgtid->bgti", q2, keys) * inverse_sqrt_width(q2)
    out = tf.einsum("bgti,bgtiv->bgtv", tf.nn.softmax(logits, axis=-1), values)
    if mask is not None:
        out = out * float_mask(mask, dtype)[:, tf.newaxis, :, tf.newaxis]
    return tf.cast(out, query.dtype)


__all__ = [
    "dispatcher_aggregate_weights",
    "dispatcher_attention_reference",
    "linrec_attention_reference",
    "linrec_attention_scores",
]
