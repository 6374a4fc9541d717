"""The causal ELASTIC dispatcher in its recurrent form: a constant-size state per user.

:func:`tfrs_linear.ops.dispatcher_attention` with ``causal=True`` (docs/elastic.md, "The
causal form") gives a real position ``t`` the dispatch keys and values

    K'[t, g, i] = interest_key[g, i]   + Σ_h Σ_{s≤t} a_t[h, i, s] value_key[h, s, g]
    V'[t, g, i] = interest_value[g, i] + Σ_h Σ_{s≤t} a_t[h, i, s] value_value[h, s, g]
    a_t[h, i, s] = exp(u_t[h, i, s]) / Σ_{s'≤t real} exp(u_t[h, i, s'])      (real s)
    u_t[h, i, s] = interest_query[h, i] · key[h, s] / √d_k + b[h, i, s] − λ[h, i] (t − s)

and ``Y[t, g] = softmax_i(query[g, t] · K'[t, g, i] / √d_k) · V'[t, g, i]``. ``b`` is an
optional per-position ``aggregate_bias``; ``λ ≥ 0`` is the recency slope (the op's bias
``λ (s − (N − 1))``: the ``exp(−λ (N − 1 − t))`` it differs by cancels in ``a_t``). Ages
``t − s`` count the user's real events: a left-padded history has its real events
contiguous, so they are the op's positions too. ``a_t`` is a softmax over a SET that
grows by one element per event, and every old logit drops by ``λ`` per event, so the
past is summarised exactly by the unnormalised softmax sums relative to a running
maximum (per user, aggregate head ``h`` and interest ``i``; float32):

    max             [B, H, k]          M = max_{s real} u(s) as seen after the last event
                                       (very negative before the first real event)
    normalizer      [B, H, k]          Z = Σ_s exp(u(s) − M)          (>= 1 once an event)
    key_sum         [B, H, k, G, d_k]  Σ_s exp(u(s) − M) value_key[h, s, g]
    value_sum       [B, H, k, G, d_v]  Σ_s exp(u(s) − M) value_value[h, s, g]
    count           [B]                the number of real events (for positions)
    <name>_comp     same shape         Kahan compensation of each sum (not of ``max``)

Why this is exact. One more real event with logit ``z`` (its own age 0) makes every old
logit ``u(s) − λ``, so the old maximum becomes ``M − λ`` and the new one
``M' = max(M − λ, z)``; each old term is ``exp(u(s) − λ − M') = exp(u(s) − M) ·
exp(M − λ − M')``, so the sums are rescaled by ``exp(M − λ − M') <= 1`` and the new event
adds ``exp(z − M') <= 1`` (times its values). The means ``key_sum / normalizer`` are then
exactly the ``Σ_s a_t[h, i, s] value_key[h, s, g]`` above; nothing else of the past
enters position ``t``. With ``m`` events in one call the factor ``exp(−λ c_t)`` shared by
all terms seen from new event ``t`` (``c_t`` the real new events up to ``t``) cancels, so
the step gives new event ``s`` the logit ``z_s + λ c_s`` and the state ``M``, forms the
``m x m`` prefix weights relative to each event's own running maximum (every exponent
``<= 0``, each normaliser ``>= 1``: the fallback's numerics of
:mod:`tfrs_linear.ops.dispatcher_causal`), and subtracts ``λ C`` (``C`` the call's real
events) from the final maximum.

Numerics
--------
* State float32 under every input dtype; the step computes in float32 and casts the
  outputs back to the query's dtype. Its shapes are static and never change.
* No exponent is positive, so nothing overflows; the references are stop-gradient.
* Compensated (Kahan) sums (:func:`tfrs_linear.ops.linrec_recurrent.compensated_add`),
  rescaled with their compensation. With ``λ > 0`` the sums forget geometrically anyway;
  with ``λ = 0`` the normaliser grows with the history, where plain float32 would drift.
* Cost per call ``O(m²·H·k + m·H·k·G·(d_k + d_v))`` time and memory: for small ``m``
  (streaming). Feed a long history in calls of a few dozen events.
"""

import tensorflow as tf

from tfrs_linear.ops._common import (
    aggregate_logits, check_aggregate_bias, float_mask, inverse_sqrt_width, very_negative,
)
from tfrs_linear.ops.dispatcher import validate_dispatcher_inputs
from tfrs_linear.ops.linrec_recurrent import COMP_SUFFIX, compensated_add, compensated_value

# The running sums of the dispatcher's state; each has a "<name>_comp" compensation.
DISPATCHER_STATE_SUMS = ("normalizer", "key_sum", "value_sum", "count")


