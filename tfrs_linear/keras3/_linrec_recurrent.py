"""Causal LinRec's recurrent (streaming) form in ``keras.ops``: every backend.

The math of :mod:`tfrs_linear.ops.linrec_recurrent` (see its docstring for the formulas),
written in ``keras.ops``. A user's past is summarised exactly by running sums over its
real events, whatever their number:

    state (per user, float32)      "paper"                     "token"
    kv_sum        [B, H, d_k, d_v] Σ_s φ(K_s)ᵀ V_s             Σ_s (φ(K_s) / ‖φ(K_s)‖_ε)ᵀ V_s
    key_sq_sum    [B, H, d_k]      Σ_s φ(K_s)²  (column sums)  (absent)
    count         [B]              n, the real events           n
    <name>_comp   same shape       Kahan compensation of each sum above

The keys, shapes and dtype are those of the TensorFlow form, so a state is the same
dict of arrays on every backend and on the tf-keras layers. :func:`step` takes ``m >= 1``
new events per row (rows right-padded by a ``[B, m]`` mask): its outputs at the real
events are the causal attention's outputs at those events of the whole history, and its
padded slots output exactly 0 and leave the state as it was. :func:`advance` gives the
state alone (keys and values only).

Numerics: the state and the step's arithmetic are float32 for every input dtype, as in
the TensorFlow form; the running sums are compensated (Kahan), so a sum over 10⁵ events
keeps its low digits; norms are floored as in the attention (``sqrt(max(Σ x², ε²))``,
counts ``max(n, 1)``).
"""

import keras
from keras import ops

from tfrs_linear.keras3 import _common as C
from tfrs_linear.keras3 import _linrec_math as M
from tfrs_linear.keras3 import _portable as P

# The running sums of each normalization's state; each has a "<name>_comp" compensation.
STATE_SUMS = {"paper": ("kv_sum", "key_sq_sum", "count"), "token": ("kv_sum", "count")}
COMP_SUFFIX = "_comp"


def _shapes(batch, heads, key_dim, value_dim):
    return {"kv_sum": (batch, heads, key_dim, value_dim), "key_sq_sum": (batch, heads, key_dim),
            "count": (batch,)}


def initial_state(batch, heads, key_dim, value_dim, normalization):
    """The state of ``batch`` users with no event yet: ``{name: float32 zeros}``."""
    state = {}
    for name, shape in _shapes(batch, heads, key_dim, value_dim).items():
        if name in STATE_SUMS[normalization]:
            state[name] = ops.zeros(shape, "float32")
            state[name + COMP_SUFFIX] = ops.zeros(shape, "float32")
    return state


def check_state(state, normalization, batch, heads, key_dim, value_dim):
    """Raises a ``ValueError`` naming the key, shape or dtype that does not fit.

    ``batch`` may be None (not known when the step is traced)."""
    check_state_layout(state, f"a LinRec {normalization!r} state",
                       {n: shape for n, shape in _shapes(batch, heads, key_dim, value_dim).items()
                        if n in STATE_SUMS[normalization]}, compensated=STATE_SUMS[normalization])


def check_state_layout(state, what, shapes, compensated):
    """Raises a ``ValueError`` unless ``state`` has exactly the keys of ``shapes`` plus a
    ``<name>_comp`` for each name in ``compensated``, each float32 of its shape (``None``
    sizes match any). ``what`` names the state in the message."""
    expected = sorted(list(shapes) + [n + COMP_SUFFIX for n in compensated])
    if not isinstance(state, dict) or sorted(state) != expected:
        got = sorted(state) if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"{what} has the keys {expected}, got {got} (use the layer's "
                         "initial_state or a previous step's state).")
    for name, value in state.items():
        base = shapes[name[:-len(COMP_SUFFIX)] if name.endswith(COMP_SUFFIX) else name]
        if not C.same_shape(value.shape, base):
            raise ValueError(f"state[{name!r}] has shape {tuple(value.shape)}; this layer's "
                             f"state needs {tuple('?' if d is None else d for d in base)}.")
        dtype = keras.backend.standardize_dtype(value.dtype)
        if dtype != "float32":
            raise ValueError(f"state[{name!r}] must be float32, got {dtype}.")


