"""Causal LinRec in its recurrent form: a constant-size state per user, updated per event.

:func:`tfrs_linear.ops.linrec_attention` with ``causal=True`` (docs/linrec.md, "The causal
form") computes, for a real position ``t`` of a sequence,

    O_t = q'_t · Σ_{s≤t} K̃_sᵀ Ṽ_s,      q'_t = Q̂_t / (√max(n_t, 1) · c_t)    ("paper")
                                        q'_t = Q̂_t / √d                       ("token")

with ``K̃_s = φ(K_s) m_s`` (``φ = ELU``), ``Ṽ_s = V_s m_s``, ``n_t`` the number of real
positions up to ``t`` and ``c_t[f] = max(√(Σ_{s≤t} K̃_s[f]²), ε)``; with "token" the keys
are ``K̃_s / ‖K̃_s‖_ε`` instead. Every quantity of position ``t`` that depends on other
positions is a SUM over the real positions ``s ≤ t``, so the whole past is summarised
exactly by the running sums, whatever its length and wherever its padding was:

    state (per user, float32)      "paper"                     "token"
    kv_sum        [B, H, d_k, d_v] Σ_s K̃_sᵀ Ṽ_s                Σ_s (K̃_s / ‖K̃_s‖_ε)ᵀ Ṽ_s
    key_sq_sum    [B, H, d_k]      Σ_s K̃_s²  (column sums)     (absent)
    count         [B]              n = Σ_s m_s                 n (for positions; unused)
    <name>_comp   same shape       Kahan compensation of each sum above

:func:`linrec_step` takes ``m >= 1`` new events per row at once (``[B, H, m, d]``, rows
right-padded by ``mask [B, m]`` so that they can add different numbers of events). The
step's outputs at its real events equal the causal op's outputs at the same events of the
concatenated sequence (history then new events, in any padding of the op's: padded
positions are zeroed before every sum in both); its padded slots output exactly 0 and
leave the state unchanged. Inside a step the prefix sums over the new events are
``causal_linear_attention`` (chunked, linear in ``m``) plus ``q' · kv_sum``, so the same
call is the prefill: :func:`linrec_initial_state` then one step with the whole history.
:func:`linrec_advance` gives the state alone (keys and values only, no outputs).

Numerics
--------
* The state is float32 for every input dtype (float16, bfloat16, float32, float64) and
  the step computes in float32; outputs are cast back to the query's dtype.
* The state never grows: every tensor has the static shape :func:`linrec_initial_state`
  gave it, and a step returns tensors of exactly those shapes.
* Running sums use compensated (Kahan) summation (:func:`compensated_add`): a sum of
  ``n`` float32 terms then carries an error of a few ulps instead of one that grows with
  ``n`` (over 10⁵ events, a plain float32 ``count`` or sum of same-signed terms would
  lose its low digits). The outputs read each sum as ``sum + comp``.
* Norms are floored exactly as in the op: ``sqrt(max(Σ x², ε²))``, counts ``max(n, 1)``.
"""

import tensorflow as tf

from tfrs_linear.constants import NORMALIZATIONS
from tfrs_linear.ops._common import check_rank, events_mask, with_static_shape
from tfrs_linear.ops.contract import contract
from tfrs_linear.ops.linrec import causal_linear_attention, safe_norm

# The running sums of each normalization's state; each has a "<name>_comp" compensation.
LINREC_STATE_SUMS = {
    "paper": ("kv_sum", "key_sq_sum", "count"),
    "token": ("kv_sum", "count"),
}
# Suffix of the Kahan compensation tensor of a running sum.
COMP_SUFFIX = "_comp"


def compensated_add(total, comp, x, decay=None):
    """One step of Kahan summation: ``(total, comp) <- (total, comp) · decay + x``.

    ``total + comp`` is the running sum; ``comp`` holds the low-order part that ``total``
    could not (it is added back before the next addition). ``decay`` (None or a tensor
    broadcastable to ``total``) rescales the sum first, the form the dispatcher's
    running-maximum rescaling needs. Returns the new ``(total, comp)``.
    """
    if decay is not None:
        total = total * decay
        comp = comp * decay
    y = x + comp
    new_total = total + y
    comp = y - (new_total - total)
    return new_total, comp


def compensated_value(state, name):
    """The running sum ``name`` of ``state`` read as ``sum + compensation`` (float32)."""
    return state[name] + state[name + COMP_SUFFIX]


def _check_normalization(normalization):
    if normalization not in NORMALIZATIONS:
        raise ValueError(
            f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}."
        )


