"""LinRec: L2-normalized linear attention as pure TensorFlow functions (no Keras).

Specification: ``docs/linrec.md`` (Liu et al., SIGIR 2023, arXiv 2411.01537). The dense
O(N²) form of the same attention (its implicit matrix, for inspection and tests) is in
:mod:`tfrs_linear.ops.reference`; this module never forms an N x N matrix.

All functions take per-head tensors shaped ``[batch, heads, length, dim]`` that are
already projected (the multi-head Q/K/V projections live in the Keras layer) and apply
ELU themselves. Masks are ``[batch, length]`` booleans or 0/1 numbers, True/1 marking a
real item.

Numerics
--------
* Inputs in float16/bfloat16 are computed in float32 (norms, prefix sums and the
  d_k x d_v states) and the result is cast back; float64 stays float64.
* Every norm is ``x / max(||x||, eps)``, computed as ``x / sqrt(max(sum x^2, eps^2))`` so
  that an all-zero row or column (padding) has a finite gradient, not a NaN hidden behind
  ``tf.where``. Counts are ``sqrt(max(n, 1))``.
* Padded keys and values are zeroed before any norm or sum, so a sequence's outputs do
  not depend on how much padding surrounds it. Padded query positions output exactly 0.

Cost
----
Non-causal: ``O(N d_k d_v)`` time, ``O(d_k d_v)`` state per head. Causal: chunk-wise,
``O(N C d + N d_k d_v)`` time with ``C = chunk_size``; memory ``O(N d + (N / C) d_k d_v)``:
never a state per position and never an N x N matrix.
"""

import tensorflow as tf

from tfrs_linear.constants import NORMALIZATIONS
from tfrs_linear.ops._common import (
    check_rank, chunk_layout, chunked, compute_dtype, dims, float_mask,
)


def safe_norm(x, axis, epsilon):
    """``max(||x||_2, epsilon)`` along ``axis`` (kept), with finite gradients at 0."""
    squared = tf.reduce_sum(tf.square(x), axis=axis, keepdims=True)
    return tf.sqrt(tf.maximum(squared, tf.cast(epsilon, x.dtype) ** 2))


def _resolve_masks(mask, query_mask, t_len, s_len, causal, dtype):
    """Returns (key_mask, query_mask) as float tensors or None."""
    key_mask = None if mask is None else float_mask(mask, dtype, "mask")
    if query_mask is not None:
        query_mask = float_mask(query_mask, dtype, "query_mask")
    elif key_mask is not None and (causal or (t_len is not None and t_len == s_len)):
        query_mask = key_mask
    return key_mask, query_mask


def linrec_features(
    query,
    key,
    value,
    mask=None,
    causal=False,
    normalization="paper",
    epsilon=1e-6,
    query_mask=None,
):
    """The effective feature maps of LinRec: ``(q_eff, k_eff, v_eff, query_mask)``.

    The attention output is ``q_eff k_effᵀ v_eff`` (lower-triangular in causal mode), times
    the query mask. Shared by :func:`linrec_attention` and
    :func:`tfrs_linear.ops.reference.linrec_attention_scores`; computed in float32
    (float64 for float64 inputs).
    """
    if normalization not in NORMALIZATIONS:
        raise ValueError(
            f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}."
        )
    query = tf.convert_to_tensor(query)
    key = tf.convert_to_tensor(key, dtype_hint=query.dtype)
    value = tf.convert_to_tensor(value, dtype_hint=query.dtype)
    for name, x in (("query", query), ("key", key), ("value", value)):
        check_rank(name, x, 4, "[batch, heads, length, dim]")
    dtype = compute_dtype(query.dtype)
    q = tf.cast(query, dtype)
    k = tf.cast(key, dtype)
    v = tf.cast(value, dtype)
    t_len, s_len = q.shape[2], k.shape[2]
    if causal and t_len is not None and s_len is not None and t_len != s_len:
        raise ValueError(
            "causal LinRec needs query and key of the same length, got "
            f"{t_len} and {s_len}."
        )
    key_mask, q_mask = _resolve_masks(mask, query_mask, t_len, s_len, causal, dtype)
    d_k = q.shape[-1] if q.shape[-1] is not None else tf.shape(q)[-1]
    sqrt_dk = tf.sqrt(tf.cast(d_k, dtype))

    phi_q = tf.nn.elu(q)
    phi_k = tf.nn.elu(k)
    if key_mask is not None:
        km = key_mask[:, tf.newaxis, :, tf.newaxis]
        phi_k = phi_k * km
        v = v * km
    # Row-wise L2 of the queries, per position over features (both forms).
    q_hat = phi_q / safe_norm(phi_q, -1, epsilon)

    if normalization == "token":
        k_hat = phi_k / safe_norm(phi_k, -1, epsilon)
        return q_hat / sqrt_dk, k_hat, v, q_mask

    q_hat = q_hat / sqrt_dk
    if key_mask is None:
        counts_mask = tf.ones([tf.shape(k)[0], tf.shape(k)[2]], dtype)
    else:
        counts_mask = key_mask
    if not causal:
        n = tf.reduce_sum(counts_mask, axis=1)  # [B]
        scale = tf.sqrt(tf.maximum(n, 1.0))[:, tf.newaxis, tf.newaxis, tf.newaxis]
        k_hat = phi_k / (safe_norm(phi_k, 2, epsilon) * scale)
        return q_hat, k_hat, v, q_mask
    # Causal: normalize over the prefix. Scale the queries by 1 / (sqrt(n_t) c_t).
    n_t = tf.cumsum(counts_mask, axis=1)  # [B, N]
    col_t = tf.sqrt(
        tf.maximum(tf.cumsum(tf.square(phi_k), axis=2), tf.cast(epsilon, dtype) ** 2)
    )  # [B, H, N, d_k]
    scale_t = tf.sqrt(tf.maximum(n_t, 1.0))[:, tf.newaxis, :, tf.newaxis]
    return q_hat / (col_t * scale_t), phi_k, v, q_mask


