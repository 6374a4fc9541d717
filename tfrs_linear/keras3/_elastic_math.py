"""ELASTIC's attention math in ``keras.ops``: the functions of :mod:`tfrs_linear.ops.elastic`.

Specification: ``docs/elastic.md``. Layout ``[batch, heads, length, dim]``; the ``k``
interests take the place of the length axis. Masks are float 0/1 ``[batch, length]``.
float16/bfloat16 inputs are computed in float32 and cast back; float64 stays float64.
Softmaxes subtract a stop-gradient maximum and divide by ``max(sum, 1)`` (see
:func:`tfrs_linear.keras3._common.masked_softmax_weights`).

The causal fused dispatcher (:func:`causal_dispatcher_attention`) calls
:func:`tfrs_linear.ops.dispatcher_attention_from_values` on the TensorFlow backend (its
chunked fast path on the unfolded values, with the exact per-position fallback). On the
other backends it runs the same pair in ``keras.ops``: the fast path of
:mod:`tfrs_linear.keras3._elastic_fast` where it is exact, else :func:`_causal_exact`,
the per-position form: every weight is relative to its own position's running maximum
(no exponent is ever positive, so it is exact for any logits), chunk-wise with a
``C x C`` block of weights per interest and a rescaled running state across chunks (a
log-depth doubling recurrence, no scan).
"""

import functools
import math

import keras
from keras import ops

from tfrs_linear.keras3 import _common as C
from tfrs_linear.keras3 import _portable as P
from tfrs_linear.keras3._elastic_fast import (
    causal_fast_values,
    fast_path_ok,
    fast_references,
    prefix_references,
    shift_right,
)


def aggregate_logits(q1, k1, bias=None):
    """``q1 · k1 / sqrt(d_k) (+ bias)``: ``[B, H, k, d]``, ``[B, H, N, d]`` -> ``[B, H, k, N]``."""
    logits = ops.einsum("bhid,bhnd->bhin", q1, k1) / math.sqrt(q1.shape[-1])
    if bias is not None:
        logits = logits + ops.cast(bias, logits.dtype)
    return logits


def _cast_all(dtype, *xs):
    return [None if x is None else ops.cast(x, dtype) for x in xs]


def dispatcher_aggregate(query, key, value, mask=None, aggregate_bias=None):
    """N -> k: ``A · value`` with ``A`` a softmax over the real positions (0 if none)."""
    dtype = C.compute_dtype(query.dtype)
    q, k, v, m = _cast_all(dtype, query, key, value, mask)
    weights = C.masked_softmax_weights(
        aggregate_logits(q, k, aggregate_bias),
        None if m is None else m[:, None, None, :],
    )
    return ops.cast(ops.einsum("bhin,bhnv->bhiv", weights, v), query.dtype)


def dispatcher_dispatch(query, key, value, mask=None):
    """k -> N: every position attends over the k interests; padded positions output 0."""
    dtype = C.compute_dtype(query.dtype)
    q, k, v, m = _cast_all(dtype, query, key, value, mask)
    logits = ops.einsum("bhnd,bhid->bhni", q, k) / math.sqrt(q.shape[-1])
    out = ops.einsum("bhni,bhiv->bhnv", ops.softmax(logits, axis=-1), v)
    if m is not None:
        out = out * m[:, None, :, None]
    return ops.cast(out, query.dtype)


