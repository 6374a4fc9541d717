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
never a state per position and never an N x N matrix. Every prefix sum of the causal form
(the column norms, the counts, the chunk states) is a masked matmul inside a chunk plus an
exclusive sum over the chunk totals (:func:`exclusive_chunk_sum`), so the graph has a fixed
number of large ops whatever N (no ``tf.cumsum`` over N: XLA's CPU lowering of a long
cumulative sum is a tree of reduce-windows, several times slower than the matmul).
"""

import tensorflow as tf

from tfrs_linear.constants import NORMALIZATIONS
from tfrs_linear.ops._common import (
    check_rank, chunk_layout, chunked, compute_dtype, dims, float_mask,
)

# The default chunk length of the causal form: the fastest of 16, 32 and 64 for the op's
# forward+backward under XLA on CPU at N = 256 and 1024 (batch 8, 2 heads of width 32;
# docs/bench/causal/README.md).
DEFAULT_CHUNK_SIZE = 32
# Up to this many chunks the exclusive sum over the chunk totals is one masked matmul
# (n² F work, a single large op); beyond, a cumulative sum (n F work).
_MATMUL_PREFIX_MAX_CHUNKS = 32


def _check_chunk_size(chunk_size):
    if int(chunk_size) < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}.")


def exclusive_chunk_sum(x):
    """``out[:, :, j] = Σ_{j' < j} x[:, :, j']`` over axis 2 of ``x [B, H, n, ...]``.

    A strictly lower-triangular ``n x n`` matmul when ``n`` is static and at most
    ``_MATMUL_PREFIX_MAX_CHUNKS`` (one batched matmul; its gradient is another), else
    ``tf.cumsum(exclusive=True)``. Exact: every weight is 0 or 1.
    """
    shape = dims(x)
    n = shape[2]
    if not isinstance(n, int) or n > _MATMUL_PREFIX_MAX_CHUNKS:
        return tf.cumsum(x, axis=2, exclusive=True)
    if n == 1:
        return tf.zeros_like(x)
    strict = tf.linalg.band_part(tf.ones([n, n], x.dtype), -1, 0) - tf.eye(n, dtype=x.dtype)
    flat = tf.reshape(x, shape[:3] + [-1])  # [B, H, n, F]
    out = tf.matmul(tf.broadcast_to(strict, shape[:2] + [n, n]), flat)
    return tf.reshape(out, shape)


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


def _prepare(query, key, value, mask, causal, normalization, epsilon, query_mask):
    """Checks, casts and ELU-maps the inputs: the part shared by both normalizations.

    Returns ``(q_hat, phi_k, v, key_mask, q_mask)`` in the compute dtype: ``q_hat`` the
    row-normalised ELU(Q) (not yet divided by ``sqrt(d_k)``), ``phi_k`` and ``v`` with
    padded keys zeroed, the masks as float ``[B, length]`` tensors or None.
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
    phi_q = tf.nn.elu(q)
    phi_k = tf.nn.elu(k)
    if key_mask is not None:
        km = key_mask[:, tf.newaxis, :, tf.newaxis]
        phi_k = phi_k * km
        v = v * km
    # Row-wise L2 of the queries, per position over features (both forms).
    return phi_q / safe_norm(phi_q, -1, epsilon), phi_k, v, key_mask, q_mask