def linrec_initial_state(batch, heads, key_dim, value_dim, normalization="paper"):
    """The state of users with no event yet: a dict of float32 zeros.

    Args:
      batch: number of users (an int or a scalar int tensor).
      heads, key_dim, value_dim: ``H``, ``d_k``, ``d_v`` of the attention (ints).
      normalization: ``"paper"`` or ``"token"``, as the attention's.

    Returns:
      ``{name: tensor}`` with the keys and shapes of the module docstring's table.
    """
    _check_normalization(normalization)
    shapes = {
        "kv_sum": [batch, heads, key_dim, value_dim],
        "key_sq_sum": [batch, heads, key_dim],
        "count": [batch],
    }
    state = {}
    for name in LINREC_STATE_SUMS[normalization]:
        state[name] = tf.zeros(shapes[name], tf.float32)
        state[name + COMP_SUFFIX] = tf.zeros(shapes[name], tf.float32)
    return state


def _check_state(state, normalization, query, value):
    """Raises a ``ValueError`` naming the key when ``state`` is not this form's state."""
    expected = set()
    for name in LINREC_STATE_SUMS[normalization]:
        expected |= {name, name + COMP_SUFFIX}
    if set(state) != expected:
        raise ValueError(
            f"a LinRec {normalization!r} state has the keys {sorted(expected)}, got "
            f"{sorted(state)} (a state made by linrec_initial_state(..., "
            f"normalization={normalization!r}) is needed)."
        )
    want = {
        "kv_sum": [query.shape[0], query.shape[1], query.shape[3], value.shape[3]],
        "key_sq_sum": [query.shape[0], query.shape[1], query.shape[3]],
        "count": [query.shape[0]],
    }
    for name in state:
        shape = state[name].shape
        if tf.as_dtype(state[name].dtype) != tf.float32:
            raise ValueError(f"state[{name!r}] must be float32, got {state[name].dtype}.")
        base = want[name[: -len(COMP_SUFFIX)] if name.endswith(COMP_SUFFIX) else name]
        if shape.rank != len(base) or any(
            a is not None and b is not None and a != b for a, b in zip(shape, base)
        ):
            raise ValueError(
                f"state[{name!r}] has shape {shape}; the inputs need "
                f"{[d if d is not None else '?' for d in base]}."
            )


def _key_terms(k, v, r, normalization, epsilon):
    """The new events' keys and values as the sums see them, and what they add.

    ``k, v`` float32 ``[B, H, m, d]``, ``r [B, m]`` the 0/1 mask. Returns ``(k_eff, v,
    squares, additions)``: masked effective keys and values, the keys' squares ("paper";
    else None) and the map of each running sum to what these events add to it."""
    rm = r[:, tf.newaxis, :, tf.newaxis]
    phi_k = tf.nn.elu(k) * rm
    v = v * rm
    additions = {"count": tf.reduce_sum(r, axis=1)}
    squares = None
    if normalization == "token":
        k_eff = phi_k / safe_norm(phi_k, -1, epsilon)
    else:
        squares = tf.square(phi_k)
        k_eff = phi_k
        additions["key_sq_sum"] = tf.reduce_sum(squares, axis=2)
    additions["kv_sum"] = contract("bhsd,bhse->bhde", k_eff, v)
    return k_eff, v, squares, additions


def _step_features(state, q, k, v, r, normalization, epsilon):
    """The effective queries and keys of the new events and what they add to the sums.

    ``q, k, v`` float32 ``[B, H, m, d]``; ``r [B, m]`` the 0/1 mask of the new events.
    Returns ``(q_eff, k_eff, v, additions)``: ``O = q_eff · (kv_sum + Σ_{s≤t} k_effᵀ v)``,
    ``additions`` maps each running sum to what this step adds to it.
    """
    eps = tf.constant(epsilon, tf.float32)
    d_k = q.shape[-1] if q.shape[-1] is not None else tf.shape(q)[-1]
    sqrt_dk = tf.sqrt(tf.cast(d_k, tf.float32))
    k_eff, v, squares, additions = _key_terms(k, v, r, normalization, epsilon)
    phi_q = tf.nn.elu(q)
    q_eff = phi_q / safe_norm(phi_q, -1, epsilon) / sqrt_dk
    if normalization == "paper":
        old_sq = compensated_value(state, "key_sq_sum")[:, :, tf.newaxis, :]
        col = tf.sqrt(tf.maximum(old_sq + tf.cumsum(squares, axis=2), eps * eps))
        n_t = compensated_value(state, "count")[:, tf.newaxis] + tf.cumsum(r, axis=1)
        scale = tf.sqrt(tf.maximum(n_t, 1.0))[:, tf.newaxis, :, tf.newaxis]
        q_eff = q_eff / (col * scale)
    return q_eff, k_eff, v, additions


def _added(state, additions, normalization):
    """The state with ``additions`` added to its running sums (compensated)."""
    new_state = {}
    for name in LINREC_STATE_SUMS[normalization]:
        total, comp = compensated_add(
            state[name], state[name + COMP_SUFFIX], additions[name]
        )
        new_state[name] = with_static_shape(total, state[name].shape)
        new_state[name + COMP_SUFFIX] = with_static_shape(comp, state[name].shape)
    return new_state