def dispatcher_initial_state(batch, heads, num_interests, dispatch_heads, key_dim, value_dim):
    """The state of users with no event yet (float32; ``max`` very negative, sums 0).

    Args:
      batch: number of users (an int or a scalar int tensor).
      heads: ``H``, the aggregate heads; ``num_interests``: ``k``;
        ``dispatch_heads``: ``G``; ``key_dim``, ``value_dim``: ``d_k``, ``d_v``.

    Returns:
      ``{name: tensor}`` with the keys and shapes of the module docstring's table.
    """
    shapes = _state_shapes(batch, heads, num_interests, dispatch_heads, key_dim, value_dim)
    state = {"max": tf.fill(shapes["max"], very_negative(tf.float32))}
    for name in DISPATCHER_STATE_SUMS:
        state[name] = tf.zeros(shapes[name], tf.float32)
        state[name + COMP_SUFFIX] = tf.zeros(shapes[name], tf.float32)
    return state


def _state_shapes(batch, heads, k, n_g, d_k, d_v):
    return {
        "max": [batch, heads, k], "normalizer": [batch, heads, k],
        "key_sum": [batch, heads, k, n_g, d_k], "value_sum": [batch, heads, k, n_g, d_v],
        "count": [batch],
    }


def _check_state(state, q1, ik, iv):
    """Raises a ``ValueError`` naming the key when ``state`` does not fit the inputs."""
    expected = {"max"} | {n + s for n in DISPATCHER_STATE_SUMS for s in ("", COMP_SUFFIX)}
    if set(state) != expected:
        raise ValueError(
            f"a dispatcher state has the keys {sorted(expected)}, got {sorted(state)} "
            "(make one with dispatcher_initial_state)."
        )
    want = _state_shapes(q1.shape[0], q1.shape[1], q1.shape[2], ik.shape[1], ik.shape[-1],
                         iv.shape[-1])
    for name, x in state.items():
        if tf.as_dtype(x.dtype) != tf.float32:
            raise ValueError(f"state[{name!r}] must be float32, got {x.dtype}.")
        base = want[name[: -len(COMP_SUFFIX)] if name.endswith(COMP_SUFFIX) else name]
        if x.shape.rank != len(base) or any(
            a is not None and b is not None and a != b for a, b in zip(x.shape, base)
        ):
            raise ValueError(
                f"state[{name!r}] has shape {x.shape}; the inputs need "
                f"{[d if d is not None else '?' for d in base]}."
            )


def _prefix_weights(state, logits, r, slope):
    """The ``m x m`` prefix weights of the new events and the old state's factors.

    ``logits [B, H, k, m]`` (bias included), ``r [B, m]`` the 0/1 mask, ``slope`` None
    or ``[B, H, k]``. Returns ``(weights [B, H, k, m(t), m(s)], old [B, H, k, m],
    final_max [B, H, k])``: ``weights = exp(u_s − ref_t)`` for real ``s <= t`` (else 0),
    ``old = exp(M − ref_t)``, ``ref_t`` the running maximum of the state and the real
    new events up to ``t`` (every exponent ``<= 0``), ``final_max`` the state's new max.
    """
    neg = very_negative(tf.float32)
    counts = tf.cumsum(r, axis=1)  # c_t [B, m]
    if slope is not None:
        # Seen from new event t every logit carries exp(-slope c_t), which cancels: the
        # new events get +slope c_s and the old maximum nothing.
        logits = logits + slope[..., tf.newaxis] * counts[:, tf.newaxis, tf.newaxis, :]
    valid = tf.broadcast_to(r[:, tf.newaxis, tf.newaxis, :] > 0, tf.shape(logits))
    masked = tf.where(valid, logits, tf.fill(tf.shape(logits), neg))
    m = tf.shape(logits)[-1]
    tril = tf.linalg.band_part(tf.ones([m, m], tf.bool), -1, 0)  # [t, s]: s <= t
    pair = tf.logical_and(tril, valid[..., tf.newaxis, :])  # [B, H, k, t, s]
    old_max = state["max"]
    ref = tf.reduce_max(tf.where(pair, masked[..., tf.newaxis, :], neg), axis=-1)
    ref = tf.stop_gradient(tf.maximum(ref, old_max[..., tf.newaxis]))  # [B, H, k, m]
    shifted = tf.minimum(masked[..., tf.newaxis, :] - ref[..., tf.newaxis], 0.0)
    weights = tf.where(pair, tf.exp(shifted), tf.zeros_like(shifted))
    old = tf.exp(tf.minimum(old_max[..., tf.newaxis] - ref, 0.0))
    final_max = ref[..., -1]
    if slope is not None:
        final_max = final_max - slope * counts[:, -1][:, tf.newaxis, tf.newaxis]
    return weights, old, final_max


