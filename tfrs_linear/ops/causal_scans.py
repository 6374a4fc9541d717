"""Prefix scans of the chunked causal forms: running maxima, linear recurrences and
exclusive weighted prefix sums along one axis, as a few large ops for XLA.

Used by the causal dispatcher (:mod:`tfrs_linear.ops.dispatcher_causal`) on per-chunk
quantities (the chunk axis is short: ``N / C``). Each takes static lengths through
log-depth doubling or masked matmuls (XLA, training) and dynamic ones through
``tf.scan``.
"""

import tensorflow as tf

from tfrs_linear.ops._common import dims, very_negative


def shift_right(x, shift, axis, fill):
    """``x`` moved ``shift`` places along ``axis`` (static), the gap filled with ``fill``."""
    paddings = [[0, 0]] * x.shape.rank
    paddings[axis] = [shift, 0]
    size = dims(x)
    x = tf.pad(x, paddings, constant_values=fill)
    return tf.slice(x, [0] * x.shape.rank, size)


def running_max(x, axis, neg):
    """Inclusive running maximum along ``axis``: log-depth doubling when the length is
    static (XLA, training), ``tf.scan`` otherwise."""
    axis = axis % x.shape.rank
    n = x.shape[axis]
    if n is None:
        perm = [axis] + [i for i in range(x.shape.rank) if i != axis]
        inverse = [perm.index(i) for i in range(x.shape.rank)]
        return tf.transpose(tf.scan(tf.maximum, tf.transpose(x, perm)), inverse)
    shift = 1
    while shift < n:
        x = tf.maximum(x, shift_right(x, shift, axis, neg))
        shift *= 2
    return x


def linear_recurrence(decay, local, axis):
    """``S_c = decay_c · S_{c-1} + local_c`` along ``axis`` (``S_{-1} = 0``), inclusive.

    ``decay`` broadcasts against ``local`` (``decay`` has no feature axis, ``local`` has
    one more trailing axis). Log-depth doubling (Hillis-Steele) for a static length,
    ``tf.scan`` otherwise. Every decay is in ``[0, 1]``, so nothing overflows.
    """
    axis = axis % decay.shape.rank
    n = decay.shape[axis]
    if n is None:
        perm = [axis] + [i for i in range(decay.shape.rank) if i != axis]
        inverse = [perm.index(i) for i in range(decay.shape.rank)]
        lperm = perm + [decay.shape.rank]
        linverse = inverse + [decay.shape.rank]
        out = tf.scan(
            lambda state, e: e[0][..., tf.newaxis] * state + e[1],
            (tf.transpose(decay, perm), tf.transpose(local, lperm)),
            initializer=tf.zeros_like(tf.transpose(local, lperm)[0]),
        )
        return tf.transpose(out, linverse)
    shift = 1
    while shift < n:
        local = local + decay[..., tf.newaxis] * shift_right(local, shift, axis, 0.0)
        decay = decay * shift_right(decay, shift, axis, 0.0)
        shift *= 2
    return local


def exclusive_prefix_states(run_max, center, locals_):
    """``prev[c] = Σ_{c' < c} exp(R[c'] - center[c]) local[c']`` along the chunk axis.

    ``run_max`` (``R``, non-decreasing) and ``center`` are ``[..., n]`` stop-gradient
    references with ``center[c] >= R[c - 1]``; ``locals_`` is a list of ``[..., n, F_j]``
    tensors (the same weights for each; one result per tensor). Every weight
    is ``exp(min(., 0)) <= 1`` (the products of the step decays telescope), so nothing
    overflows. Two levels of masked matmuls instead of a scan: within groups of ``g``
    chunks a ``g x g`` strictly lower-triangular weighting, across the ``n / g`` groups an
    inclusive one of the group totals (``g ~ sqrt(n)``, so ``O(n^1.5 F)`` work in a few
    large matmuls; the log-depth scan's ``log n`` elementwise passes over ``[n, F]`` cost
    more in time and memory traffic).
    """
    dtype = run_max.dtype
    neg = very_negative(dtype)
    n = dims(run_max)[-1]
    if isinstance(n, int):
        group = 1 << (((max(n, 1) - 1).bit_length() + 1) // 2)  # a power of 2 >= sqrt(n)
    else:
        group = 16
    pad = (-n) % group
    n_groups = (n + pad) // group
    rank = run_max.shape.rank
    lead = dims(run_max)[:-1]

    def grouped(x, extra):
        paddings = [[0, 0]] * x.shape.rank
        paddings[rank - 1] = [0, pad]
        x = tf.pad(x, paddings)
        return tf.reshape(x, lead + [n_groups, group] + extra)

    r = grouped(run_max, [])  # [..., J, g]
    cen = grouped(center, [])
    strict = tf.linalg.band_part(tf.ones([group, group], dtype), -1, 0) - tf.eye(group, dtype=dtype)
    w_in = tf.exp(tf.minimum(r[..., tf.newaxis, :] - cen[..., :, tf.newaxis], 0.0)) * strict
    r_end = r[..., -1]  # [..., J]
    w_end = tf.exp(tf.minimum(r - r_end[..., tf.newaxis], 0.0))[..., tf.newaxis, :]
    incl = tf.linalg.band_part(tf.ones([n_groups, n_groups], dtype), -1, 0)
    w_x = tf.exp(tf.minimum(r_end[..., tf.newaxis, :] - r_end[..., :, tf.newaxis], 0.0)) * incl
    prev_r_end = shift_right(r_end, 1, rank - 1, neg)
    carry = tf.exp(tf.minimum(prev_r_end[..., tf.newaxis] - cen, 0.0))  # [..., J, g]
    results = []
    for local in locals_:
        feat = dims(local)[-1]
        loc = grouped(local, [feat])  # [..., J, g, F]
        within = tf.matmul(w_in, loc)  # [..., J, g, F]
        totals = tf.matmul(w_end, loc)[..., 0, :]  # [..., J, F], relative to r_end
        ends = tf.matmul(w_x, totals)  # [..., J, F]: inclusive, relative to r_end
        prev_ends = shift_right(ends, 1, rank - 1, 0.0)
        out = within + carry[..., tf.newaxis] * prev_ends[..., tf.newaxis, :]
        out = tf.reshape(out, lead + [n_groups * group, feat])
        results.append(out[..., :n, :])
    return results


__all__ = ["exclusive_prefix_states", "linear_recurrence", "running_max", "shift_right"]
