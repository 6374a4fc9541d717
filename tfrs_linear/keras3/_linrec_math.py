"""LinRec attention in ``keras.ops`` (every backend): the math of :mod:`tfrs_linear.ops.linrec`.

Specification: ``docs/linrec.md``. Tensors are per head, ``[batch, heads, length, dim]``,
already projected; masks are float 0/1 ``[batch, length]`` tensors or None. float16 and
bfloat16 inputs are computed in float32 (norms, prefix sums, the d_k x d_v states) and
cast back; float64 stays float64. Padded keys and values are zeroed before any norm or
sum and padded queries output exactly 0. Causal attention is chunk-wise: a masked C x C
product inside each chunk and an exclusive prefix sum of the chunks' d_k x d_v states,
never an N x N matrix and never a state per position.
"""

from keras import ops

from tfrs_linear.keras3 import _common as C

NORMALIZATIONS = ("paper", "token")


def _resolve_query_mask(key_mask, query_mask, t_len, s_len, causal):
    if query_mask is not None:
        return query_mask
    if key_mask is not None and (causal or (t_len is not None and t_len == s_len)):
        return key_mask
    return None


def linrec_features(q, k, v, key_mask, query_mask, causal, normalization, epsilon):
    """``(q_eff, k_eff, v_eff, query_mask)`` with ``out = q_eff k_effᵀ v_eff`` (lower
    triangular in causal mode) times the query mask; inputs in the compute dtype."""
    dtype = q.dtype
    t_len, s_len = q.shape[2], k.shape[2]
    query_mask = _resolve_query_mask(key_mask, query_mask, t_len, s_len, causal)
    d_k = q.shape[-1]
    sqrt_dk = ops.sqrt(ops.cast(d_k, dtype))
    phi_q = ops.elu(q)
    phi_k = ops.elu(k)
    if key_mask is not None:
        km = key_mask[:, None, :, None]
        phi_k = phi_k * km
        v = v * km
    q_hat = phi_q / C.safe_norm(phi_q, -1, epsilon)  # row-wise L2 (both forms)
    if normalization == "token":
        k_hat = phi_k / C.safe_norm(phi_k, -1, epsilon)
        return q_hat / sqrt_dk, k_hat, v, query_mask
    q_hat = q_hat / sqrt_dk
    counts = key_mask if key_mask is not None else ops.ones_like(phi_k[:, 0, :, 0])
    if not causal:
        n = ops.sum(counts, axis=1)  # [B]
        scale = ops.sqrt(ops.maximum(n, 1.0))[:, None, None, None]
        k_hat = phi_k / (C.safe_norm(phi_k, 2, epsilon) * scale)
        return q_hat, k_hat, v, query_mask
    # Causal: the prefix normalization (c_t, n_t over s <= t) folded into the queries.
    n_t = ops.cumsum(counts, axis=1)  # [B, N]
    eps2 = ops.cast(epsilon, dtype) ** 2
    col_t = ops.sqrt(ops.maximum(ops.cumsum(ops.square(phi_k), axis=2), eps2))
    scale_t = ops.sqrt(ops.maximum(n_t, 1.0))[:, None, :, None]
    return q_hat / (col_t * scale_t), phi_k, v, query_mask


def causal_linear_attention(q, k, v, chunk_size):
    """``out_t = Σ_{s <= t} (q_t · k_s) v_s`` chunk-wise (shapes ``[B, H, N, d]``)."""
    shape = C.dims(q)
    heads, length = shape[1], shape[2]
    d_v = C.dims(v)[3]
    chunk, pad, n_chunks = C.chunk_sizes(length, chunk_size)
    qc = C.chunked(q, 2, pad, n_chunks, chunk)  # [B, H, n, C, d_k]
    kc = C.chunked(k, 2, pad, n_chunks, chunk)
    vc = C.chunked(v, 2, pad, n_chunks, chunk)
    tril = ops.tril(ops.ones((chunk, chunk), q.dtype))
    scores = ops.einsum("bhncd,bhnsd->bhncs", qc, kc) * tril
    intra = ops.einsum("bhncs,bhnse->bhnce", scores, vc)
    states = ops.einsum("bhncd,bhnce->bhnde", kc, vc)
    inclusive = ops.cumsum(states, axis=2)
    # Exclusive prefix: the states of the chunks strictly before each chunk.
    prefix = ops.concatenate(
        [ops.zeros_like(inclusive[:, :, :1]), inclusive[:, :, :-1]], axis=2
    )
    inter = ops.einsum("bhncd,bhnde->bhnce", qc, prefix)
    out = ops.reshape(intra + inter, [-1, heads, n_chunks * chunk, d_v])
    return out[:, :, :length, :]


def _prepare(query, key, value, key_mask, query_mask):
    dtype = C.compute_dtype(query.dtype)
    q, k, v = (ops.cast(x, dtype) for x in (query, key, value))
    km = None if key_mask is None else ops.cast(key_mask, dtype)
    qm = None if query_mask is None else ops.cast(query_mask, dtype)
    return q, k, v, km, qm


def linrec_attention(
    query,
    key,
    value,
    key_mask=None,
    query_mask=None,
    causal=False,
    normalization="paper",
    epsilon=1e-6,
    chunk_size=64,
):
    """LinRec attention on ``[B, H, T, d_k]``, ``[B, H, S, d_k]``, ``[B, H, S, d_v]``.

    ``key_mask`` ``[B, S]`` also masks the queries in self-attention (``T == S``) and in
    causal mode unless ``query_mask`` ``[B, T]`` is given. Returns ``[B, H, T, d_v]`` in
    the dtype of ``query``; padded queries give exactly 0.
    """
    if normalization not in NORMALIZATIONS:
        raise ValueError(
            f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}."
        )
    if causal and query.shape[2] is not None and key.shape[2] is not None:
        if query.shape[2] != key.shape[2]:
            raise ValueError(
                "causal LinRec needs query and key of the same length, got "
                f"{query.shape[2]} and {key.shape[2]}."
            )
    q, k, v, km, qm = _prepare(query, key, value, key_mask, query_mask)
    q, k, v, qm = linrec_features(q, k, v, km, qm, causal, normalization, epsilon)
    if causal:
        out = causal_linear_attention(q, k, v, chunk_size)
    else:
        state = ops.einsum("bhsd,bhse->bhde", k, v)
        out = ops.einsum("bhtd,bhde->bhte", q, state)
    if qm is not None:
        out = out * qm[:, None, :, None]
    return ops.cast(out, query.dtype)


def linrec_attention_scores(
    query, key, key_mask=None, query_mask=None, causal=False, normalization="paper",
    epsilon=1e-6,
):
    """The implicit ``[B, H, T, S]`` matrix of :func:`linrec_attention` (O(N²), for
    inspection only)."""
    q, k, v, km, qm = _prepare(query, key, key[..., :1], key_mask, query_mask)
    q, k, _, qm = linrec_features(q, k, v, km, qm, causal, normalization, epsilon)
    scores = ops.einsum("bhtd,bhsd->bhts", q, k)
    if causal:
        length = C.dims(scores)[-1]
        scores = scores * ops.tril(ops.ones((length, length), scores.dtype))
    if qm is not None:
        scores = scores * qm[:, None, :, None]
    return ops.cast(scores, query.dtype)
