"""The causal dispatcher's fast path in ``keras.ops`` (JAX and the other non-TF backends).

The same math as :func:`tfrs_linear.ops.dispatcher_causal._causal_dispatcher_fast_values`
(the TensorFlow backend's fast path; its module docstring has the numerics): ONE
stop-gradient reference ``m_c`` per interest and chunk, so that position ``t``'s prefix
weights ``exp(a[s] - ref[t])`` factorise into ``e[s] = exp(a[s] - m_c)`` times a row
constant that cancels against the normaliser. The chunk-local prefix sums are then masked
``C x C`` by ``C x k`` matmuls instead of the exact form's ``[k, C, C]`` weights (16x
fewer elements at ``k = 16``), and the states before each chunk come from two levels of
masked matmuls (:func:`exclusive_prefix_states`). The states and chunk sums are over the
unfolded values ``[B, H, N, d]``; the folds ``W_o1 W_k2`` / ``W_o1 W_v2`` are applied to
the queries before and to the weighted values after.

Exact when :func:`fast_path_ok`: for every interest and chunk the running maximum of the
logits rises by at most ``2 * FAST_HALF_RANGE = 60`` over the chunk's positions with a real
prefix (every exponent ``<= 30``, every normaliser ``>= exp(-30)``: nothing over- or
underflows in float32). :func:`tfrs_linear.keras3._elastic_math.causal_dispatcher_attention`
switches on it with ``keras.ops.cond`` (one branch runs, its gradient too) and takes the
exact per-position form otherwise.
"""

import math

from keras import ops

from tfrs_linear.keras3 import _common as C
from tfrs_linear.keras3 import _portable as P

FAST_HALF_RANGE = 30.0


def shift_right(x, shift, axis, fill):
    """``x`` moved ``shift`` places along ``axis`` (static), the gap filled with ``fill``."""
    n = x.shape[axis]
    return C.take_axis(C.pad_axis(x, axis, shift, 0, fill), axis, 0, n)


def running_max(x, axis, neg):
    """Inclusive running maximum along a static ``axis`` by log-depth doubling."""
    n, shift = x.shape[axis], 1
    while shift < n:
        x = P.maximum(x, shift_right(x, shift, axis, neg))
        shift *= 2
    return x


def prefix_references(logits_c, mask_c, neg):
    """Stop-gradient running maxima of chunked logits ``[B, H, k, n, C]`` (both causal
    forms start from them).

    Returns ``(valid, masked, run_max, prev_max, ref)``: ``masked`` the logits with
    padding replaced by ``neg``, ``run_max`` the running maximum at the end of each chunk,
    ``prev_max`` the one before it, ``ref`` the running maximum over each position's
    prefix (previous chunks included).
    """
    valid = ops.broadcast_to(mask_c[:, None, None] > 0, ops.shape(logits_c))
    masked = ops.where(valid, logits_c, neg)
    plain = ops.stop_gradient(masked)
    run_max = running_max(ops.max(plain, axis=-1), 3, neg)  # [B, H, k, n]
    prev_max = shift_right(run_max, 1, 3, neg)
    ref = P.maximum(running_max(plain, 4, neg), prev_max[..., None])
    return valid, masked, run_max, prev_max, ref


def fast_references(logits, m, chunk):
    """The chunked logits' stop-gradient references (shared by the check and the path).

    ``logits [B, H, k, N]`` (scaled aggregate logits), ``m [B, N]`` float 0/1. Returns a
    dict: ``valid``/``masked`` ``[B, H, k, n, C]`` (padding replaced by a very negative
    number), ``run_max`` (the running maximum at each chunk's end) and ``center`` (the
    midpoint of the rise of the running maximum over the chunk's positions with a real
    prefix; ``run_max`` where none has) ``[B, H, k, n]``, ``half_range`` (half that rise),
    the chunk layout ``chunk``, ``chunked`` and ``mask_c [B, n, C]``.
    """
    neg = C.very_negative(logits.dtype)
    chunk, _, _, chunked = C.chunk_layout(logits.shape[3], chunk)
    mask_c = chunked(m, 1)
    has_prefix = chunked(P.cumsum(m, axis=1), 1) > 0  # a real item at or before
    valid, masked, run_max, _, ref = prefix_references(chunked(logits, 3), mask_c, neg)
    low = ops.min(ops.where(has_prefix[:, None, None], ref, run_max[..., None]), axis=-1)
    half_range = 0.5 * (run_max - low)
    return {"valid": valid, "masked": masked, "run_max": run_max,
            "center": low + half_range, "half_range": half_range, "chunk": chunk,
            "chunked": chunked, "mask_c": mask_c}


def fast_path_ok(refs):
    """Scalar bool: the fast path is exact for the references of :func:`fast_references`."""
    return ops.all(refs["half_range"] <= FAST_HALF_RANGE)


