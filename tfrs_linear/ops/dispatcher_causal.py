"""The causal linear dispatcher attention: a fast path and an exact fallback.

:func:`tfrs_linear.ops.dispatcher_attention` with ``causal=True`` lands here
(:func:`causal_dispatcher`), :func:`tfrs_linear.ops.dispatcher_attention_from_values`
too (:func:`causal_dispatcher_from_values`: the same, its fast path on the unfolded
values; :func:`_causal_dispatcher_fast_values`). The prefix scans are in
:mod:`tfrs_linear.ops.causal_scans`. Position ``t`` sees the interests after the real items
``s <= t`` only: for interest ``i`` of aggregate head ``h`` the prefix weights are
``w[t, s] ∝ exp(a[s])`` over the real ``s <= t`` (``a`` the aggregate logits), normalised
over that prefix, and the dispatch needs ``q_t · K'[t, i]`` and ``Σ_i p[t, i] V'[t, i]``
with ``K'``/``V'`` the prefix means of the folded values. The per-position interests
``K'``/``V'`` are never materialised: the dispatch logits and outputs are formed from
chunk states and ``C x C`` products directly. The dense O(N²) form is
:func:`tfrs_linear.ops.reference.dispatcher_attention_reference`.

Two exact implementations, chosen by ``causal_path`` (:data:`CAUSAL_PATHS`):

* ``"fast"`` (:func:`_causal_dispatcher_fast`): ONE stop-gradient reference per interest
  and chunk, so the ``C x C`` lower-triangular prefix weights factorise into masked
  ``C x C`` by ``C x k`` matmuls (no ``[k, C, C]`` tensor); chunk states are combined by
  two levels of masked matmuls over groups of about ``sqrt(N / C)`` chunks. Memory
  ``O(N·H·G·(C + k) + N·H·k + (N / C)·H·k·F)`` with ``F = G (d_k + d_v)`` (``F = d``,
  the values' width, on the unfolded values).
* ``"exact"`` (:func:`_causal_dispatcher_per_position`, the fallback): the explicit
  per-interest ``C x C`` weights relative to each position's own running maximum, exact
  for any logits; ``O(N·H·k·C)`` more memory and ``exp`` evaluations per batch row.
* ``"auto"`` (the default): the fast path whenever it is exact for the call
  (:func:`causal_fast_path_ok`), else the exact fallback for the whole call.

Time ``O(N·H·G·(C·(k + d) + k·d))`` for both, linear in ``N``; never ``N x N`` and no
state per position.

Numerics
--------
* Strictly causal: every weight is relative to a maximum of the logits over positions
  ``s <= t`` only, so no future logit rescales (or underflows) a past output. The
  references are wrapped in ``tf.stop_gradient`` and cancel between numerators and
  normalisers, so the gradients are the exact ones.
* Exact fallback: every exponent is ``<= 0`` (nothing overflows); a position's normaliser
  is ``>= 1`` once a real item is in its prefix and exactly 0 before, where the means
  are 0 (divided by ``max(z, 1)``).
* Fast path: exact when, for every interest and chunk, the running maximum of the logits
  rises by at most ``2 * 30 = 60`` over the chunk's positions with a real prefix. Inside
  a chunk the reference ``m_c`` is the midpoint of that rise, so every exponent of a real
  item is ``<= 30`` (column factors ``e <= 1.1e13``) and the normaliser of a position
  with a real prefix is ``>= exp(ref[t] - m_c) >= exp(-30)``, so ``1 / z <= 1.1e13`` and
  ``1 / z² <= 1.2e26`` in the gradient: nothing over- or underflows in float32. A term
  that underflows (``a[s] - m_c < -87``) is below ``exp(-57)`` of its normaliser, as in
  the fallback. It divides by ``z`` where ``z > 0`` and by 1 where ``z`` is exactly 0 (no
  real prefix). On other inputs its result is wrong (and may not be finite): ``"auto"``
  never uses it there.
* The ``"auto"`` switch keeps XLA happy with static and dynamic shapes alike: the fast
  path always runs (on zeroed logits when it is not exact, so that it stays finite; its
  result is then discarded by a ``tf.where``); the fallback sits in a ``tf.cond`` (one
  branch runs, under XLA too) inside a ``tf.custom_gradient`` whose gradient is another
  ``tf.cond`` that recomputes the fallback only when it was taken. (Differentiating a
  plain ``tf.cond`` under XLA makes it output every intermediate of both branches; with
  dynamic shapes that does not compile.) A call that falls back costs about the
  fallback's forward twice and its backward once, plus the fast path.
"""

import tensorflow as tf