def _dispatch(state, weights, old, q2, ik, iv, vk, vv, r):
    """The dispatch outputs ``[B, G, m, d_v]`` of the new events (0 at padding).

    The prefix means per event are ``(old · sums + weights @ values) / max(Z, 1)``; summed
    over the aggregate heads they complete the interests ``K'``, ``V'`` of each event.
    """
    z = old * compensated_value(state, "normalizer")[..., tf.newaxis]
    z = z + tf.reduce_sum(weights, axis=-1)
    inv_z = 1.0 / tf.maximum(z, 1.0)  # [B, H, k, m]; Z >= 1 with a real prefix, else 0

    def mean(name, values):  # values [B, H, m, G, d] -> [B, G, m, k, d]
        past = tf.einsum("bhkt,bhkgd->bhktgd", old, compensated_value(state, name))
        new = tf.einsum("bhkts,bhsgd->bhktgd", weights, values)
        summed = tf.reduce_sum((past + new) * inv_z[..., tf.newaxis, tf.newaxis], axis=1)
        return tf.transpose(summed, [0, 3, 2, 1, 4])

    keys = ik[:, :, tf.newaxis] + mean("key_sum", vk)  # [B, G, m, k, d_k]
    values = iv[:, :, tf.newaxis] + mean("value_sum", vv)  # [B, G, m, k, d_v]
    logits = tf.einsum("bgtd,bgtkd->bgtk", q2, keys) * inverse_sqrt_width(q2)
    out = tf.einsum("bgtk,bgtkd->bgtd", tf.nn.softmax(logits, axis=-1), values)
    return out * r[:, tf.newaxis, :, tf.newaxis]


def _advance(state, weights, old, final_max, vk, vv, r):
    """The state after the call: sums rescaled to the new maximum, plus the new events."""
    last = weights[..., -1, :]  # [B, H, k, m]: every real new event, relative to ref_{m-1}
    decay = old[..., -1]  # exp(M − ref_{m-1}) <= 1
    additions = {
        "normalizer": (tf.reduce_sum(last, axis=-1), decay),
        "key_sum": (tf.einsum("bhks,bhsgd->bhkgd", last, vk), decay[..., None, None]),
        "value_sum": (tf.einsum("bhks,bhsgd->bhkgd", last, vv), decay[..., None, None]),
        "count": (tf.reduce_sum(r, axis=1), None),
    }
    new_state = {"max": tf.ensure_shape(final_max, state["max"].shape)}
    for name, (x, scale) in additions.items():
        total, comp = compensated_add(state[name], state[name + COMP_SUFFIX], x, scale)
        new_state[name] = tf.ensure_shape(total, state[name].shape)
        new_state[name + COMP_SUFFIX] = tf.ensure_shape(comp, state[name].shape)
    return new_state


def dispatcher_step(state, query, key, interest_query, interest_key, interest_value,
                    value_key, value_value, mask=None, aggregate_bias=None,
                    recency_slope=None):
    """Feeds ``m`` new events per user to the causal dispatcher; ``(new_state, outputs)``.

    The inputs are those of :func:`tfrs_linear.ops.dispatcher_attention` restricted to
    the new events (length ``m``), oldest first.

    Args:
      state: the users' state (:func:`dispatcher_initial_state` or a previous step's).
      query: ``[B, G, m, d_k]``; key: ``[B, H, m, d_k]``; interest_query:
        ``[B, H, k, d_k]``; interest_key: ``[B, G, k, d_k]``; interest_value:
        ``[B, G, k, d_v]``; value_key: ``[B, H, m, G, d_k]``; value_value:
        ``[B, H, m, G, d_v]``.
      mask: optional ``[B, m]`` mask of the new events (True/1 = real), right-padded so
        that rows may add different numbers of events (0 included). None: all real.
      aggregate_bias: optional bias of the new events' scaled aggregate logits,
        broadcastable to ``[B, H, k, m]`` (a function of the event, as in the op). Not
        the recency bias: that is ``recency_slope``.
      recency_slope: optional ``λ >= 0`` broadcastable to ``[B, H, k]`` (e.g. the layer's
        ``recency_slopes()``): the op's ``aggregate_bias = λ (s − (N − 1))``, applied as
        a decay ``exp(−λ)`` of the old weights per real event. The same every step.

    Returns:
      ``(new_state, outputs)``: the state after the real new events (same keys, shapes
      and dtype) and ``[B, G, m, d_v]`` in the query's dtype: at each real event the
      causal op's output at that event of the whole history, exactly 0 at padding.
    """
    tensors = validate_dispatcher_inputs(
        query, key, interest_query, interest_key, interest_value, value_key, value_value
    )
    q2, k1, q1, ik, iv, vk, vv = (tf.cast(x, tf.float32) for x in tensors)
    _check_state(state, q1, ik, iv)
    if mask is None:
        r = tf.ones(tf.shape(k1)[0:3:2], tf.float32)
    else:
        r = float_mask(mask, tf.float32, "mask")
    logits = aggregate_logits(q1, k1, check_aggregate_bias(aggregate_bias))
    slope = None
    if recency_slope is not None:
        slope = tf.broadcast_to(tf.cast(recency_slope, tf.float32), tf.shape(state["max"]))
    weights, old, final_max = _prefix_weights(state, logits, r, slope)
    out = _dispatch(state, weights, old, q2, ik, iv, vk, vv, r)
    new_state = _advance(state, weights, old, final_max, vk, vv, r)
    return new_state, tf.cast(out, tensors[0].dtype)


__all__ = ["DISPATCHER_STATE_SUMS", "dispatcher_initial_state", "dispatcher_step"]