def _dense_prefix_sums(q, k, v):
    """``Σ_{s<=t} (q_t·k_s) v_s`` over the ``m`` new events as one masked ``m x m`` matmul."""
    m = tf.shape(q)[2]
    scores = contract("bhtd,bhsd->bhts", q, k)
    causal = tf.linalg.band_part(tf.ones([m, m], scores.dtype), -1, 0)
    return contract("bhts,bhse->bhte", scores * causal, v)


def _prefix_sums(q, k, v, chunk_size):
    """The causal prefix sums over the new events: dense for at most ``chunk_size`` events
    (a serving step's one event does not pay for a padded chunk), chunked beyond."""
    m = q.shape[2]
    if m is not None:
        if m <= chunk_size:
            return _dense_prefix_sums(q, k, v)
        return causal_linear_attention(q, k, v, chunk_size)
    return tf.cond(tf.shape(q)[2] <= chunk_size, lambda: _dense_prefix_sums(q, k, v),
                   lambda: causal_linear_attention(q, k, v, chunk_size))


def linrec_step(state, query, key, value, mask=None, normalization="paper", epsilon=1e-6,
                chunk_size=32):
    """Feeds ``m`` new events per user; returns ``(new_state, outputs)``.

    Args:
      state: the users' state (:func:`linrec_initial_state` or a previous step's).
      query, key, value: the projected ``[B, H, m, d_k]``, ``[B, H, m, d_k]`` and
        ``[B, H, m, d_v]`` of the new events, oldest first (ELU is applied here).
      mask: optional ``[B, m]`` mask of the new events (True/1 = real), right-padded so
        that rows may add different numbers of events (0 included). None: all real.
      normalization, epsilon: as in :func:`tfrs_linear.ops.linrec_attention`; the same
        for every step of a state.
      chunk_size: chunk length of the prefix sums over the ``m`` new events.

    Returns:
      ``(new_state, outputs)``: the state after the real new events (same keys, shapes
      and dtype) and ``[B, H, m, d_v]`` in the query's dtype: at each real event the
      causal op's output at that event of the whole history, exactly 0 at padding.
    """
    _check_normalization(normalization)
    query = tf.convert_to_tensor(query)
    key = tf.convert_to_tensor(key, dtype_hint=query.dtype)
    value = tf.convert_to_tensor(value, dtype_hint=query.dtype)
    for name, x in (("query", query), ("key", key), ("value", value)):
        check_rank(name, x, 4, "[batch, heads, new_events, dim]")
    _check_state(state, normalization, query, value)
    q, k, v = (tf.cast(x, tf.float32) for x in (query, key, value))
    r = events_mask(mask, q)
    q_eff, k_eff, v, additions = _step_features(state, q, k, v, r, normalization, epsilon)
    past = contract("bhtd,bhde->bhte", q_eff, compensated_value(state, "kv_sum"))
    out = past + _prefix_sums(q_eff, k_eff, v, chunk_size)
    out = out * r[:, tf.newaxis, :, tf.newaxis]
    return _added(state, additions, normalization), tf.cast(out, query.dtype)


def linrec_advance(state, key, value, mask=None, normalization="paper", epsilon=1e-6):
    """The state after ``m`` new events per user, without their outputs: what
    :func:`linrec_step` returns as its state, in ``O(m)`` and without the queries.

    A whole history in one call is a user's state from :func:`linrec_initial_state`
    (the events' order does not matter to the sums, so any padding side works).

    Args:
      state: the users' state (:func:`linrec_initial_state` or a previous step's).
      key, value: the projected ``[B, H, m, d_k]`` and ``[B, H, m, d_v]`` of the events.
      mask: optional ``[B, m]`` mask of the events (True/1 = real); None: all real.
      normalization, epsilon: as in :func:`linrec_step`.

    Returns:
      The new state (same keys, shapes and dtype).
    """
    _check_normalization(normalization)
    key = tf.convert_to_tensor(key)
    value = tf.convert_to_tensor(value, dtype_hint=key.dtype)
    for name, x in (("key", key), ("value", value)):
        check_rank(name, x, 4, "[batch, heads, events, dim]")
    _check_state(state, normalization, key, value)
    k, v = tf.cast(key, tf.float32), tf.cast(value, tf.float32)
    r = events_mask(mask, k)
    additions = _key_terms(k, v, r, normalization, epsilon)[3]
    return _added(state, additions, normalization)


__all__ = [
    "COMP_SUFFIX",
    "LINREC_STATE_SUMS",
    "compensated_add",
    "compensated_value",
    "linrec_advance",
    "linrec_initial_state",
    "linrec_step",
]
