"""The causal ELASTIC dispatcher's recurrent (streaming) form in ``keras.ops``: every backend.

The math of :mod:`tfrs_linear.ops.dispatcher_recurrent` (its docstring derives it),
written in ``keras.ops``. Per user, aggregate head ``h`` and interest ``i`` the past is
the unnormalised softmax sums of its aggregate weights relative to a running maximum:

    max             [B, H, k]          the running maximum of the aggregate logits
    normalizer      [B, H, k]          Σ_s exp(u(s) − max)
    key_sum         [B, H, k, G, d_k]  Σ_s exp(u(s) − max) value_key[h, s, g]
    value_sum       [B, H, k, G, d_v]  Σ_s exp(u(s) − max) value_value[h, s, g]
    count           [B]                the real events
    <name>_comp     same shape         Kahan compensation of each sum (not of max)

with ``value_key = values · W_o1 W_k2`` and ``value_value = values · W_o1 W_v2`` per
head. The recency slope ``λ`` ages every old logit by ``λ`` per real event, so the sums
decay by ``exp(M − λ − M') <= 1`` as each event arrives. Keys, shapes and dtype are
those of the TensorFlow form. No exponent is ever positive; the state and the
arithmetic are float32 for every input dtype.
"""

import math

from keras import ops

from tfrs_linear.keras3 import _common as C
from tfrs_linear.keras3._linrec_recurrent import (
    COMP_SUFFIX, check_state_layout, compensated_add, compensated_value, events_mask,
)

# The running sums of the state; each has a "<name>_comp" compensation.
STATE_SUMS = ("normalizer", "key_sum", "value_sum", "count")


def _shapes(batch, heads, k, n_g, d_k, d_v):
    return {"max": (batch, heads, k), "normalizer": (batch, heads, k),
            "key_sum": (batch, heads, k, n_g, d_k), "value_sum": (batch, heads, k, n_g, d_v),
            "count": (batch,)}


def initial_state(batch, heads, k, n_g, d_k, d_v):
    """The state of ``batch`` users with no event yet (``max`` very negative, sums 0)."""
    shapes = _shapes(batch, heads, k, n_g, d_k, d_v)
    state = {"max": ops.full(shapes["max"], C.very_negative("float32"), "float32")}
    for name in STATE_SUMS:
        state[name] = ops.zeros(shapes[name], "float32")
        state[name + COMP_SUFFIX] = ops.zeros(shapes[name], "float32")
    return state


def check_state(state, batch, heads, k, n_g, d_k, d_v):
    """Raises a ``ValueError`` naming the key, shape or dtype that does not fit
    (``batch`` None when unknown)."""
    check_state_layout(state, "an ELASTIC dispatcher state",
                       _shapes(batch, heads, k, n_g, d_k, d_v), compensated=STATE_SUMS)


def _masked_logits(logits, r, slope):
    """``(masked [B, H, k, m], valid, counts [B, m])``: the new events' logits as the
    state sees them (``+ slope c_s``, ``c_s`` the real new events up to ``s``), very
    negative at padding."""
    counts = ops.cumsum(r, axis=1)
    if slope is not None:
        logits = logits + slope[..., None] * counts[:, None, None, :]
    valid = ops.broadcast_to(r[:, None, None, :] > 0, ops.shape(logits))
    return ops.where(valid, logits, C.very_negative("float32")), valid, counts


def _new_max(ref_last, slope, counts):
    """The state's maximum after the call: the last reference, aged by its real events."""
    if slope is None:
        return ref_last
    return ref_last - slope * counts[:, -1][:, None, None]


def _prefix_weights(state, logits, r, slope):
    """``(weights [B, H, k, m(t), m(s)], old [B, H, k, m], final_max)``: ``exp(u_s −
    ref_t)`` for real ``s <= t`` (else 0) and ``exp(M − ref_t)``, ``ref_t`` the running
    maximum of the state and the real new events up to ``t``."""
    neg = C.very_negative("float32")
    masked, valid, counts = _masked_logits(logits, r, slope)
    m = C.dims(logits)[-1]  # an int, or a scalar tensor in a graph of unknown m
    tril = ops.cast(ops.tril(ops.ones((m, m), "int32")), "bool")  # [t, s]: s <= t
    pair = ops.logical_and(tril, valid[..., None, :])  # [B, H, k, t, s]
    old_max = state["max"]
    ref = ops.max(ops.where(pair, masked[..., None, :], neg), axis=-1)
    ref = ops.stop_gradient(ops.maximum(ref, old_max[..., None]))  # [B, H, k, m]
    shifted = ops.minimum(masked[..., None, :] - ref[..., None], 0.0)
    weights = ops.where(pair, ops.exp(shifted), 0.0)
    old = ops.exp(ops.minimum(old_max[..., None] - ref, 0.0))
    return weights, old, _new_max(ref[..., -1], slope, counts)


def _last_weights(state, logits, r, slope):
    """The last row of :func:`_prefix_weights` alone, in ``O(m)``: ``(last [B, H, k, m],
    decay [B, H, k], final_max)``."""
    masked, valid, counts = _masked_logits(logits, r, slope)
    old_max = state["max"]
    ref = ops.stop_gradient(ops.maximum(ops.max(masked, axis=-1), old_max))
    last = ops.where(valid, ops.exp(ops.minimum(masked - ref[..., None], 0.0)), 0.0)
    decay = ops.exp(ops.minimum(old_max - ref, 0.0))
    return last, decay, _new_max(ref, slope, counts)