def compensated_add(total, comp, x, decay=None):
    """One step of Kahan summation, ``(total, comp) <- (total, comp) · decay + x``:
    ``total + comp`` is the running sum (``decay`` None or broadcastable to ``total``)."""
    if decay is not None:
        total, comp = total * decay, comp * decay
    y = x + comp
    new_total = total + y
    return new_total, y - (new_total - total)


def compensated_value(state, name):
    """The running sum ``name`` of ``state`` read as ``sum + compensation``."""
    return state[name] + state[name + COMP_SUFFIX]


def events_mask(mask, like):
    """The ``[B, m]`` float32 0/1 mask of the new events (all real when ``mask`` is None;
    ``like`` is any ``[B, ., m, ...]`` tensor of them)."""
    if mask is None:
        return ops.ones_like(like[:, 0, :, 0])
    return ops.cast(mask, "float32")


def _key_terms(k, v, r, normalization, epsilon):
    """``(k_eff, v, squares, additions)``: the new events' masked effective keys and
    values, the keys' squares ("paper", else None) and what they add to each sum."""
    rm = r[:, None, :, None]
    phi_k = ops.elu(k) * rm
    v = v * rm
    additions = {"count": ops.sum(r, axis=1)}
    squares = None
    if normalization == "token":
        k_eff = phi_k / C.safe_norm(phi_k, -1, epsilon)
    else:
        squares = ops.square(phi_k)
        k_eff = phi_k
        additions["key_sq_sum"] = ops.sum(squares, axis=2)
    additions["kv_sum"] = ops.einsum("bhsd,bhse->bhde", k_eff, v)
    return k_eff, v, squares, additions


def _added(state, additions, normalization):
    new_state = {}
    for name in STATE_SUMS[normalization]:
        total, comp = compensated_add(state[name], state[name + COMP_SUFFIX],
                                       additions[name])
        new_state[name], new_state[name + COMP_SUFFIX] = total, comp
    return new_state


def step(state, query, key, value, mask, normalization, epsilon, chunk_size):
    """Feeds ``m`` new events per user: ``(new_state, outputs [B, H, m, d_v] float32)``.

    ``query``/``key``/``value`` are the projected heads ``[B, H, m, d]`` of the new
    events, oldest first (ELU is applied here); ``mask`` None or ``[B, m]``, rows
    right-padded. Inside the step the prefix sums over the new events are the chunked
    causal linear attention; the past enters through ``kv_sum`` and the running norms.
    """
    q, k, v = (ops.cast(x, "float32") for x in (query, key, value))
    r = events_mask(mask, q)
    k_eff, v, squares, additions = _key_terms(k, v, r, normalization, epsilon)
    phi_q = ops.elu(q)
    sqrt_dk = ops.sqrt(ops.cast(q.shape[-1], "float32"))
    q_eff = phi_q / C.safe_norm(phi_q, -1, epsilon) / sqrt_dk
    if normalization == "paper":
        old_sq = compensated_value(state, "key_sq_sum")[:, :, None, :]
        col = ops.sqrt(P.maximum(old_sq + P.cumsum(squares, axis=2), epsilon * epsilon))
        n_t = compensated_value(state, "count")[:, None] + P.cumsum(r, axis=1)
        q_eff = q_eff / (col * ops.sqrt(P.maximum(n_t, 1.0))[:, None, :, None])
    past = ops.einsum("bhtd,bhde->bhte", q_eff, compensated_value(state, "kv_sum"))
    out = past + M.causal_linear_attention(q_eff, k_eff, v, chunk_size)
    out = out * r[:, None, :, None]
    return _added(state, additions, normalization), out


def advance(state, key, value, mask, normalization, epsilon):
    """The state after ``m`` events per user (``[B, H, m, d]`` keys and values, ``mask``
    None or ``[B, m]`` on either padding side), without outputs: :func:`step`'s state."""
    k, v = ops.cast(key, "float32"), ops.cast(value, "float32")
    additions = _key_terms(k, v, events_mask(mask, k), normalization, epsilon)[3]
    return _added(state, additions, normalization)