from tfrs_linear.ops._common import (
    aggregate_logits, check_aggregate_bias, check_rank, chunk_layout, chunked, compute_dtype,
    dims, float_mask, inverse_sqrt_width, very_negative,
)
from tfrs_linear.ops.causal_scans import (
    exclusive_prefix_states, linear_recurrence, running_max, shift_right,
)

# The implementations of the causal form that `causal_path` chooses from.
CAUSAL_PATHS = ("auto", "fast", "exact")

# Largest half-range of the running maximum inside one chunk (per interest) for which the
# factorised fast path of the causal dispatcher is exact: its column factors are then at
# most exp(30) ~ 1e13 and its normalisers at least exp(-30) ~ 1e-13, so nothing over- or
# underflows in float32. A running maximum that rises by more than 2 * 30 = 60 inside one
# chunk sends the whole call to the exact fallback (under causal_path="auto").
_FAST_HALF_RANGE = 30.0


def check_causal_path(causal_path):
    """Raises a ``ValueError`` unless ``causal_path`` is one of :data:`CAUSAL_PATHS`."""
    if causal_path not in CAUSAL_PATHS:
        raise ValueError(
            f"causal_path must be one of {CAUSAL_PATHS}, got {causal_path!r}."
        )


def causal_fast_path_ok(interest_query, key, mask=None, chunk_size=64, aggregate_bias=None):
    """Whether the causal dispatcher's fast path is exact for these aggregate inputs.

    The scalar boolean that ``causal_path="auto"`` of
    :func:`tfrs_linear.ops.dispatcher_attention` switches on: True when, for every batch
    row, head, interest and chunk, the running maximum of the scaled aggregate logits
    rises by at most 60 over the chunk's positions that have a real item in their prefix
    (see the module's numerics). False means that ``"auto"`` takes the exact per-position
    fallback for the whole call, and that ``"fast"`` would be wrong there. Costs one
    reduction over ``[B, H, k, N / C]`` after the logits.

    Args:
      interest_query: ``[B, H, k, d_k]``, the aggregate queries (``P W_q1``).
      key: ``[B, H, N, d_k]``, the aggregate keys (``X W_k1``).
      mask: optional ``[B, N]`` padding mask (True/1 = real item).
      chunk_size: the chunk length the attention would use.
      aggregate_bias: optional additive bias of the scaled aggregate logits, as in
        :func:`tfrs_linear.ops.dispatcher_attention`.

    Returns:
      A scalar ``tf.bool`` tensor.
    """
    interest_query = tf.convert_to_tensor(interest_query)
    key = tf.convert_to_tensor(key)
    check_rank("interest_query", interest_query, 4, "[batch, heads, k, key_dim]")
    check_rank("key", key, 4, "[batch, heads, length, key_dim]")
    if int(chunk_size) < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}.")
    dtype = compute_dtype(interest_query.dtype)
    q1, k1 = tf.cast(interest_query, dtype), tf.cast(key, dtype)
    if mask is None:
        m = tf.ones(dims(k1)[:1] + dims(k1)[2:3], dtype)
    else:
        m = float_mask(mask, dtype)
    logits = aggregate_logits(q1, k1, check_aggregate_bias(aggregate_bias))
    return _fast_path_ok(logits, k1, m, int(chunk_size))


def _fast_path_ok(logits, k1, m, chunk):
    """:func:`causal_fast_path_ok` on cast tensors: ``logits [B, H, k, N]``, ``m [B, N]``."""
    chunk, pad, n_chunks, mask_c, has_prefix = _causal_setup(k1, m, chunk)
    logits_c = chunked(logits, 3, pad, n_chunks, chunk)  # [B, H, k, n, C]
    half_range = _causal_references(logits_c, mask_c, has_prefix)[4]
    return tf.reduce_all(half_range <= _FAST_HALF_RANGE)


def causal_dispatcher(q2, k1, q1, ik, iv, vk, vv, m, chunk, causal_path="auto", bias=None):
    """The causal fused dispatcher attention on checked, cast tensors (chunk-wise).

    What :func:`tfrs_linear.ops.dispatcher_attention` runs for ``causal=True``, after its
    checks and casts: shapes as there (``q2`` the query, ``k1`` the key, ``q1`` the
    interest queries, ``ik``/``iv`` the interest keys and values, ``vk``/``vv`` the value
    contributions), all in the compute dtype; ``m`` a float ``[B, N]`` mask; ``chunk`` an
    int; ``bias`` None or the aggregate logits' additive bias (broadcastable to
    ``[B, H, k, N]``). ``causal_path`` as in :data:`CAUSAL_PATHS` (see the module
    docstring). Returns ``[B, G, N, d_v]`` in the compute dtype.
    """
    return _dispatch_path(q2, k1, q1, ik, iv, (vk, vv), None, m, chunk, causal_path, bias)


