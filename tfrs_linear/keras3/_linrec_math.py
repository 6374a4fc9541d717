"""LinRec attention in ``keras.ops`` (every backend): the math of :mod:`tfrs_linear.ops.linrec`.

Specification: ``docs/linrec.md``. Tensors are per head, ``[batch, heads, length, dim]``,
already projected; masks are float 0/1 ``[batch, length]`` tensors or None. float16 and
bfloat16 inputs are computed in float32 (norms, prefix sums, the d_k x d_v states) and
cast back; float64 stays float64. Padded keys and values are zeroed before any norm or
sum and padded queries output exactly 0. Causal attention is chunk-wise: a masked C x C
product inside each chunk and an exclusive prefix sum of the chunks' d_k x d_v states,
never an N x N matrix and never a state per position; the causal "paper" form's prefix
column norms are masked C x C products too (no cumulative sum over N, which XLA lowers on
CPU to a tree of reduce-windows), as in :mod:`tfrs_linear.ops.linrec`.
"""

from keras import ops

from tfrs_linear.keras3 import _common as C
from tfrs_linear.keras3 import _portable as P

NORMALIZATIONS = ("paper", "token")
DEFAULT_CHUNK_SIZE = 32  # tfrs_linear.ops.linrec's
# Up to this many chunks an exclusive prefix sum over them is one masked matmul.
MATMUL_PREFIX_MAX_CHUNKS = 32


def _resolve_query_mask(key_mask, query_mask, t_len, s_len, causal):
    if query_mask is not None:
        return query_mask
    if key_mask is not None and (causal or (t_len is not None and t_len == s_len)):
        return key_mask
    return None


def linrec_features(q, k, v, key_mask, query_mask, causal, normalization, epsilon,
                    prefix_norm=True):
    """``(q_eff, k_eff, v_eff, query_mask)`` with ``out = q_eff k_effᵀ v_eff`` (lower
    triangular in causal mode) times the query mask; inputs in the compute dtype.
    ``prefix_norm=False`` (causal "paper" only): the queries are not yet divided by the
    prefix norms ``c_t sqrt(n_t)`` (:func:`_causal_paper` does it chunk-wise)."""
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
        scale = ops.sqrt(P.maximum(n, 1.0))[:, None, None, None]
        k_hat = phi_k / (C.safe_norm(phi_k, 2, epsilon) * scale)
        return q_hat, k_hat, v, query_mask
    if not prefix_norm:
        return q_hat, phi_k, v, query_mask
    # Causal: the prefix normalization (c_t, n_t over s <= t) folded into the queries.
    n_t = P.cumsum(counts, axis=1)  # [B, N]
    eps2 = ops.cast(epsilon, dtype) ** 2
    col_t = ops.sqrt(P.maximum(P.cumsum(ops.square(phi_k), axis=2), eps2))
    scale_t = ops.sqrt(P.maximum(n_t, 1.0))[:, None, :, None]
    return q_hat / (col_t * scale_t), phi_k, v, query_mask


def exclusive_chunk_sum(x):
    """``out[:, :, j] = Σ_{j' < j} x[:, :, j']`` over axis 2 of ``x [B, H, n, ...]`` (4 or 5
    axes): a strictly lower-triangular ``n x n`` product when ``n`` is static and at most
    :data:`MATMUL_PREFIX_MAX_CHUNKS`, else a cumulative sum. Exact: weights are 0 or 1."""
    n = x.shape[2]
    if isinstance(n, int) and n <= MATMUL_PREFIX_MAX_CHUNKS:
        strict = ops.tril(ops.ones((n, n), x.dtype), -1)
        rest = "de"[: len(x.shape) - 3]
        return ops.einsum(f"mn,bhn{rest}->bhm{rest}", strict, x)
    inclusive = P.cumsum(x, axis=2)
    return ops.concatenate([ops.zeros_like(inclusive[:, :, :1]), inclusive[:, :, :-1]], axis=2)


def _chunked_causal(qc, kc, vc, tril):
    """Causal linear attention on chunked ``[B, H, n, C, d]`` tensors (the shared core)."""
    scores = ops.einsum("bhncd,bhnsd->bhncs", qc, kc) * tril
    intra = ops.einsum("bhncs,bhnse->bhnce", scores, vc)
    states = ops.einsum("bhncd,bhnce->bhnde", kc, vc)
    return intra + ops.einsum("bhncd,bhnde->bhnce", qc, exclusive_chunk_sum(states))


def _unchunked(out, heads, n_chunks, chunk, length):
    out = ops.reshape(out, [-1, heads, n_chunks * chunk, out.shape[-1]])
    return out[:, :, :length, :]


def causal_linear_attention(q, k, v, chunk_size):
    """``out_t = Σ_{s <= t} (q_t · k_s) v_s`` chunk-wise (shapes ``[B, H, N, d]``)."""
    heads, length = C.dims(q)[1:3]
    chunk, _, n_chunks, chunked = C.chunk_layout(length, chunk_size)
    tril = ops.tril(ops.ones((chunk, chunk), q.dtype))
    out = _chunked_causal(chunked(q, 2), chunked(k, 2), chunked(v, 2), tril)
    return _unchunked(out, heads, n_chunks, chunk, length)


def _prefix_counts(key_mask, k):
    """``n_t``, the real positions up to ``t``: ``[1, N]`` without a mask, else ``[B, N]``."""
    length = k.shape[2]
    if key_mask is None and isinstance(length, int):
        return ops.arange(1, length + 1, dtype=k.dtype)[None]  # no constant to fold
    if key_mask is None:
        key_mask = ops.ones_like(k[:, 0, :, 0])
    return P.cumsum(key_mask, axis=1)


def _causal_paper(q_hat, phi_k, v, key_mask, epsilon, chunk_size):
    """The causal "paper" form from ``q_hat`` (row-normalised ELU(Q) / sqrt(d_k)) and the
    masked ``phi_k``, ``v``: :func:`linrec_features` then :func:`causal_linear_attention`,
    with the prefix column norms ``Σ_{s <= t} φ(k_s)²`` as a masked ``C x C`` product inside
    each chunk plus :func:`exclusive_chunk_sum` of the chunk totals."""
    heads, length = C.dims(q_hat)[1:3]
    chunk, _, n_chunks, chunked = C.chunk_layout(length, chunk_size)
    qc, kc, vc = chunked(q_hat, 2), chunked(phi_k, 2), chunked(v, 2)
    tril = ops.tril(ops.ones((chunk, chunk), q_hat.dtype))
    squares = ops.square(kc)
    col_sq = (ops.einsum("ts,bhnsd->bhntd", tril, squares)
              + exclusive_chunk_sum(ops.sum(squares, axis=3))[:, :, :, None])
    counts = chunked(_prefix_counts(key_mask, phi_k), 1)  # [B or 1, n, C]
    eps2 = ops.cast(epsilon, q_hat.dtype) ** 2
    col = ops.sqrt(P.maximum(col_sq, eps2))
    scale = ops.sqrt(P.maximum(counts, 1.0))[:, None, :, :, None]
    out = _chunked_causal(qc / (col * scale), kc, vc, tril)
    return _unchunked(out, heads, n_chunks, chunk, length)


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
    chunk_size=DEFAULT_CHUNK_SIZE,
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
    paper_causal = causal and normalization == "paper"
    q, k, v, qm = linrec_features(q, k, v, km, qm, causal, normalization, epsilon,
                                  prefix_norm=not paper_causal)
    if paper_causal:
        out = _causal_paper(q, k, v, km, epsilon, chunk_size)
    elif causal:
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