def causal_linear_attention(query, key, value, chunk_size=64):
    """``out_t = Σ_{s≤t} (q_t · k_s) v_s`` computed chunk-wise.

    Inside a chunk of ``C`` positions a masked ``C x C`` product, across chunks an
    exclusive prefix sum of the chunks' ``d_k x d_v`` states. Memory is
    ``O(N d + (N / C) d_k d_v)``; nothing is ``N x N`` and there is no state per position.
    Shapes ``[B, H, N, d_k]``, ``[B, H, N, d_k]``, ``[B, H, N, d_v]``.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}.")
    batch, heads, length = dims(query)[:3]
    d_v = dims(value)[3]
    chunk, pad, n_chunks = chunk_layout(length, chunk_size)
    q = chunked(query, 2, pad, n_chunks, chunk)  # [B, H, n, C, d_k]
    k = chunked(key, 2, pad, n_chunks, chunk)
    v = chunked(value, 2, pad, n_chunks, chunk)  # [B, H, n, C, d_v]
    tril = tf.linalg.band_part(tf.ones([chunk, chunk], query.dtype), -1, 0)
    scores = tf.einsum("bhncd,bhnsd->bhncs", q, k) * tril
    intra = tf.einsum("bhncs,bhnse->bhnce", scores, v)
    states = tf.einsum("bhncd,bhnce->bhnde", k, v)
    prefix = tf.cumsum(states, axis=2, exclusive=True)
    inter = tf.einsum("bhncd,bhnde->bhnce", q, prefix)
    out = tf.reshape(intra + inter, [batch, heads, n_chunks * chunk, d_v])
    return out[:, :, :length, :]


def linrec_attention(
    query,
    key,
    value,
    mask=None,
    causal=False,
    normalization="paper",
    epsilon=1e-6,
    chunk_size=64,
    query_mask=None,
):
    """LinRec attention on projected ``[batch, heads, length, dim]`` tensors.

    Args:
      query: ``[B, H, T, d_k]``.
      key: ``[B, H, S, d_k]``.
      value: ``[B, H, S, d_v]`` (``d_v`` may differ from ``d_k``).
      mask: optional ``[B, S]`` padding mask of the keys (True/1 = real item). It also
        masks the queries when ``T == S`` (self-attention) or in causal mode.
      causal: the leak-free prefix-normalized form (needs ``T == S``), chunk-wise.
      normalization: ``"paper"`` (default): row-wise L2 of ELU(Q) with ``1/sqrt(d_k)``,
        column-wise L2 of the masked ELU(K) over the real positions with ``1/sqrt(n)``.
        ``"token"``: the official code's form, ELU then per-position L2 of both, output
        divided by ``sqrt(d_k)``.
      epsilon: the norms' floor, ``x / max(||x||, epsilon)``.
      chunk_size: chunk length of the causal computation.
      query_mask: optional ``[B, T]`` padding mask of the queries, when it differs from
        ``mask`` (cross-attention).

    Returns:
      ``[B, H, T, d_v]`` in the dtype of ``query``; padded queries give exactly 0.
    """
    query = tf.convert_to_tensor(query)
    q, k, v, q_mask = linrec_features(
        query, key, value, mask, causal, normalization, epsilon, query_mask
    )
    if causal:
        out = causal_linear_attention(q, k, v, chunk_size)
    else:
        state = tf.einsum("bhsd,bhse->bhde", k, v)
        out = tf.einsum("bhtd,bhde->bhte", q, state)
    if q_mask is not None:
        out = out * q_mask[:, tf.newaxis, :, tf.newaxis]
    return tf.cast(out, query.dtype)


__all__ = [
    "NORMALIZATIONS",
    "causal_linear_attention",
    "linrec_attention",
    "linrec_features",
    "safe_norm",
]