def causal_dispatcher_from_values(q2, k1, q1, ik, iv, values, fold_k, fold_v, m, chunk,
                                  causal_path="auto", bias=None):
    """:func:`causal_dispatcher` with ``vk, vv = fold_values(values, fold_k, fold_v)``.

    What :func:`tfrs_linear.ops.dispatcher_attention_from_values` runs for
    ``causal=True``: ``values [B, H, N, d]``, ``fold_k [H, d, G, d_k]``, ``fold_v
    [H, d, G, d_v]``, other arguments as in :func:`causal_dispatcher`. The fast path
    never forms the folded values (the folds move out of its sums: cheaper, the same
    numbers up to rounding); the exact fallback forms them inside its branch, a batch row
    at a time, so a call that takes the fast path never does.
    """
    return _dispatch_path(q2, k1, q1, ik, iv, (values,), (fold_k, fold_v), m, chunk,
                          causal_path, bias)


def fold_values(values, fold_k, fold_v, einsum=tf.einsum):
    """``(value_key, value_value)``: ``values [B, H, N, d]`` times the per-head folds
    ``fold_k [H, d, G, d_k]`` and ``fold_v [H, d, G, d_v]`` (``[B, H, N, G, d_*]``).
    ``einsum``: ``tf.einsum`` or a function like it (the recurrent step passes
    :func:`tfrs_linear.ops.contract.contract`)."""
    return (einsum("bhnv,hvge->bhnge", values, fold_k),
            einsum("bhnv,hvge->bhnge", values, fold_v))


def _dispatch_path(q2, k1, q1, ik, iv, vals, folds, m, chunk, causal_path, bias):
    """The ``causal_path`` switch for folded values ``vals = (vk, vv)`` (``folds`` None)
    or ``vals = (values,)`` with ``folds = (fold_k, fold_v)``."""
    check_causal_path(causal_path)
    if bias is not None:
        # Materialised once so that the per-position form can take it row by row.
        bias = tf.broadcast_to(tf.cast(bias, q1.dtype), dims(q1)[:3] + dims(k1)[2:3])
    logits = aggregate_logits(q1, k1, bias)

    def fast(lg):
        if folds is None:
            return _causal_dispatcher_fast(q2, lg, ik, iv, *vals, m, chunk)
        return _causal_dispatcher_fast_values(q2, lg, ik, iv, *vals, *folds, m, chunk)

    if causal_path == "fast":
        return fast(logits)
    if causal_path == "exact":
        vk, vv = vals if folds is None else fold_values(*vals, *folds)
        return _causal_dispatcher_per_position(q2, k1, q1, ik, iv, vk, vv, m, chunk, bias)
    fast_ok = _fast_path_ok(logits, k1, m, chunk)
    # Where the fast path is not exact it runs on zeroed logits (range 0), so that its
    # values and gradients stay finite; the tf.where then takes the fallback's result
    # instead and hands the fast path zero gradients.
    safe_logits = tf.where(fast_ok, logits, tf.zeros_like(logits))
    slow = _per_position_unless(fast_ok, (q2, k1, q1, ik, iv) + tuple(vals), folds, m, chunk,
                                bias)
    return tf.where(fast_ok, fast(safe_logits), slow)


# ------------------------------------------------------------------ shared steps
def _causal_setup(k1, m, chunk):
    """Static-where-possible sizes and the chunked ``[B, n, C]`` masks of the causal form.

    Returns ``(chunk, pad, n_chunks, mask_c, has_prefix)``; ``has_prefix`` marks the
    positions with a real item at or before them (padding after a real item included).
    """
    chunk, pad, n_chunks = chunk_layout(dims(k1)[2], chunk)
    mask_c = chunked(m, 1, pad, n_chunks, chunk)  # [B, n, C]
    has_prefix = chunked(tf.cumsum(m, axis=1), 1, pad, n_chunks, chunk) > 0
    return chunk, pad, n_chunks, mask_c, has_prefix


def _chunker(pad, n_chunks, chunk):
    """``chunked(x, axis)``: pads the length axis of ``x``, splits it into ``[n_chunks, chunk]``."""
    return lambda x, axis: chunked(x, axis, pad, n_chunks, chunk)


def _dispatch_sizes(q2, ik, iv):
    """``(G, d_k, d_v, 1 / sqrt(d_k))`` of the dispatch step."""
    return dims(q2)[1], dims(ik)[-1], dims(iv)[-1], inverse_sqrt_width(q2)