def exclusive_prefix_states(run_max, center, locals_):
    """``prev[c] = Σ_{c' < c} exp(R[c'] - center[c]) local[c']`` along the last axis of
    ``run_max``/``center`` (``[..., n]``, ``center[c] >= R[c - 1]``), for each
    ``[..., n, F]`` tensor of ``locals_``. Every weight is ``<= 1``. Two levels of masked
    matmuls (groups of ``g ~ sqrt(n)`` chunks, then the group totals), as
    :func:`tfrs_linear.ops.causal_scans.exclusive_prefix_states`.
    """
    dtype = run_max.dtype
    neg = C.very_negative(dtype)
    n = run_max.shape[-1]
    group = 1 << (((max(n, 1) - 1).bit_length() + 1) // 2)  # a power of 2 >= sqrt(n)
    pad = (-n) % group
    n_groups = (n + pad) // group
    axis = len(run_max.shape) - 1
    lead = C.dims(run_max)[:-1]

    def grouped(x, extra):
        return ops.reshape(C.pad_axis(x, axis, 0, pad), lead + [n_groups, group] + extra)

    r, cen = grouped(run_max, []), grouped(center, [])  # [..., J, g]
    strict = ops.tril(ops.ones((group, group), dtype), -1)
    w_in = ops.exp(P.minimum(r[..., None, :] - cen[..., :, None], 0.0)) * strict
    r_end = r[..., -1]  # [..., J]
    w_end = ops.exp(P.minimum(r - r_end[..., None], 0.0))[..., None, :]
    incl = ops.tril(ops.ones((n_groups, n_groups), dtype))
    w_x = ops.exp(P.minimum(r_end[..., None, :] - r_end[..., :, None], 0.0)) * incl
    prev_r_end = shift_right(r_end, 1, axis, neg)
    carry = ops.exp(P.minimum(prev_r_end[..., None] - cen, 0.0))  # [..., J, g]
    results = []
    for local in locals_:
        feat = local.shape[-1]
        loc = grouped(local, [feat])  # [..., J, g, F]
        within = P.matmul(w_in, loc)
        totals = P.matmul(w_end, loc)[..., 0, :]  # [..., J, F], relative to r_end
        prev_ends = shift_right(P.matmul(w_x, totals), 1, axis, 0.0)
        out = within + carry[..., None] * prev_ends[..., None, :]
        results.append(ops.reshape(out, lead + [n_groups * group, feat])[..., :n, :])
    return results


def causal_fast_values(q2, refs, ik, iv, values, fold_k, fold_v, m):
    """The fast path on cast tensors: ``q2 [B, G, N, d_k]``, ``refs`` from
    :func:`fast_references`, ``ik [B, G, k, d_k]``, ``iv [B, G, k, d_v]``, ``values
    [B, H, N, d]``, ``fold_k [H, d, G, d_k]``, ``fold_v [H, d, G, d_v]``, ``m [B, N]``.
    Returns ``[B, G, N, d_v]``; exact only where :func:`fast_path_ok`."""
    length, n_g, d_v = q2.shape[2], q2.shape[1], iv.shape[-1]
    scale = 1.0 / math.sqrt(ik.shape[-1])
    valid, masked, chunked = refs["valid"], refs["masked"], refs["chunked"]
    run_max, center, chunk = refs["run_max"], refs["center"], refs["chunk"]
    zeros = ops.zeros_like(masked)
    # Clamped where the path is not exact (its result is then not used): stays finite.
    e = ops.where(valid, ops.exp(P.minimum(masked - center[..., None], FAST_HALF_RANGE)),
                  zeros)  # [B, H, k, n, C]
    end_w = ops.where(valid, ops.exp(ops.where(valid, masked - run_max[..., None], zeros)),
                      zeros)  # relative to the chunk's end, <= 1
    tril = ops.tril(ops.ones((chunk, chunk), e.dtype))
    q_c, v_c = chunked(q2, 2), chunked(values, 2)  # [B, G, n, C, d_k], [B, H, n, C, d]
    prev_v, prev_z = exclusive_prefix_states(
        run_max, center,
        [ops.einsum("bhknc,bhncf->bhknf", end_w, v_c), ops.sum(end_w, axis=-1)[..., None]])
    e_t = ops.transpose(e, (0, 1, 3, 4, 2))  # [B, H, n, C(s), k]

    q_fold = ops.einsum("bgncd,hvgd->bhgncv", q_c, fold_k)  # [B, H, G, n, C, d]
    q_state = ops.einsum("bhgncv,bhknv->bhgnck", q_fold, prev_v)
    q_v = ops.einsum("bhgntv,bhnsv->bhgnts", q_fold, v_c) * tril
    q_intra = ops.einsum("bhgnts,bhnsk->bhgntk", q_v, e_t)
    # Normalisers relative to m_c: >= exp(-30) with a real prefix, else exactly 0.
    z = prev_z[..., 0][..., None] + ops.einsum("bhkns,ts->bhknt", e, tril)
    inv_z = ops.transpose(1.0 / C.positive_or_one(z), (0, 1, 3, 4, 2))[:, :, None]
    mean_logits = ops.sum((q_state + q_intra) * inv_z, axis=1)  # [B, G, n, C, k]
    probs = ops.softmax((ops.einsum("bgncd,bgkd->bgnck", q_c, ik) + mean_logits) * scale,
                        axis=-1)
    alpha = probs[:, None] * inv_z  # [B, H, G, n, C, k]
    beta = ops.einsum("bhgntk,bhnsk->bhgnts", alpha, e_t) * tril
    mixed = (ops.einsum("bhgnck,bhknv->bhgncv", alpha, prev_v)
             + ops.einsum("bhgnts,bhnsv->bhgntv", beta, v_c))  # [B, H, G, n, C, d]
    out = (ops.einsum("bgnck,bgkv->bgncv", probs, iv)
           + ops.einsum("bhgncv,hvge->bgnce", mixed, fold_v))
    out = ops.reshape(out, (-1, n_g, out.shape[2] * chunk, d_v))[:, :, :length]
    return out * m[:, None, :, None]