def product_key_lookup(queries, sub_keys_1, sub_keys_2, top_m):
    """Exact top-m over ``n²`` product keys: ``(scores [..., m], indices [..., m] int32)``.

    Slot ``(i1, i2)`` (index ``i1 * n + i2``) scores ``q1 · K1[i1] + q2 · K2[i2]``; the
    best ``m`` slots are among the ``m x m`` pairs of each half's best ``m``.
    """
    n, half = sub_keys_1.shape
    lead = C.dims(queries)[:-1]
    flat = ops.reshape(queries, (-1, 2 * half))
    scores_1 = P.matmul(flat[:, :half], ops.transpose(sub_keys_1))  # [R, n]
    scores_2 = P.matmul(flat[:, half:], ops.transpose(sub_keys_2))
    best_1, idx_1 = P.top_k(scores_1, k=top_m)  # [R, m]
    best_2, idx_2 = P.top_k(scores_2, k=top_m)
    candidates = ops.reshape(best_1[:, :, None] + best_2[:, None, :], (-1, top_m * top_m))
    scores, pair = P.top_k(candidates, k=top_m)
    slot_1 = ops.take_along_axis(ops.cast(idx_1, "int32"), pair // top_m, axis=-1)
    slot_2 = ops.take_along_axis(ops.cast(idx_2, "int32"), pair % top_m, axis=-1)
    indices = ops.cast(slot_1 * n + slot_2, "int32")
    shape = lead + [top_m]
    return ops.reshape(scores, shape), ops.reshape(indices, shape)


# ------------------------------------------------------------------ causal dispatcher


def causal_dispatcher_attention(q2, k1, q1, ik, iv, values, fold_k, fold_v, mask, chunk_size,
                                bias=None):
    """The causal fused dispatcher attention (``dispatcher_attention(causal=True)``) with
    the value contributions as ``values`` and their folds.

    Shapes: ``q2 [B, G, N, d_k]``, ``k1 [B, H, N, d_k]``, ``q1 [B, H, k, d_k]``,
    ``ik [B, G, k, d_k]``, ``iv [B, G, k, d_v]``, ``values [B, H, N, d]``, ``fold_k
    [H, d, G, d_k]``, ``fold_v [H, d, G, d_v]`` (the folded values are ``values`` times
    the folds, per head), ``mask [B, N]`` (bool/0-1, or None), ``bias`` broadcastable to
    ``[B, H, k, N]``. Returns ``[B, G, N, d_v]`` in the dtype of ``q2``. On TensorFlow the
    fast path never forms the folded values
    (``tfrs_linear.ops.dispatcher_attention_from_values``).
    """
    if C.backend_name() == "tensorflow":
        from tfrs_linear import ops as tf_ops  # pure TensorFlow, no Keras

        return tf_ops.dispatcher_attention_from_values(
            q2, k1, q1, ik, iv, values, fold_k, fold_v, mask=mask, causal=True,
            chunk_size=chunk_size, aggregate_bias=bias,
        )
    dtype = C.compute_dtype(q2.dtype)
    q2_, k1_, q1_, ik_, iv_, values_, fold_k_, fold_v_, bias_ = _cast_all(
        dtype, q2, k1, q1, ik, iv, values, fold_k, fold_v, bias)
    if mask is None:
        m = ops.ones(C.dims(k1)[:1] + C.dims(k1)[2:3], dtype)
    else:
        m = ops.cast(ops.cast(mask, "bool"), dtype)
    chunk = int(chunk_size)
    logits = aggregate_logits(q1_, k1_, bias_)
    ok = fast_path_ok(fast_references(logits, m, chunk))
    # The fast path always runs, outside any conditional; where it is not exact it runs
    # on zeroed logits (so that its values and gradients stay finite) and its result is
    # discarded. The exact form sits in a `cond` that runs it only there. It is
    # rematerialised, so that differentiating the `cond` carries its inputs across, not
    # every intermediate of its [k, C, C] weights (JAX keeps the residuals of both
    # branches).
    refs = fast_references(ops.where(ok, logits, ops.zeros_like(logits)), m, chunk)
    fast = causal_fast_values(q2_, refs, ik_, iv_, values_, fold_k_, fold_v_, m)
    if bias_ is not None:  # one row per batch row, for the fallback's map over rows
        bias_ = ops.broadcast_to(bias_, ops.shape(logits))
    batch = ops.shape(q2_)[:1]
    folds = [ops.broadcast_to(f[None], batch + ops.shape(f)) for f in (fold_k_, fold_v_)]
    rows = (q2_, k1_, q1_, ik_, iv_, values_, m, *folds) + (() if bias_ is None else (bias_,))
    exact = keras.remat(functools.partial(_exact_rows, chunk=chunk))
    slow = ops.cond(ok, lambda: ops.zeros_like(fast), lambda: exact(rows))
    return ops.cast(ops.where(ok, fast, slow), q2.dtype)


def _exact_rows(rows, chunk):
    """:func:`_causal_exact` one batch row at a time, the folded values formed from the
    values and the folds inside. ``rows``: ``(q2, k1, q1, ik, iv, values, m, fold_k,
    fold_v[, bias])``, each with the batch axis first (the folds repeated per row: every
    tensor the row's function uses is an argument, as TensorFlow's rematerialisation
    differentiates only those).

    A row at a time (each row rematerialised too, so that the map's gradient keeps no
    per-row intermediates) because XLA's temporary buffers count the branches of a
    ``cond`` even when they do not run. With the whole batch's ``[B, H, k, n, C, C]``
    weights there, a forward+backward at batch 8, N=256 needed 62 MiB of temporaries
    against 16 MiB for the fast path alone, beyond what JAX's CPU allocations reuse:
    every call page-faulted them in afresh and the untaken ``cond`` cost 1.7x the fast
    path's time. A row at a time: 23 MiB, 1.0-1.25x.
    """

    def one(row):
        q2, k1, q1, ik, iv, values, m = (x[None] for x in row[:7])
        fold_k, fold_v = row[7:9]
        bias = row[9][None] if len(row) > 9 else None
        vk = ops.einsum("bhnv,hvge->bhnge", values, fold_k)
        vv = ops.einsum("bhnv,hvge->bhnge", values, fold_v)
        return _causal_exact(q2, k1, q1, ik, iv, vk, vv, m, chunk, bias)[0]

    return ops.map(keras.remat(one), rows)


def _linear_recurrence(decay, local, axis):
    """``S_c = decay_c · S_{c-1} + local_c`` along ``axis`` (inclusive, ``S_{-1} = 0``).

    ``local`` has one more trailing axis than ``decay``; every decay is in ``[0, 1]``.
    """
    n, shift = decay.shape[axis], 1
    while shift < n:
        local = local + decay[..., None] * shift_right(local, shift, axis, 0.0)
        decay = decay * shift_right(decay, shift, axis, 0.0)
        shift *= 2
    return local


def _chunk_states(masked, valid, run_max, prev_max, vk_c, vv_c, sizes):
    """The running states before each chunk, relative to ``prev_max``.

    Returns ``(prev_key [B, H, k, n, G, d_k], prev_val [..., G, d_v], prev_z [B, H, k, n])``.
    """
    batch, heads, k_int, n_chunks, n_g, d_k, d_v = sizes
    zeros = ops.zeros_like(masked)
    end_w = ops.where(valid, ops.exp(ops.where(valid, masked - run_max[..., None], zeros)),
                      zeros)  # <= 1, relative to R_c
    local_key = ops.einsum("bhknc,bhncgd->bhkngd", end_w, vk_c)
    local_val = ops.einsum("bhknc,bhncgd->bhkngd", end_w, vv_c)
    local = ops.concatenate(
        [
            ops.reshape(local_key, (-1, heads, k_int, n_chunks, n_g * d_k)),
            ops.reshape(local_val, (-1, heads, k_int, n_chunks, n_g * d_v)),
            ops.sum(end_w, axis=-1)[..., None],
        ],
        axis=-1,
    )
    step_decay = ops.exp(prev_max - run_max)  # <= 1
    states = _linear_recurrence(step_decay, local, 3)  # inclusive, relative to R_c
    prev = shift_right(states, 1, 3, 0.0)  # relative to R_{c-1} = prev_max
    g_dk = n_g * d_k
    prev_key = ops.reshape(prev[..., :g_dk], (-1, heads, k_int, n_chunks, n_g, d_k))
    prev_val = ops.reshape(prev[..., g_dk:-1], (-1, heads, k_int, n_chunks, n_g, d_v))
    return prev_key, prev_val, prev[..., -1]


def _causal_exact(q2, k1, q1, ik, iv, vk, vv, m, chunk, bias):
    """The per-position causal dispatcher (every backend; exact for any logits).

    For interest ``i`` of aggregate head ``h`` the prefix weights of position ``t`` are
    ``exp(a[s] - ref[t])`` over the real ``s <= t``, ``ref[t]`` the running maximum of the
    prefix. Inside a chunk they are an explicit ``C x C`` block per interest; across
    chunks a running state rescaled by ``exp(prev_max - ref[t]) <= 1``. The per-position
    interests are never materialised: the dispatch logits and outputs are formed from the
    states and the ``C x C`` products. Memory ``O(N·H·k·C + N·H·G·(k + C))``.
    """
    dtype = q2.dtype
    neg = C.very_negative(dtype)
    heads, length = k1.shape[1], k1.shape[2]
    k_int, (n_g, d_k), d_v = q1.shape[2], (ik.shape[1], ik.shape[-1]), iv.shape[-1]
    chunk, _, n_chunks, chunked = C.chunk_layout(length, chunk)
    sizes = (None, heads, k_int, n_chunks, n_g, d_k, d_v)

    mask_c = chunked(m, 1)  # [B, n, C]
    logits_c = chunked(aggregate_logits(q1, k1, bias), 3)  # [B, H, k, n, C]
    valid, masked, run_max, prev_max, ref = prefix_references(logits_c, mask_c, neg)
    tril = ops.tril(ops.ones((chunk, chunk), dtype))  # [t, s]
    pair_valid = (tril * mask_c[:, :, None, :])[:, None, None]  # [B, 1, 1, n, C, C]
    diff = masked[..., None, :] - ref[..., None]  # [B, H, k, n, C(t), C(s)], <= 0 if valid
    pair = ops.broadcast_to(pair_valid > 0, ops.shape(diff))
    weights = ops.where(pair, ops.exp(ops.where(pair, diff, ops.zeros_like(diff))), 0.0)
    decay = ops.exp(prev_max[..., None] - ref)  # <= 1, [B, H, k, n, C]

    vk_c, vv_c = chunked(vk, 2), chunked(vv, 2)  # [B, H, n, C, G, d]
    prev_key, prev_val, prev_z = _chunk_states(
        masked, valid, run_max, prev_max, vk_c, vv_c, sizes
    )
    # Normalisers relative to ref[t]: >= 1 with a real prefix, exactly 0 without.
    z = decay * prev_z[..., None] + ops.sum(weights, axis=-1)
    inv_z = 1.0 / C.positive_or_one(z)
    inv_z = ops.transpose(inv_z, (0, 1, 3, 4, 2))[:, :, None]  # [B, H, 1, n, C, k]
    dec = ops.transpose(decay, (0, 1, 3, 4, 2))[:, :, None]

    q_c = chunked(q2, 2)  # [B, G, n, C, d_k]
    q_state = ops.einsum("bgncd,bhkngd->bhgnck", q_c, prev_key)
    q_vk = ops.einsum("bgntd,bhnsgd->bhgnts", q_c, vk_c)
    q_intra = ops.einsum("bhknts,bhgnts->bhgntk", weights, q_vk)
    mean_logits = ops.sum((dec * q_state + q_intra) * inv_z, axis=1)  # [B, G, n, C, k]
    logits = ops.einsum("bgncd,bgkd->bgnck", q_c, ik) + mean_logits
    probs = ops.softmax(logits / math.sqrt(d_k), axis=-1)
    alpha = probs[:, None] * inv_z  # [B, H, G, n, C, k]
    out = ops.einsum("bgnck,bgkv->bgncv", probs, iv)
    out = out + ops.einsum("bhgnck,bhkngv->bgncv", alpha * dec, prev_val)
    beta = ops.einsum("bhgntk,bhknts->bhgnts", alpha, weights)
    out = out + ops.einsum("bhgnts,bhnsgv->bgntv", beta, vv_c)
    out = ops.reshape(out, (-1, n_g, n_chunks * chunk, d_v))[:, :, :length]
    return out * m[:, None, :, None]