def _causal_references(logits_c, mask_c, has_prefix):
    """Stop-gradient references of the causal form for chunked logits ``[B, H, k, n, C]``.

    Returns ``(valid, masked, run_max, prev_max, half_range, center)``: ``masked`` are the
    logits with padding replaced by a very negative number, ``run_max`` (``R_c``) the
    running maximum at the end of each chunk and ``prev_max`` the one before it
    (``[B, H, k, n]``); ``half_range`` is half the rise of the running maximum over the
    chunk's positions that have a real prefix (0 where none has) and ``center`` the
    midpoint of that range (``R_c`` where no position has a real prefix).
    """
    neg = very_negative(logits_c.dtype)
    valid = tf.broadcast_to(mask_c[:, tf.newaxis, tf.newaxis] > 0, dims(logits_c))
    masked = tf.where(valid, logits_c, neg)
    plain = tf.stop_gradient(masked)
    chunk_max = tf.reduce_max(plain, axis=-1)  # [B, H, k, n]
    run_max = running_max(chunk_max, 3, neg)
    prev_max = shift_right(run_max, 1, 3, neg)
    # The running maximum over the prefix s <= t (previous chunks included).
    ref = tf.maximum(running_max(plain, 4, neg), prev_max[..., tf.newaxis])
    low = tf.reduce_min(
        tf.where(has_prefix[:, tf.newaxis, tf.newaxis], ref, run_max[..., tf.newaxis]),
        axis=-1,
    )
    half_range = 0.5 * (run_max - low)  # >= 0
    center = low + half_range
    return valid, masked, run_max, prev_max, half_range, center



# ------------------------------------------------------------------ the fallback
def _per_position_unless(skip, inputs, folds, m, chunk, bias=None):
    """:func:`_causal_dispatcher_per_position`, or zeros (and zero gradients) if ``skip``.

    A ``tf.cond`` in a ``tf.custom_gradient``: the forward pass runs one branch; the
    backward pass is a ``tf.cond`` too, and recomputes the per-position form (under a
    tape) only when it was taken. Nothing of the untaken branch is ever materialised.
    The per-position form runs one batch row at a time (``tf.map_fn``), so that its
    ``[k, C, C]`` weights take ``1 / B`` of the memory they would: XLA reserves the
    buffers of a branch whether it runs or not. ``inputs`` are ``(q2, k1, q1, ik, iv, vk,
    vv)``, or ``(q2, k1, q1, ik, iv, values)`` with ``folds = (fold_k, fold_v)``: the
    folded values are then formed inside the branch, row by row (the folds go through
    ``map_fn`` tiled over the batch; their gradient is the sum over the rows). ``bias``
    (None or ``[B, H, k, N]``) is the aggregate logits' additive bias; it gets its
    gradient like the other inputs.
    """
    q2, iv = inputs[0], inputs[4]
    xs = tuple(inputs)
    if folds is not None:
        batch = tf.shape(q2)[0]
        xs += tuple(tf.tile(f[tf.newaxis], [batch] + [1] * f.shape.rank) for f in folds)
    xs += () if bias is None else (bias,)
    n_x = len(xs)
    out_spec = tf.TensorSpec([q2.shape[1], q2.shape[2], iv.shape[-1]], q2.dtype)
    in_specs = [tf.TensorSpec(x.shape[1:], x.dtype) for x in xs]

    def per_position(x_row, m_row):
        x_row = list(x_row)
        row_bias = x_row.pop() if bias is not None else None
        if folds is not None:
            fold_v, fold_k = x_row.pop()[0], x_row.pop()[0]
            x_row += list(fold_values(x_row.pop(), fold_k, fold_v))
        return _causal_dispatcher_per_position(*x_row, m_row, chunk, row_bias)

    def forward_row(row):
        row = [r[tf.newaxis] for r in row]
        return per_position(row[:n_x], row[n_x])[0]

    def backward_row(row):
        row = [r[tf.newaxis] for r in row]
        x_row, m_row, dy_row = row[:n_x], row[n_x], row[n_x + 1]
        with tf.GradientTape() as tape:
            tape.watch(x_row)
            y = per_position(x_row, m_row)
        grads = tape.gradient(
            y, x_row, output_gradients=dy_row,
            unconnected_gradients=tf.UnconnectedGradients.ZERO,
        )
        return [g[0] for g in grads]

    @tf.custom_gradient
    def run(*xs):
        out = tf.cond(
            skip,
            lambda: tf.zeros(dims(q2)[:3] + dims(iv)[-1:], q2.dtype),
            lambda: tf.map_fn(forward_row, xs + (m,), fn_output_signature=out_spec),
        )

        def grad(dy):
            return tf.cond(
                skip,
                lambda: [tf.zeros_like(x) for x in xs],
                lambda: tf.map_fn(backward_row, xs + (m, dy), fn_output_signature=in_specs),
            )

        return out, grad

    return run(*xs)