def _sqrt_width(x):
    d_k = x.shape[-1] if x.shape[-1] is not None else tf.shape(x)[-1]
    return tf.sqrt(tf.cast(d_k, x.dtype))


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
    the query mask. Used by :func:`linrec_attention` (all but the causal "paper" form, which
    computes the same prefix normalization chunk-wise) and by
    :func:`tfrs_linear.ops.reference.linrec_attention_scores`; computed in float32 (float64
    for float64 inputs).
    """
    q_hat, phi_k, v, key_mask, q_mask = _prepare(
        query, key, value, mask, causal, normalization, epsilon, query_mask
    )
    dtype = q_hat.dtype
    q_hat = q_hat / _sqrt_width(q_hat)
    if normalization == "token":
        return q_hat, phi_k / safe_norm(phi_k, -1, epsilon), v, q_mask
    if not causal:
        if key_mask is None:
            n = tf.cast(tf.shape(phi_k)[2], dtype)[tf.newaxis]  # [1]
        else:
            n = tf.reduce_sum(key_mask, axis=1)  # [B]
        scale = tf.sqrt(tf.maximum(n, 1.0))[:, tf.newaxis, tf.newaxis, tf.newaxis]
        return q_hat, phi_k / (safe_norm(phi_k, 2, epsilon) * scale), v, q_mask
    # Causal: normalize over the prefix. Scale the queries by 1 / (sqrt(n_t) c_t).
    n_t = _prefix_counts(key_mask, phi_k)[:, tf.newaxis, :, tf.newaxis]
    col_t = tf.sqrt(
        tf.maximum(tf.cumsum(tf.square(phi_k), axis=2), tf.cast(epsilon, dtype) ** 2)
    )  # [B, H, N, d_k]
    return q_hat / (col_t * tf.sqrt(tf.maximum(n_t, 1.0))), phi_k, v, q_mask


def _prefix_counts(key_mask, k):
    """``n_t``, the real positions up to t: ``[1, N]`` without a mask, else ``[B, N]``."""
    if key_mask is None:
        return tf.range(1, dims(k)[2] + 1, dtype=k.dtype)[tf.newaxis]
    return tf.cumsum(key_mask, axis=1)  # [B, N]: small next to the [B, H, N, d] sums


def _chunked_causal(q, k, v, tril):
    """Causal linear attention on chunked ``[B, H, n, C, d]`` tensors (the shared core)."""
    scores = tf.einsum("bhncd,bhnsd->bhncs", q, k) * tril
    intra = tf.einsum("bhncs,bhnse->bhnce", scores, v)
    states = tf.einsum("bhncd,bhnce->bhnde", k, v)
    inter = tf.einsum("bhncd,bhnde->bhnce", q, exclusive_chunk_sum(states))
    return intra + inter


def causal_linear_attention(query, key, value, chunk_size=DEFAULT_CHUNK_SIZE):
    """``out_t = Σ_{s≤t} (q_t · k_s) v_s`` computed chunk-wise.

    Inside a chunk of ``C`` positions a masked ``C x C`` product, across chunks an
    exclusive prefix sum of the chunks' ``d_k x d_v`` states (:func:`exclusive_chunk_sum`:
    one masked matmul up to 32 chunks). Memory is ``O(N d + (N / C) d_k d_v)``; nothing is
    ``N x N`` and there is no state per position. The graph has a fixed number of ops
    whatever N. Shapes ``[B, H, N, d_k]``, ``[B, H, N, d_k]``, ``[B, H, N, d_v]``.
    """
    _check_chunk_size(chunk_size)
    query = tf.convert_to_tensor(query)
    key = tf.convert_to_tensor(key, dtype_hint=query.dtype)
    value = tf.convert_to_tensor(value, dtype_hint=query.dtype)
    batch, heads, length = dims(query)[:3]
    d_v = dims(value)[3]
    chunk, pad, n_chunks = chunk_layout(length, chunk_size)
    q, k, v = (chunked(x, 2, pad, n_chunks, chunk) for x in (query, key, value))
    tril = tf.linalg.band_part(tf.ones([chunk, chunk], query.dtype), -1, 0)
    out = tf.reshape(_chunked_causal(q, k, v, tril), [batch, heads, n_chunks * chunk, d_v])
    return out[:, :, :length, :]


def _causal_paper(q_hat, phi_k, v, key_mask, epsilon, chunk_size):
    """The causal "paper" form, prefix normalization included, in one chunked layout.

    The same numbers as :func:`linrec_features` followed by
    :func:`causal_linear_attention`, but the prefix column norms are a masked ``C x C``
    matmul inside each chunk plus :func:`exclusive_chunk_sum` of the chunk totals, not a
    ``tf.cumsum`` over N (XLA lowers a long cumulative sum on CPU to a tree of
    reduce-windows: a fifth of the op's time), and every tensor is chunked once.
    ``q_hat`` is the row-normalised ELU(Q), ``phi_k``/``v`` are masked;
    ``[B, H, N, d]`` each.
    """
    _check_chunk_size(chunk_size)
    batch, heads, length = dims(q_hat)[:3]
    d_v = dims(v)[3]
    chunk, pad, n_chunks = chunk_layout(length, chunk_size)
    qc, kc, vc = (chunked(x, 2, pad, n_chunks, chunk) for x in (q_hat, phi_k, v))
    tril = tf.linalg.band_part(tf.ones([chunk, chunk], q_hat.dtype), -1, 0)
    squares = tf.square(kc)
    col_sq = tf.einsum("ts,bhnsd->bhntd", tril, squares) + exclusive_chunk_sum(
        tf.reduce_sum(squares, axis=3)
    )[:, :, :, tf.newaxis]  # [B, H, n, C, d_k]: Σ_{s<=t} φ(k_s)²
    counts = chunked(_prefix_counts(key_mask, phi_k), 1, pad, n_chunks, chunk)  # [., n, C]
    # The same arithmetic as linrec_features: q_hat / sqrt(d_k) / (c_t sqrt(n_t)).
    col = tf.sqrt(tf.maximum(col_sq, tf.cast(epsilon, q_hat.dtype) ** 2))
    scale = tf.sqrt(tf.maximum(counts, 1.0))[:, tf.newaxis, :, :, tf.newaxis]
    qc = qc / _sqrt_width(qc) / (col * scale)
    out = tf.reshape(_chunked_causal(qc, kc, vc, tril), [batch, heads, n_chunks * chunk, d_v])
    return out[:, :, :length, :]


def linrec_attention(
    query,
    key,
    value,
    mask=None,
    causal=False,
    normalization="paper",
    epsilon=1e-6,
    chunk_size=DEFAULT_CHUNK_SIZE,
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
      chunk_size: chunk length of the causal computation (default
        :data:`DEFAULT_CHUNK_SIZE`); changes nothing but rounding.
      query_mask: optional ``[B, T]`` padding mask of the queries, when it differs from
        ``mask`` (cross-attention).

    Returns:
      ``[B, H, T, d_v]`` in the dtype of ``query``; padded queries give exactly 0.
    """
    query = tf.convert_to_tensor(query)
    if causal and normalization == "paper":
        q_hat, phi_k, v, key_mask, q_mask = _prepare(
            query, key, value, mask, causal, normalization, epsilon, query_mask
        )
        out = _causal_paper(q_hat, phi_k, v, key_mask, epsilon, chunk_size)
    else:
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
    "DEFAULT_CHUNK_SIZE",
    "NORMALIZATIONS",
    "causal_linear_attention",
    "exclusive_chunk_sum",
    "linrec_attention",
    "linrec_features",
    "safe_norm",
]