def _dispatch(state, weights, old, q2, ik, iv, vk, vv, r):
    """The dispatch outputs ``[B, G, m, d_v]`` of the new events (0 at padding)."""
    z = old * compensated_value(state, "normalizer")[..., None] + ops.sum(weights, axis=-1)
    inv_z = 1.0 / ops.maximum(z, 1.0)  # [B, H, k, m]

    def mean(name, values):  # values [B, H, m, G, d] -> [B, G, m, k, d]
        past = ops.einsum("bhkt,bhkgd->bhktgd", old, compensated_value(state, name))
        new = ops.einsum("bhkts,bhsgd->bhktgd", weights, values)
        summed = ops.sum((past + new) * inv_z[..., None, None], axis=1)
        return ops.transpose(summed, (0, 3, 2, 1, 4))

    keys = ik[:, :, None] + mean("key_sum", vk)  # [B, G, m, k, d_k]
    values = iv[:, :, None] + mean("value_sum", vv)
    logits = ops.einsum("bgtd,bgtkd->bgtk", q2, keys) / math.sqrt(q2.shape[-1])
    out = ops.einsum("bgtk,bgtkd->bgtd", ops.softmax(logits, axis=-1), values)
    return out * r[:, None, :, None]


def _advance(state, last, decay, final_max, key_add, value_add, r):
    """The state after the call: the sums rescaled to the new maximum plus the new events."""
    additions = {
        "normalizer": (ops.sum(last, axis=-1), decay),
        "key_sum": (key_add, decay[..., None, None]),
        "value_sum": (value_add, decay[..., None, None]),
        "count": (ops.sum(r, axis=1), None),
    }
    new_state = {"max": final_max}
    for name, (x, scale) in additions.items():
        new_state[name], new_state[name + COMP_SUFFIX] = compensated_add(
            state[name], state[name + COMP_SUFFIX], x, scale)
    return new_state


def _fold(values, fold):
    """``values [B, H, m, d]`` times a per-head fold ``[H, d, G, e]``: ``[B, H, m, G, e]``."""
    return ops.einsum("bhsv,hvge->bhsge", values, fold)


def _aggregate_terms(state, k1, q1, mask, recency_slope):
    """``(r [B, m], logits [B, H, k, m], slope [B, H, k] or None)`` of a call."""
    r = events_mask(mask, k1)
    logits = ops.einsum("bhid,bhnd->bhin", q1, k1) / math.sqrt(q1.shape[-1])
    slope = None
    if recency_slope is not None:
        slope = ops.broadcast_to(ops.cast(recency_slope, "float32"), ops.shape(state["max"]))
    return r, logits, slope


def step(state, q2, k1, q1, ik, iv, values, fold_k, fold_v, mask, recency_slope):
    """Feeds ``m`` new events per user: ``(new_state, outputs [B, G, m, d_v] float32)``.

    ``q2 [B, G, m, d_k]`` the dispatch queries, ``k1 [B, H, m, d_k]`` the aggregate keys,
    ``q1 [B, H, k, d_k]`` the interests' aggregate queries, ``ik``/``iv [B, G, k, d]``
    the interests' dispatch keys and values, ``values [B, H, m, d]`` with the folds
    ``[H, d, G, d_k / d_v]``; ``mask`` None or ``[B, m]`` (rows right-padded);
    ``recency_slope`` None or ``[H, k]``.
    """
    q2, k1, q1, ik, iv, values, fold_k, fold_v = (
        ops.cast(x, "float32") for x in (q2, k1, q1, ik, iv, values, fold_k, fold_v))
    r, logits, slope = _aggregate_terms(state, k1, q1, mask, recency_slope)
    weights, old, final_max = _prefix_weights(state, logits, r, slope)
    vk, vv = _fold(values, fold_k), _fold(values, fold_v)
    out = _dispatch(state, weights, old, q2, ik, iv, vk, vv, r)
    last = weights[..., -1, :]
    adds = (ops.einsum("bhks,bhsgd->bhkgd", last, vk),
            ops.einsum("bhks,bhsgd->bhkgd", last, vv))
    return _advance(state, last, old[..., -1], final_max, *adds, r), out


def advance(state, k1, q1, values, fold_k, fold_v, mask, recency_slope):
    """The state after ``m`` events per user without their outputs, in ``O(m)`` (no
    ``m x m`` weights); each row's real events contiguous, on either padding side."""
    k1, q1, values, fold_k, fold_v = (
        ops.cast(x, "float32") for x in (k1, q1, values, fold_k, fold_v))
    r, logits, slope = _aggregate_terms(state, k1, q1, mask, recency_slope)
    last, decay, final_max = _last_weights(state, logits, r, slope)
    summed = ops.einsum("bhks,bhsv->bhkv", last, values)
    adds = (ops.einsum("bhkv,hvge->bhkge", summed, fold_k),
            ops.einsum("bhkv,hvge->bhkge", summed, fold_v))
    return _advance(state, last, decay, final_max, *adds, r)