def _per_position_weights(logits_c, mask_c, chunk):
    """The fallback's explicit prefix weights for chunked logits ``[B, H, k, n, C]``.

    Returns ``(valid, masked, run_max, prev_max, weights, decay)``: ``masked`` the logits
    with padding replaced by a very negative number, ``run_max`` (``R_c``) and
    ``prev_max`` the running maxima at the end of each chunk and of the one before
    (``[B, H, k, n]``), ``weights [B, H, k, n, C(t), C(s)]`` = ``exp(a[s] - ref[t])`` for
    real ``s <= t`` (0 elsewhere), with ``ref[t]`` the running maximum over the prefix
    ``s <= t``, and ``decay = exp(R_{c-1} - ref[t]) <= 1`` (``[B, H, k, n, C]``). The
    references are stop-gradient: the result does not depend on them.
    """
    neg = very_negative(logits_c.dtype)
    valid = tf.broadcast_to(mask_c[:, tf.newaxis, tf.newaxis] > 0, dims(logits_c))
    masked = tf.where(valid, logits_c, neg)
    chunk_max = tf.stop_gradient(tf.reduce_max(masked, axis=-1))  # [B, H, k, n]
    # R_c: the running maximum at the end of chunk c (an inclusive cumulative max).
    run_max = running_max(chunk_max, 3, neg)
    prev_max = shift_right(run_max, 1, 3, neg)
    # ref[t]: the running maximum over the prefix s <= t (previous chunks included).
    ref = tf.stop_gradient(
        tf.maximum(running_max(masked, 4, neg), prev_max[..., tf.newaxis])
    )  # [B, H, k, n, C]
    tril = tf.linalg.band_part(tf.ones([chunk, chunk], logits_c.dtype), -1, 0)
    # [B, 1, 1, n, C(t), C(s)]: s <= t and s real (shared by heads and interests).
    pair_valid = (tril * mask_c[:, :, tf.newaxis, :])[:, tf.newaxis, tf.newaxis]
    # masked[s] - ref[t] <= 0 for every real s <= t; elsewhere the weight is 0.
    weights = tf.exp(
        tf.minimum(masked[..., tf.newaxis, :] - ref[..., tf.newaxis], 0.0)
    ) * pair_valid  # [B, H, k, n, C, C]
    decay = tf.exp(prev_max[..., tf.newaxis] - ref)  # <= 1, [B, H, k, n, C]
    return valid, masked, run_max, prev_max, weights, decay


def _per_position_states(valid, masked, run_max, prev_max, vk, vv, chunker, sizes):
    """The fallback's states before each chunk, relative to ``R_{c-1}``.

    Chunk states relative to ``R_c``, then the running state across chunks (a linear
    recurrence whose decays are ``exp(R_{c-1} - R_c) <= 1``). ``sizes`` are
    ``(batch, heads, length, k, n_chunks, G, d_k, d_v)``. Returns ``(prev_key
    [B, H, k, n, G, d_k], prev_val [B, H, k, n, G, d_v], prev_z [B, H, k, n])``.
    """
    batch, heads, length, k_int, n_chunks, n_g, d_k, d_v = sizes
    values = tf.concat(
        [tf.reshape(vk, [batch, heads, length, -1]), tf.reshape(vv, [batch, heads, length, -1])],
        axis=-1,
    )  # [B, H, N, F], F = G (d_k + d_v)
    values_c = chunker(values, 2)  # [B, H, n, C, F]
    end_w = tf.where(valid, tf.exp(masked - run_max[..., tf.newaxis]), tf.zeros_like(masked))
    local = tf.einsum("bhknc,bhncf->bhknf", end_w, values_c)
    local = tf.concat([local, tf.reduce_sum(end_w, axis=-1)[..., tf.newaxis]], axis=-1)
    step_decay = tf.exp(prev_max - run_max)  # [B, H, k, n]

    states = linear_recurrence(step_decay, local, 3)  # [B, H, k, n, F + 1], inclusive
    prev = shift_right(states, 1, 3, 0.0)
    prev_z = prev[..., -1]  # [B, H, k, n]
    g_dk = n_g * d_k
    prev_key = tf.reshape(prev[..., :g_dk], [batch, heads, k_int, n_chunks, n_g, d_k])
    prev_val = tf.reshape(prev[..., g_dk:-1], [batch, heads, k_int, n_chunks, n_g, d_v])
    return prev_key, prev_val, prev_z


def _causal_dispatcher_per_position(q2, k1, q1, ik, iv, vk, vv, m, chunk, bias=None):
    """The causal fused dispatcher attention with per-position references (the fallback).

    Exact for every input (no exponent is ever positive), but it forms the ``C x C``
    prefix weights of every interest (:func:`_per_position_weights`): ``O(N·H·k·C)``
    memory and ``exp`` evaluations. Shapes as in :func:`causal_dispatcher`.

    The dispatch needs ``q_t · K'[t, i]`` and ``Σ_i p[t, i] V'[t, i]``, where ``K'`` and
    ``V'`` are prefix means of the folded values. Both are linear in those means, so
    instead of materialising ``K'[t, i]`` (``N x k x d``) this computes, per chunk of
    ``C`` positions:

    * across chunks, a running state per interest: ``S_c = Σ_{s <= end of c}
      exp(a[s] - R_c) values[s]`` and its normaliser, relative to the running maximum
      ``R_c`` at the chunk's end (:func:`_per_position_states`: elementwise work only);
    * inside a chunk, the explicit ``C x C`` lower-triangular weights per interest and
      the ``C x C`` products ``q_t · value_key[s]``.

    Memory ``O(N·H·k·C + N·H·G·(k + C) + (N / C)·H·k·F)``, time
    ``O(N·H·G·(C·(k + d) + k·d))``: linear in ``N``, never ``N x N``.
    """
    batch, heads, length = dims(k1)[:3]
    chunk, pad, n_chunks, mask_c, _ = _causal_setup(k1, m, chunk)  # mask_c: [B, n, C]
    k_int = dims(q1)[2]
    n_g, d_k, d_v, scale = _dispatch_sizes(q2, ik, iv)
    chunker = _chunker(pad, n_chunks, chunk)

    logits_c = chunker(aggregate_logits(q1, k1, bias), 3)  # [B, H, k, n, C]
    valid, masked, run_max, prev_max, weights, decay = _per_position_weights(
        logits_c, mask_c, chunk
    )
    prev_key, prev_val, prev_z = _per_position_states(
        valid, masked, run_max, prev_max, vk, vv, chunker,
        (batch, heads, length, k_int, n_chunks, n_g, d_k, d_v),
    )

    # Per-position normalisers; >= 1 once a real item is in the prefix, else 0.
    z = decay * prev_z[..., tf.newaxis] + tf.reduce_sum(weights, axis=-1)
    inv_z = 1.0 / tf.maximum(z, tf.ones_like(z))  # [B, H, k, n, C]
    inv_z = tf.transpose(inv_z, [0, 1, 3, 4, 2])[:, :, tf.newaxis]  # [B, H, 1, n, C, k]
    dec = tf.transpose(decay, [0, 1, 3, 4, 2])[:, :, tf.newaxis]

    q_c = chunker(q2, 2)  # [B, G, n, C, d_k]
    vk_c = chunker(vk, 2)  # [B, H, n, C, G, d_k]
    vv_c = chunker(vv, 2)  # [B, H, n, C, G, d_v]
    q_state = tf.einsum("bgncd,bhkngd->bhgnck", q_c, prev_key)
    q_vk = tf.einsum("bgntd,bhnsgd->bhgnts", q_c, vk_c)
    q_intra = tf.einsum("bhknts,bhgnts->bhgntk", weights, q_vk)
    mean_logits = tf.reduce_sum((dec * q_state + q_intra) * inv_z, axis=1)  # [B, G, n, C, k]
    dispatch_logits = (tf.einsum("bgncd,bgkd->bgnck", q_c, ik) + mean_logits) * scale
    probs = tf.nn.softmax(dispatch_logits, axis=-1)  # [B, G, n, C, k]
    alpha = probs[:, tf.newaxis] * inv_z  # [B, H, G, n, C, k]
    out = tf.einsum("bgnck,bgkv->bgncv", probs, iv)
    out += tf.einsum("bhgnck,bhkngv->bgncv", alpha * dec, prev_val)
    beta = tf.einsum("bhgntk,bhknts->bhgnts", alpha, weights)
    out += tf.einsum("bhgnts,bhnsgv->bgntv", beta, vv_c)
    out = tf.reshape(out, [batch, n_g, n_chunks * chunk, d_v])[:, :, :length]
    return out * m[:, tf.newaxis, :, tf.newaxis]


# ------------------------------------------------------------------ the fast path
def _fast_prefix_states(valid, masked, run_max, center, locals_):
    """The fast path's states before each chunk, relative to its reference ``m_c``.

    ``locals_``: chunked values ``[B, H, n, C, F_j]``. Their chunk sums relative to
    ``R_c``, then the states before each chunk relative to ``m_c`` (``>= R_{c-1}``) by
    :func:`exclusive_prefix_states`. Returns one ``[B, H, k, n, F_j]`` state per tensor
    and the normaliser ``prev_z [B, H, k, n]``.
    """
    end_w = tf.where(valid, tf.exp(masked - run_max[..., tf.newaxis]), tf.zeros_like(masked))
    sums = [tf.einsum("bhknc,bhncf->bhknf", end_w, x) for x in locals_]
    states = exclusive_prefix_states(
        run_max, center, sums + [tf.reduce_sum(end_w, axis=-1, keepdims=True)]
    )
    return states[:-1], states[-1][..., 0]


def _fast_factors(logits, m, chunk, like):
    """The chunk layout and the column factors of the fast path.

    Returns ``(chunker, sizes, valid, masked, run_max, center, e, tril)``: ``sizes`` =
    ``(chunk, n_chunks)``, ``e = exp(a[s] - m_c)`` (``[B, H, k, n, C]``, 0 for padding,
    ``<= exp(30)`` where the fast path is taken: the clamp acts only where it is not) and
    the ``[t, s]`` lower-triangular ones. ``like`` is any ``[B, ., N, ...]`` input.
    """
    chunk, pad, n_chunks, mask_c, has_prefix = _causal_setup(like, m, chunk)
    chunker = _chunker(pad, n_chunks, chunk)
    logits_c = chunker(logits, 3)  # [B, H, k, n, C]
    valid, masked, run_max, _, _, center = _causal_references(logits_c, mask_c, has_prefix)
    e = tf.where(
        valid,
        tf.exp(tf.minimum(masked - center[..., tf.newaxis], _FAST_HALF_RANGE)),
        tf.zeros_like(masked),
    )
    tril = tf.linalg.band_part(tf.ones([chunk, chunk], logits.dtype), -1, 0)
    return chunker, (chunk, n_chunks), valid, masked, run_max, center, e, tril


def _fast_dispatch(q_c, ik, scale, prev_z, e, tril, q_state, q_intra):
    """The dispatch softmax of the fast path from its two parts of the mean logits.

    ``q_state``/``q_intra`` ``[B, H, G, n, C, k]``: ``q_t`` against the state before the
    chunk and against the chunk's own prefix (both relative to ``m_c``, unnormalised).
    Returns ``(probs [B, G, n, C, k], alpha [B, H, G, n, C, k])`` with ``alpha = probs /
    z``, the weight of each state and prefix term in the outputs.
    """
    # Normalisers relative to m_c: >= exp(-30) with a real prefix, else exactly 0.
    z = prev_z[..., tf.newaxis] + tf.einsum("bhkns,ts->bhknt", e, tril)
    inv_z = 1.0 / tf.where(z > 0, z, tf.ones_like(z))  # [B, H, k, n, C]
    inv_z = tf.transpose(inv_z, [0, 1, 3, 4, 2])[:, :, tf.newaxis]  # [B, H, 1, n, C, k]
    mean_logits = tf.reduce_sum((q_state + q_intra) * inv_z, axis=1)  # [B, G, n, C, k]
    dispatch_logits = (tf.einsum("bgncd,bgkd->bgnck", q_c, ik) + mean_logits) * scale
    probs = tf.nn.softmax(dispatch_logits, axis=-1)
    return probs, probs[:, tf.newaxis] * inv_z


def _causal_dispatcher_fast(q2, logits, ik, iv, vk, vv, m, chunk):
    """The causal dispatcher with one reference per interest and chunk (the fast path).

    ``logits [B, H, k, N]`` are the scaled aggregate logits ``interest_query · key /
    sqrt(d_k)``; other shapes as in :func:`causal_dispatcher`. Per chunk ``c`` of ``C``
    positions:

    * across chunks, a running state per interest: ``S_c = Σ_{s <= end of c}
      exp(a[s] - R_c) values[s]`` and its normaliser, relative to the running maximum
      ``R_c`` at the chunk's end, as in the per-position form; the state before chunk
      ``c``, rescaled to ``m_c``, comes from :func:`_fast_prefix_states`;
    * inside the chunk ONE reference ``m_c`` per interest, the midpoint of the range of
      the running maximum over the chunk's positions with a real prefix. Position
      ``t``'s prefix weights ``exp(a[s] - ref[t])`` are ``e[s] = exp(a[s] - m_c)`` times
      the row constant ``exp(m_c - ref[t])``, which cancels between the numerators and
      the normaliser, so the chunk-local prefix sums are masked matmuls:
      ``(q_t · value_key[s]) · tril[t, s]`` times ``e [C, k]``, and
      ``(alpha [C, k] @ eᵀ) · tril`` times ``value_value``; the normaliser
      ``z[t] = exp(R_{c-1} - m_c) S^z_{c-1} + Σ_{s <= t} e[s]`` is a masked prefix sum.
      No ``[k, C, C]`` tensor is formed.

    Exact only when every half-range is ``<= _FAST_HALF_RANGE`` (see the module's
    numerics); :func:`causal_dispatcher` never uses it elsewhere under ``"auto"``.
    """
    batch, length = dims(logits)[0], dims(logits)[3]
    n_g, d_k, d_v, scale = _dispatch_sizes(q2, ik, iv)
    chunker, (chunk, n_chunks), valid, masked, run_max, center, e, tril = _fast_factors(
        logits, m, chunk, vk)
    q_c = chunker(q2, 2)  # [B, G, n, C, d_k]
    vk_c = chunker(vk, 2)  # [B, H, n, C, G, d_k]
    vv_c = chunker(vv, 2)  # [B, H, n, C, G, d_v]
    lead = dims(vk_c)[:4]
    (prev_key, prev_val), prev_z = _fast_prefix_states(
        valid, masked, run_max, center,
        [tf.reshape(vk_c, lead + [n_g * d_k]), tf.reshape(vv_c, lead + [n_g * d_v])],
    )
    prev_key = tf.reshape(prev_key, dims(prev_key)[:4] + [n_g, d_k])  # [B, H, k, n, G, d_k]
    prev_val = tf.reshape(prev_val, dims(prev_val)[:4] + [n_g, d_v])
    e_t = tf.transpose(e, [0, 1, 3, 4, 2])  # [B, H, n, C(s), k]

    q_state = tf.einsum("bgncd,bhkngd->bhgnck", q_c, prev_key)
    q_vk = tf.einsum("bgntd,bhnsgd->bhgnts", q_c, vk_c) * tril
    q_intra = tf.einsum("bhgnts,bhnsk->bhgntk", q_vk, e_t)
    probs, alpha = _fast_dispatch(q_c, ik, scale, prev_z, e, tril, q_state, q_intra)
    out = tf.einsum("bgnck,bgkv->bgncv", probs, iv)
    out += tf.einsum("bhgnck,bhkngv->bgncv", alpha, prev_val)
    beta = tf.einsum("bhgntk,bhnsk->bhgnts", alpha, e_t) * tril
    out += tf.einsum("bhgnts,bhnsgv->bgntv", beta, vv_c)
    out = tf.reshape(out, [batch, n_g, n_chunks * chunk, d_v])[:, :, :length]
    return out * m[:, tf.newaxis, :, tf.newaxis]


def _causal_dispatcher_fast_values(q2, logits, ik, iv, values, fold_k, fold_v, m, chunk):
    """:func:`_causal_dispatcher_fast` for ``value_key``/``value_value`` given as
    ``values [B, H, N, d]`` and the folds ``fold_k [H, d, G, d_k]``, ``fold_v
    [H, d, G, d_v]`` (``value_key = values · fold_k`` per head), never forming them.

    Every use of the folded values is linear in them, so the folds move out of the
    sums: the states and chunk sums are of ``values`` (``d`` features instead of
    ``G (d_k + d_v)``); the queries meet the keys' fold first (``q_t fold_kᵀ``, one
    ``[B, H, G, N, d]`` tensor instead of the two ``[B, H, N, G, d]`` folded values);
    the value side sums ``alpha``-weighted states and ``beta``-weighted values, then
    applies ``fold_v`` once. The same numbers up to float rounding.
    """
    batch, length = dims(logits)[0], dims(logits)[3]
    n_g, _, d_v, scale = _dispatch_sizes(q2, ik, iv)
    chunker, (chunk, n_chunks), valid, masked, run_max, center, e, tril = _fast_factors(
        logits, m, chunk, values)
    q_c = chunker(q2, 2)  # [B, G, n, C, d_k]
    v_c = chunker(values, 2)  # [B, H, n, C, d]
    (prev_v,), prev_z = _fast_prefix_states(valid, masked, run_max, center, [v_c])
    e_t = tf.transpose(e, [0, 1, 3, 4, 2])  # [B, H, n, C(s), k]

    q_fold = tf.einsum("bgncd,hvgd->bhgncv", q_c, fold_k)  # [B, H, G, n, C, d]
    q_state = tf.einsum("bhgncv,bhknv->bhgnck", q_fold, prev_v)
    q_v = tf.einsum("bhgntv,bhnsv->bhgnts", q_fold, v_c) * tril
    q_intra = tf.einsum("bhgnts,bhnsk->bhgntk", q_v, e_t)
    probs, alpha = _fast_dispatch(q_c, ik, scale, prev_z, e, tril, q_state, q_intra)
    beta = tf.einsum("bhgntk,bhnsk->bhgnts", alpha, e_t) * tril
    mixed = (tf.einsum("bhgnck,bhknv->bhgncv", alpha, prev_v)
             + tf.einsum("bhgnts,bhnsv->bhgntv", beta, v_c))  # [B, H, G, n, C, d]
    out = tf.einsum("bgnck,bgkv->bgncv", probs, iv)
    out += tf.einsum("bhgncv,hvge->bgnce", mixed, fold_v)
    out = tf.reshape(out, [batch, n_g, n_chunks * chunk, d_v])[:, :, :length]
    return out * m[:, tf.newaxis, :, tf.newaxis]


__all__ = ["CAUSAL_PATHS", "causal_dispatcher_from_values", "causal_fast_path_ok",
           "fold_values"]
