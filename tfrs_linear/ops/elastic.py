"""ELASTIC: linear dispatcher attention and product-key lookup as pure TensorFlow (no Keras).

Specification: ``shared/docs/elastic.md`` ("ELASTIC: Efficient Linear Attention for
SequenTial Interest Compression", Deng et al., arXiv 2408.09380). The paper was withdrawn
and never had public code: these functions are this library's reconstruction, and every
choice the paper leaves open is documented where it is made.

Layout and masks
----------------
Per-head tensors are ``[batch, heads, length, dim]`` and already projected (the
projections live in the Keras layer), as in :mod:`tfrs_linear.ops.linrec`. The ``k``
interest tokens take the place of the length axis: ``[batch, heads, k, dim]``. Masks are
``[batch, length]`` booleans or 0/1 numbers, True/1 marking a real item.

Linear dispatcher attention (LDA)
---------------------------------
``aggregate`` (N -> k): every interest query attends over the N positions (softmax over
the real positions); ``dispatch`` (k -> N): every position attends over the k interests
(softmax over the interests). Both cost ``O(N k d)``; no N x N matrix is ever formed.

* :func:`dispatcher_aggregate` and :func:`dispatcher_dispatch` are the two non-causal
  steps. The non-causal layer puts its residual + LayerNorm of the interest stream between
  them (a LayerNorm is not linear, so it cannot live inside a fused op).
* :func:`dispatcher_attention` is the fused form in which the interest stream is updated
  *linearly* (the interests are the static tokens plus a softmax-weighted mean of projected
  values). That is the only form a causal model can use (elastic.md, "Causal variant"),
  and it is offered non-causally too (it then equals the causal output at the last
  position, a property the tests use).

Numerics
--------
* float16/bfloat16 inputs are computed in float32 (scores, softmax, running sums) and the
  result is cast back; float64 stays float64.
* Softmaxes are stabilised by subtracting a reference (a maximum) that is wrapped in
  ``tf.stop_gradient``: it cancels exactly between numerator and denominator, so the
  gradient is the exact one, and no ``exp(-inf)`` or ``0 / 0`` is ever evaluated, so no
  NaN can hide behind a ``tf.where``. Masked entries are replaced by 0 *before* ``exp`` and
  multiplied by 0 after it.
* Normalisers: the largest real term of a stabilised sum is ``exp(0) = 1``, so a sum is
  ``>= 1`` as soon as one real position exists and exactly 0 when none does; dividing by
  ``max(sum, 1)`` is then exact when there are real positions and gives weights of exactly
  0 when there are none (elastic.md: "A is defined as 0").
  (The causal fast path shares one reference between the positions of a chunk, so its
  sums are ``>= exp(-30)`` rather than ``>= 1``; it divides by the sum where it is
  positive and by 1 where it is exactly 0: see :func:`_causal_dispatcher_fast`.)

Product keys
------------
:func:`product_key_lookup` is the exact top-m search over ``n^2`` slots of Lample et al.
(2019, arXiv 1907.05242) through two sets of ``n`` sub-keys; it uses only
``tf.math.top_k``, ``tf.gather`` and matmuls, all of which XLA compiles.
"""

import tensorflow as tf


def _compute_dtype(dtype):
    return tf.float64 if dtype == tf.float64 else tf.float32


def _check_rank(name, x, rank, layout):
    if x.shape.rank is not None and x.shape.rank != rank:
        raise ValueError(f"`{name}` must be shaped {layout}, got shape {x.shape}.")


def _float_mask(mask, dtype):
    """A ``[batch, length]`` mask as 0/1 numbers of ``dtype``."""
    mask = tf.convert_to_tensor(mask)
    if mask.shape.rank is not None and mask.shape.rank != 2:
        raise ValueError(
            f"`mask` must be a [batch, length] padding mask, got shape {mask.shape}."
        )
    return tf.cast(tf.cast(mask, tf.bool), dtype)


def _check_match(name_a, a, axis_a, name_b, b, axis_b, what):
    da, db = a.shape[axis_a], b.shape[axis_b]
    if da is not None and db is not None and da != db:
        raise ValueError(
            f"{what}: `{name_a}` has shape {a.shape} and `{name_b}` has shape "
            f"{b.shape} ({da} != {db})."
        )


def _very_negative(dtype):
    # A finite stand-in for -inf: half the dtype's lowest value, so that subtracting a
    # (moderate) logit from it cannot overflow to -inf.
    return tf.constant(dtype.min / 2.0, dtype)


def _inverse_sqrt_width(x):
    width = x.shape[-1] if x.shape[-1] is not None else tf.shape(x)[-1]
    return tf.math.rsqrt(tf.cast(width, x.dtype))


def _dims(x):
    """The shape of ``x`` as a list: static sizes as ints, unknown ones as scalar tensors.

    Reshapes, pads and slices built from it keep every static size static, so that the
    graph holds no shape arithmetic where the shapes are known. (Under XLA, a
    differentiated ``tf.cond`` whose branches computed shapes from their inputs made
    every input a compile-time constant: a recompilation per call.)
    """
    static = x.shape.as_list()
    if all(d is not None for d in static):
        return static
    dynamic = tf.shape(x)
    return [d if d is not None else dynamic[i] for i, d in enumerate(static)]


def _chunked(x, axis, pad, n_chunks, chunk):
    """Pads the length ``axis`` of ``x`` by ``pad`` and splits it into ``[n_chunks, chunk]``."""
    paddings = [[0, 0]] * x.shape.rank
    paddings[axis] = [0, pad]
    x = tf.pad(x, paddings)
    dims = _dims(x)
    return tf.reshape(x, dims[:axis] + [n_chunks, chunk] + dims[axis + 1:])


def masked_softmax_weights(logits, mask=None):
    """Softmax over the last axis restricted to ``mask``; all-masked rows give 0.

    Args:
      logits: ``[..., length]`` (computed in the dtype given).
      mask: ``None`` or a float 0/1 tensor broadcastable to ``logits``.

    Returns:
      Weights like ``logits``; each row sums to 1 over its real entries, or is exactly 0
      when it has none. Gradients are finite everywhere (see the module docstring).
    """
    if mask is None:
        return tf.nn.softmax(logits, axis=-1)
    mask = tf.broadcast_to(mask, tf.shape(logits))
    valid = mask > 0
    reference = tf.reduce_max(
        tf.where(valid, logits, _very_negative(logits.dtype)), axis=-1, keepdims=True
    )
    reference = tf.stop_gradient(reference)
    shifted = tf.where(valid, logits - reference, tf.zeros_like(logits))
    exps = tf.exp(shifted) * mask
    total = tf.reduce_sum(exps, axis=-1, keepdims=True)
    return exps / tf.maximum(total, tf.ones_like(total))


def _prepare_qkv(query, key, value, count_mismatch):
    """Checks ``[B, H, *, d]`` query/key/value and casts them to the compute dtype.

    Returns ``(query, q, k, v, dtype)``: the query tensor as given (for the output dtype)
    and the three inputs in float32 (float64 for float64 inputs).
    """
    query, key, value = (tf.convert_to_tensor(x) for x in (query, key, value))
    for name, x in (("query", query), ("key", key), ("value", value)):
        _check_rank(name, x, 4, "[batch, heads, length, dim]")
    _check_match("query", query, -1, "key", key, -1, "query and key widths differ")
    _check_match("key", key, 2, "value", value, 2, count_mismatch)
    dtype = _compute_dtype(query.dtype)
    return query, tf.cast(query, dtype), tf.cast(key, dtype), tf.cast(value, dtype), dtype


def _aggregate_logits(q1, k1, bias):
    """The scaled aggregate logits ``q1 · k1 / sqrt(d_k) (+ bias)``, ``[B, H, k, N]``.

    ``bias`` (or None) is broadcast to ``[B, H, k, N]``; it may differ per position ``s``
    but not per query position, so the causal prefix sums stay prefix sums.
    """
    logits = tf.einsum("bhid,bhnd->bhin", q1, k1) * _inverse_sqrt_width(q1)
    if bias is not None:
        logits = logits + tf.cast(bias, logits.dtype)
    return logits


def _check_bias(bias):
    if bias is None:
        return None
    bias = tf.convert_to_tensor(bias)
    if bias.shape.rank is not None and bias.shape.rank > 4:
        raise ValueError(
            "`aggregate_bias` must broadcast to the aggregate logits [batch, heads, k, "
            f"length], got shape {bias.shape}."
        )
    return bias


def dispatcher_aggregate(query, key, value, mask=None, aggregate_bias=None):
    """The aggregate step (N -> k): ``A · value``, A a softmax over the real positions.

    ``A = softmax(query keyᵀ / sqrt(d_k))`` over the positions, per head, padded positions
    excluded; with no real position A is exactly 0 (elastic.md), so the result is 0 and
    finite, with finite gradients.

    Args:
      query: ``[B, H, k, d_k]``, the interest queries (``P W_q1``).
      key: ``[B, H, N, d_k]``, the sequence keys (``X W_k1``).
      value: ``[B, H, N, d_v]``, the sequence values (``X W_v1``).
      mask: optional ``[B, N]`` padding mask (True/1 = real item).
      aggregate_bias: optional additive bias of the scaled logits, broadcastable to
        ``[B, H, k, N]`` (e.g. a recency bias ``slope · (s - (N - 1))``).

    Returns:
      ``[B, H, k, d_v]`` in the dtype of ``query``.
    """
    query, q, k, v, dtype = _prepare_qkv(query, key, value, "key and value lengths differ")
    logits = _aggregate_logits(q, k, _check_bias(aggregate_bias))
    m = None if mask is None else _float_mask(mask, dtype)[:, tf.newaxis, tf.newaxis, :]
    weights = masked_softmax_weights(logits, m)
    out = tf.einsum("bhin,bhnv->bhiv", weights, v)
    return tf.cast(out, query.dtype)


def dispatcher_dispatch(query, key, value, mask=None):
    """The dispatch step (k -> N): every position attends over the k interests.

    ``Y = softmax(query keyᵀ / sqrt(d_k)) · value``, the softmax over the k interests (all
    of which are always present, so nothing is masked there). Padded query positions
    output exactly 0.

    Args:
      query: ``[B, H, N, d_k]``, the sequence queries (``X W_q2``).
      key: ``[B, H, k, d_k]``, the interest keys (``P' W_k2``).
      value: ``[B, H, k, d_v]``, the interest values (``P' W_v2``).
      mask: optional ``[B, N]`` padding mask of the queries.

    Returns:
      ``[B, H, N, d_v]`` in the dtype of ``query``.
    """
    query, q, k, v, dtype = _prepare_qkv(
        query, key, value, "key and value interest counts differ"
    )
    logits = tf.einsum("bhnd,bhid->bhni", q, k) * _inverse_sqrt_width(q)
    out = tf.einsum("bhni,bhiv->bhnv", tf.nn.softmax(logits, axis=-1), v)
    if mask is not None:
        out = out * _float_mask(mask, dtype)[:, tf.newaxis, :, tf.newaxis]
    return tf.cast(out, query.dtype)


def _dispatch_to_interests(query, keys, values):
    """Softmax over the interests with per-position interests.

    ``query [B, G, T, d_k]``, ``keys [B, G, T, k, d_k]``, ``values [B, G, T, k, d_v]`` ->
    ``[B, G, T, d_v]``.
    """
    logits = tf.einsum("bgtd,bgtid->bgti", query, keys) * _inverse_sqrt_width(query)
    return tf.einsum("bgti,bgtiv->bgtv", tf.nn.softmax(logits, axis=-1), values)


def dispatcher_attention(
    query,
    key,
    interest_query,
    interest_key,
    interest_value,
    value_key,
    value_value,
    mask=None,
    causal=False,
    chunk_size=64,
    aggregate_bias=None,
):
    """Fused linear dispatcher attention with a linearly updated interest stream.

    Notation: ``H`` aggregate heads (index ``h``), ``G`` dispatch heads (index ``g``),
    ``k`` interests (index ``i``), positions ``s, t``. For each interest ``i`` and
    aggregate head ``h`` the softmax weights over the positions are
    ``a[h, i, s] ∝ exp(interest_query[h, i] · key[h, s] / sqrt(d_k))`` over the real
    positions, all of them (non-causal) or those ``s <= t`` (causal, a different
    normalisation per query position ``t``). The dispatch keys and values seen by
    position ``t`` are::

        K'[t, g, i] = interest_key[g, i]   + Σ_h Σ_s a_t[h, i, s] value_key[h, s, g]
        V'[t, g, i] = interest_value[g, i] + Σ_h Σ_s a_t[h, i, s] value_value[h, s, g]
        Y[t, g]     = softmax_i(query[g, t] · K'[t, g, i] / sqrt(d_k)) · V'[t, g, i]

    Why this form (elastic.md, causal variant): the interest after the aggregate is
    ``P'_t = P + (weighted mean of X W_v1) W_o1``, which is affine in the mean, so the
    dispatch projections ``W_k2``/``W_v2`` (and the aggregate output projection ``W_o1``)
    can be applied to the *values* once per position (``value_key`` and ``value_value``
    are ``X W_v1^h W_o1^h W_k2^g`` and ``... W_v2^g``) and averaged with the same weights:
    there is no per-position ``k x d x d`` work. Before the first real item the means are
    0 (so ``K' = interest_key``) and the output is 0 anyway.

    The causal form is computed chunk-wise (:func:`_causal_dispatcher`); every weight is
    relative to a maximum of the logits over positions ``s <= t`` only (strictly causal:
    no future logit rescales a past output). Across chunks a running (normaliser,
    numerator) state per interest and aggregate head; inside a chunk of ``C`` positions
    one reference per interest and chunk, so that the ``C x C`` lower-triangular prefix
    weights factorise into masked ``C x C`` by ``C x k`` matmuls (no ``[k, C, C]``
    tensor); a call whose logits jump by more than 60 inside a chunk falls back to the
    exact per-position form (explicit ``C x C`` weights per interest, each position
    relative to its own running maximum). The per-position interests ``K'``/``V'`` are
    never materialised: the dispatch logits and outputs are formed from the states and
    the ``C x C`` products directly. Memory ``O(N·H·G·(k + C) + N·H·k + (N/C)·H·k·F)``
    with ``F = G (d_k + d_v)`` (the fallback: ``O(N·k·C)`` more per batch row); never
    N x N and no state per position.

    Args:
      query: ``[B, G, N, d_k]``, the dispatch queries (``X W_q2``).
      key: ``[B, H, N, d_k]``, the aggregate keys (``X W_k1``).
      interest_query: ``[B, H, k, d_k]``, the aggregate queries (``P W_q1``).
      interest_key: ``[B, G, k, d_k]``, the static part of the dispatch keys.
      interest_value: ``[B, G, k, d_v]``, the static part of the dispatch values.
      value_key: ``[B, H, N, G, d_k]``, per-position contributions to the dispatch keys.
      value_value: ``[B, H, N, G, d_v]``, per-position contributions to the values.
      mask: optional ``[B, N]`` padding mask (True/1 = real item); padded positions are
        not averaged and output exactly 0.
      causal: prefix means (``s <= t``) instead of means over the whole sequence.
      chunk_size: chunk length of the causal computation.
      aggregate_bias: optional additive bias of the scaled aggregate logits,
        broadcastable to ``[B, H, k, N]``: a function of the key position ``s`` (and the
        head and interest), the same for every query position ``t``. A recency bias
        ``slope · s`` makes each interest's prefix mean decay with the items' age
        ``t - s`` (the ``exp(-slope · t)`` factor cancels in the normalisation).

    Returns:
      ``[B, G, N, d_v]`` in the dtype of ``query``.
    """
    query, key, interest_query, interest_key, interest_value, value_key, value_value = (
        tf.convert_to_tensor(x)
        for x in (query, key, interest_query, interest_key, interest_value, value_key,
                  value_value)
    )
    layouts = (
        ("query", query, 4, "[batch, heads, length, key_dim]"),
        ("key", key, 4, "[batch, heads, length, key_dim]"),
        ("interest_query", interest_query, 4, "[batch, heads, k, key_dim]"),
        ("interest_key", interest_key, 4, "[batch, heads, k, key_dim]"),
        ("interest_value", interest_value, 4, "[batch, heads, k, value_dim]"),
        ("value_key", value_key, 5, "[batch, heads, length, heads, key_dim]"),
        ("value_value", value_value, 5, "[batch, heads, length, heads, value_dim]"),
    )
    for name, x, rank, layout in layouts:
        _check_rank(name, x, rank, layout)
    if int(chunk_size) < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}.")
    _check_match("interest_query", interest_query, -1, "key", key, -1, "key widths differ")
    _check_match("query", query, -1, "interest_key", interest_key, -1, "key widths differ")
    _check_match("value_key", value_key, -1, "interest_key", interest_key, -1,
                 "key widths differ")
    _check_match("value_value", value_value, -1, "interest_value", interest_value, -1,
                 "value widths differ")
    _check_match("value_key", value_key, 3, "query", query, 1, "dispatch heads differ")
    _check_match("value_key", value_key, 1, "key", key, 1, "aggregate heads differ")
    _check_match("key", key, 2, "query", query, 2, "lengths differ")

    dtype = _compute_dtype(query.dtype)
    q2, k1, q1, ik, iv, vk, vv = (
        tf.cast(x, dtype)
        for x in (query, key, interest_query, interest_key, interest_value, value_key,
                  value_value)
    )
    d_k = ik.shape[-1] if ik.shape[-1] is not None else tf.shape(ik)[-1]
    shape = tf.shape(k1)
    batch, heads, length = shape[0], shape[1], shape[2]
    if mask is None:
        m = tf.ones([batch, length], dtype)
    else:
        m = _float_mask(mask, dtype)
    # Key contributions and value contributions share the weights: one feature axis F.
    values = tf.concat([vk, vv], axis=-1)  # [B, H, N, G, d_k + d_v]
    values = tf.reshape(values, [batch, heads, length, -1])  # [B, H, N, F]
    bias = _check_bias(aggregate_bias)
    logits = _aggregate_logits(q1, k1, bias)

    if not causal:
        weights = masked_softmax_weights(logits, m[:, tf.newaxis, tf.newaxis, :])
        means = tf.reduce_sum(tf.einsum("bhin,bhnf->bhif", weights, values), axis=1)
        n_g = tf.shape(ik)[1]
        k_int = tf.shape(means)[1]
        means = tf.transpose(tf.reshape(means, [batch, k_int, n_g, -1]), [0, 2, 1, 3])
        out = dispatcher_dispatch(q2, ik + means[..., :d_k], iv + means[..., d_k:], m)
        return tf.cast(out, query.dtype)

    out = _causal_dispatcher(q2, k1, q1, ik, iv, vk, vv, m, int(chunk_size), bias=bias)
    return tf.cast(out, query.dtype)


def _shift_right(x, shift, axis, fill):
    """``x`` moved ``shift`` places along ``axis`` (static), the gap filled with ``fill``."""
    paddings = [[0, 0]] * x.shape.rank
    paddings[axis] = [shift, 0]
    size = _dims(x)
    x = tf.pad(x, paddings, constant_values=fill)
    return tf.slice(x, [0] * x.shape.rank, size)


def _running_max(x, axis, neg):
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
        x = tf.maximum(x, _shift_right(x, shift, axis, neg))
        shift *= 2
    return x


def _linear_recurrence(decay, local, axis):
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
        local = local + decay[..., tf.newaxis] * _shift_right(local, shift, axis, 0.0)
        decay = decay * _shift_right(decay, shift, axis, 0.0)
        shift *= 2
    return local


def _exclusive_prefix_states(run_max, center, locals_):
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
    neg = _very_negative(dtype)
    n = _dims(run_max)[-1]
    if isinstance(n, int):
        group = 1 << (((max(n, 1) - 1).bit_length() + 1) // 2)  # a power of 2 >= sqrt(n)
    else:
        group = 16
    pad = (-n) % group
    n_groups = (n + pad) // group
    rank = run_max.shape.rank
    lead = _dims(run_max)[:-1]

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
    prev_r_end = _shift_right(r_end, 1, rank - 1, neg)
    carry = tf.exp(tf.minimum(prev_r_end[..., tf.newaxis] - cen, 0.0))  # [..., J, g]
    results = []
    for local in locals_:
        feat = _dims(local)[-1]
        loc = grouped(local, [feat])  # [..., J, g, F]
        within = tf.matmul(w_in, loc)  # [..., J, g, F]
        totals = tf.matmul(w_end, loc)[..., 0, :]  # [..., J, F], relative to r_end
        ends = tf.matmul(w_x, totals)  # [..., J, F]: inclusive, relative to r_end
        prev_ends = _shift_right(ends, 1, rank - 1, 0.0)
        out = within + carry[..., tf.newaxis] * prev_ends[..., tf.newaxis, :]
        out = tf.reshape(out, lead + [n_groups * group, feat])
        results.append(out[..., :n, :])
    return results


# Largest half-range of the running maximum inside one chunk (per interest) for which the
# factorised fast path of the causal dispatcher is used: its column factors are then at
# most exp(30) ~ 1e13 and its normalisers at least exp(-30) ~ 1e-13, so nothing over- or
# underflows in float32. A running maximum that rises by more than 2 * 30 = 60 inside one
# chunk sends the whole call to the per-position fallback.
_FAST_HALF_RANGE = 30.0


def _causal_setup(k1, m, chunk):
    """Static-where-possible sizes and the chunked ``[B, n, C]`` masks of the causal form.

    Returns ``(chunk, pad, n_chunks, mask_c, has_prefix)``; ``has_prefix`` marks the
    positions with a real item at or before them (padding after a real item included).
    """
    length = _dims(k1)[2]
    if isinstance(length, int) and length <= chunk:
        chunk = max(length, 1)
    pad = (-length) % chunk
    n_chunks = (length + pad) // chunk
    mask_c = _chunked(m, 1, pad, n_chunks, chunk)  # [B, n, C]
    has_prefix = _chunked(tf.cumsum(m, axis=1), 1, pad, n_chunks, chunk) > 0
    return chunk, pad, n_chunks, mask_c, has_prefix


def _chunker(pad, n_chunks, chunk):
    """``chunked(x, axis)``: pads the length axis of ``x`` and splits it into ``[n_chunks, chunk]``."""
    return lambda x, axis: _chunked(x, axis, pad, n_chunks, chunk)


def _dispatch_sizes(q2, ik, iv):
    """``(G, d_k, d_v, 1 / sqrt(d_k))`` of the dispatch step."""
    return _dims(q2)[1], _dims(ik)[-1], _dims(iv)[-1], _inverse_sqrt_width(q2)


def _causal_references(logits_c, mask_c, has_prefix):
    """Stop-gradient references of the causal form for chunked logits ``[B, H, k, n, C]``.

    Returns ``(valid, masked, run_max, prev_max, half_range, center)``: ``masked`` are the
    logits with padding replaced by a very negative number, ``run_max`` (``R_c``) the
    running maximum at the end of each chunk and ``prev_max`` the one before it
    (``[B, H, k, n]``); ``half_range`` is half the rise of the running maximum over the
    chunk's positions that have a real prefix (0 where none has) and ``center`` the
    midpoint of that range (``R_c`` where no position has a real prefix).
    """
    neg = _very_negative(logits_c.dtype)
    valid = tf.broadcast_to(mask_c[:, tf.newaxis, tf.newaxis] > 0, _dims(logits_c))
    masked = tf.where(valid, logits_c, neg)
    plain = tf.stop_gradient(masked)
    chunk_max = tf.reduce_max(plain, axis=-1)  # [B, H, k, n]
    run_max = _running_max(chunk_max, 3, neg)
    prev_max = _shift_right(run_max, 1, 3, neg)
    # The running maximum over the prefix s <= t (previous chunks included).
    ref = tf.maximum(_running_max(plain, 4, neg), prev_max[..., tf.newaxis])
    low = tf.reduce_min(
        tf.where(has_prefix[:, tf.newaxis, tf.newaxis], ref, run_max[..., tf.newaxis]),
        axis=-1,
    )
    half_range = 0.5 * (run_max - low)  # >= 0
    center = low + half_range
    return valid, masked, run_max, prev_max, half_range, center


def _causal_dispatcher(q2, k1, q1, ik, iv, vk, vv, m, chunk, path="auto", with_flag=False,
                       bias=None):
    """The causal fused dispatcher attention, chunk-wise, without per-position interests.

    Shapes as in :func:`dispatcher_attention` (``m`` a float ``[B, N]`` mask). For
    interest ``i`` of aggregate head ``h`` the prefix weights of position ``t`` are
    ``w[t, s] ∝ exp(a[s])`` over the real ``s <= t``, normalised over that prefix; the
    dispatch needs ``q_t · K'[t, i]`` and ``Σ_i p[t, i] V'[t, i]``, with ``K'``/``V'`` the
    prefix means of the folded values.

    Two exact implementations:

    * :func:`_causal_dispatcher_fast` (used whenever it is safe): one reference per
      interest and chunk, so the ``C x C`` prefix weights factorise and the chunk-local
      sums are masked matmuls; no ``[k, C, C]`` tensor. Memory
      ``O(N·H·G·(C + k) + N·H·k + (N / C)·H·k·F)``.
    * :func:`_causal_dispatcher_per_position` (the fallback): the explicit per-interest
      ``C x C`` weights relative to each position's own running maximum; exact for any
      logits, ``O(N·H·k·C)`` memory and ``exp`` evaluations per batch row (here it runs
      one batch row at a time, see :func:`_per_position_unless`).

    The fast path is safe when, for every interest and chunk, the running maximum of the
    logits rises by at most ``2 * _FAST_HALF_RANGE = 60`` over the chunk's positions with
    a real prefix (see :func:`_causal_dispatcher_fast`); the check is one reduction over
    ``[B, H, k, N / C]``. If any chunk of the call fails it (a logit jump > 60 inside a
    chunk), the whole call uses the per-position form. The switch keeps XLA happy with
    static and dynamic shapes alike: the fast path always runs (on zeroed logits when it
    is not safe, so that it stays finite, and its result is then discarded by a
    ``tf.where``); the per-position form sits in a ``tf.cond`` (one branch runs, under XLA
    too) inside a ``tf.custom_gradient`` whose gradient is another ``tf.cond`` that
    recomputes the per-position form only when it was taken. (Differentiating a plain
    ``tf.cond`` under XLA makes it output every intermediate of both branches; with
    dynamic shapes that does not compile.) A call that falls back therefore costs about
    the per-position form's forward twice and its backward once, plus the fast path.

    Time ``O(N·H·G·(C·(k + d) + k·d))``, linear in ``N``, never ``N x N``.

    ``path`` forces an implementation for tests and benchmarks: ``"auto"`` (the above),
    ``"fast"`` (exact only where ``"auto"`` would take it) or ``"per_position"``;
    ``with_flag=True`` returns ``(output, fast_ok)`` with ``fast_ok`` the scalar boolean
    that ``"auto"`` switches on. ``bias`` is the optional additive bias of the aggregate
    logits (see :func:`dispatcher_attention`).
    """
    if path not in ("auto", "fast", "per_position"):
        raise ValueError(f"path must be 'auto', 'fast' or 'per_position', got {path!r}.")
    if bias is not None:
        # Materialised once so that the per-position form can take it row by row.
        bias = tf.broadcast_to(tf.cast(bias, q1.dtype), _dims(q1)[:3] + _dims(k1)[2:3])
    logits = _aggregate_logits(q1, k1, bias)
    chunk_, pad, n_chunks, mask_c, has_prefix = _causal_setup(k1, m, chunk)
    logits_c = _chunked(logits, 3, pad, n_chunks, chunk_)  # [B, H, k, n, C]
    half_range = _causal_references(logits_c, mask_c, has_prefix)[4]
    fast_ok = tf.reduce_all(half_range <= _FAST_HALF_RANGE)
    if path == "fast":
        out = _causal_dispatcher_fast(q2, logits, ik, iv, vk, vv, m, chunk)
    elif path == "per_position":
        out = _causal_dispatcher_per_position(q2, k1, q1, ik, iv, vk, vv, m, chunk, bias)
    else:
        # Where the fast path is not safe it runs on zeroed logits (range 0), so that its
        # values and gradients stay finite; the tf.where then takes the fallback's
        # result instead and hands the fast path zero gradients.
        safe_logits = tf.where(fast_ok, logits, tf.zeros_like(logits))
        fast = _causal_dispatcher_fast(q2, safe_logits, ik, iv, vk, vv, m, chunk)
        slow = _per_position_unless(fast_ok, q2, k1, q1, ik, iv, vk, vv, m, chunk, bias)
        out = tf.where(fast_ok, fast, slow)
    return (out, fast_ok) if with_flag else out


def _per_position_unless(skip, q2, k1, q1, ik, iv, vk, vv, m, chunk, bias=None):
    """:func:`_causal_dispatcher_per_position`, or zeros (and zero gradients) if ``skip``.

    A ``tf.cond`` in a ``tf.custom_gradient``: the forward pass runs one branch; the
    backward pass is a ``tf.cond`` too, and recomputes the per-position form (under a
    tape) only when it was taken. Nothing of the untaken branch is ever materialised.
    The per-position form runs one batch row at a time (``tf.map_fn``), so that its
    ``[k, C, C]`` weights take ``1 / B`` of the memory they would: XLA reserves the
    buffers of a branch whether it runs or not. ``bias`` (None or ``[B, H, k, N]``) is
    the aggregate logits' additive bias; it gets its gradient like the other inputs.
    """
    xs = (q2, k1, q1, ik, iv, vk, vv) + (() if bias is None else (bias,))
    n_x = len(xs)
    out_spec = tf.TensorSpec([q2.shape[1], q2.shape[2], iv.shape[-1]], q2.dtype)
    in_specs = [tf.TensorSpec(x.shape[1:], x.dtype) for x in xs]

    def per_position(x_row, m_row):
        x_row = list(x_row)
        row_bias = x_row.pop() if bias is not None else None
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
            lambda: tf.zeros(_dims(q2)[:3] + _dims(iv)[-1:], q2.dtype),
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


def _causal_dispatcher_fast(q2, logits, ik, iv, vk, vv, m, chunk):
    """The causal dispatcher with one reference per interest and chunk (the fast path).

    ``logits [B, H, k, N]`` are the scaled aggregate logits ``interest_query · key /
    sqrt(d_k)``; other shapes as in :func:`dispatcher_attention`. Per chunk ``c`` of
    ``C`` positions:

    * across chunks, a running state per interest: ``S_c = Σ_{s <= end of c}
      exp(a[s] - R_c) values[s]`` and its normaliser, relative to the running maximum
      ``R_c`` at the chunk's end, as in the per-position form; the state before chunk
      ``c``, rescaled to ``m_c``, comes from :func:`_exclusive_prefix_states` (masked
      matmuls over groups of chunks instead of a log-depth scan);
    * inside the chunk ONE reference ``m_c`` per interest, the midpoint of the range of
      the running maximum over the chunk's positions with a real prefix. Position
      ``t``'s prefix weights ``exp(a[s] - ref[t])`` are ``e[s] = exp(a[s] - m_c)`` times
      the row constant ``exp(m_c - ref[t])``, which cancels between the numerators and
      the normaliser, so the chunk-local prefix sums are masked matmuls:
      ``(q_t · value_key[s]) · tril[t, s]`` times ``e [C, k]``, and
      ``(alpha [C, k] @ eᵀ) · tril`` times ``value_value``; the normaliser
      ``z[t] = exp(R_{c-1} - m_c) S^z_{c-1} + Σ_{s <= t} e[s]`` is a masked prefix sum.
      No ``[k, C, C]`` tensor is formed.

    Exact when every half-range is ``<= _FAST_HALF_RANGE`` (30): the references are
    ``tf.stop_gradient``-ed and cancel between numerators and normalisers, so values and
    gradients are those of the per-position form, and no term over- or underflows into
    the result: every exponent of a real item is ``<= 30`` (``e <= 1.1e13``), and the
    normaliser of a position with a real prefix is ``>= exp(ref[t] - m_c) >= exp(-30)``
    (its prefix maximum contributes that), so ``1 / z <= 1.1e13`` and ``1 / z² <= 1.2e26``
    in the gradient. A term that underflows (``a[s] - m_c < -87``) is below
    ``exp(-57)`` of its normaliser, as in the per-position form; ``R_{c-1} <= m_c``, so the
    state's rescaling is ``<= 1``. Positions with no real item in their prefix have
    ``z = 0`` exactly: their means are 0 (divided by 1), as before. On other inputs the
    result is wrong (and may not be finite): :func:`_causal_dispatcher` never uses it
    there.
    """
    dtype = q2.dtype
    batch, heads, length = _dims(logits)[0], _dims(vk)[1], _dims(logits)[3]
    chunk, pad, n_chunks, mask_c, has_prefix = _causal_setup(vk, m, chunk)
    k_int = _dims(logits)[2]
    n_g, d_k, d_v, scale = _dispatch_sizes(q2, ik, iv)
    chunked = _chunker(pad, n_chunks, chunk)

    logits_c = chunked(logits, 3)  # [B, H, k, n, C]
    valid, masked, run_max, _, _, center = _causal_references(logits_c, mask_c, has_prefix)
    # Column factors exp(a[s] - m_c), <= exp(30) where the fast path is taken (the clamp
    # acts only where it is not); 0 for padding.
    e = tf.where(
        valid,
        tf.exp(tf.minimum(masked - center[..., tf.newaxis], _FAST_HALF_RANGE)),
        tf.zeros_like(masked),
    )  # [B, H, k, n, C]

    q_c = chunked(q2, 2)  # [B, G, n, C, d_k]
    vk_c = chunked(vk, 2)  # [B, H, n, C, G, d_k]
    vv_c = chunked(vv, 2)  # [B, H, n, C, G, d_v]
    # Chunk sums relative to R_c, then the states before each chunk relative to
    # m_c (>= R_{c-1}).
    end_w = tf.where(valid, tf.exp(masked - run_max[..., tf.newaxis]), tf.zeros_like(masked))
    local_key = tf.einsum("bhknc,bhncgd->bhkngd", end_w, vk_c)
    local_val = tf.einsum("bhknc,bhncgd->bhkngd", end_w, vv_c)
    prev_key, prev_val, prev_z = _exclusive_prefix_states(run_max, center, [
        tf.reshape(local_key, [batch, heads, k_int, n_chunks, n_g * d_k]),
        tf.reshape(local_val, [batch, heads, k_int, n_chunks, n_g * d_v]),
        tf.reduce_sum(end_w, axis=-1, keepdims=True),
    ])
    prev_key = tf.reshape(prev_key, [batch, heads, k_int, n_chunks, n_g, d_k])
    prev_val = tf.reshape(prev_val, [batch, heads, k_int, n_chunks, n_g, d_v])
    prev_z = prev_z[..., 0]  # [B, H, k, n]

    tril = tf.linalg.band_part(tf.ones([chunk, chunk], dtype), -1, 0)  # [t, s]
    # Normalisers relative to m_c: >= exp(-30) with a real prefix, else exactly 0.
    z = prev_z[..., tf.newaxis] + tf.einsum("bhkns,ts->bhknt", e, tril)
    inv_z = 1.0 / tf.where(z > 0, z, tf.ones_like(z))  # [B, H, k, n, C]
    inv_z = tf.transpose(inv_z, [0, 1, 3, 4, 2])[:, :, tf.newaxis]  # [B, H, 1, n, C, k]
    e_t = tf.transpose(e, [0, 1, 3, 4, 2])  # [B, H, n, C(s), k]

    q_state = tf.einsum("bgncd,bhkngd->bhgnck", q_c, prev_key)
    q_vk = tf.einsum("bgntd,bhnsgd->bhgnts", q_c, vk_c) * tril
    q_intra = tf.einsum("bhgnts,bhnsk->bhgntk", q_vk, e_t)
    mean_logits = tf.reduce_sum((q_state + q_intra) * inv_z, axis=1)  # [B, G, n, C, k]
    dispatch_logits = (tf.einsum("bgncd,bgkd->bgnck", q_c, ik) + mean_logits) * scale
    probs = tf.nn.softmax(dispatch_logits, axis=-1)  # [B, G, n, C, k]
    alpha = probs[:, tf.newaxis] * inv_z  # [B, H, G, n, C, k]
    out = tf.einsum("bgnck,bgkv->bgncv", probs, iv)
    out += tf.einsum("bhgnck,bhkngv->bgncv", alpha, prev_val)
    beta = tf.einsum("bhgntk,bhnsk->bhgnts", alpha, e_t) * tril
    out += tf.einsum("bhgnts,bhnsgv->bgntv", beta, vv_c)
    out = tf.reshape(out, [batch, n_g, n_chunks * chunk, d_v])[:, :, :length]
    return out * m[:, tf.newaxis, :, tf.newaxis]


def _causal_dispatcher_per_position(q2, k1, q1, ik, iv, vk, vv, m, chunk, bias=None):
    """The causal fused dispatcher attention with per-position references (the fallback).

    Exact for every input (no exponent is ever positive), but it forms the ``C x C``
    prefix weights of every interest: ``O(N·H·k·C)`` memory and ``exp`` evaluations.
    :func:`_causal_dispatcher` uses it only when a chunk's logits jump too far for the
    factorised fast path.

    Shapes as in :func:`dispatcher_attention` (``m`` a float ``[B, N]`` mask). For
    interest ``i`` of aggregate head ``h`` the prefix weights of position ``t`` are
    ``w[t, s] = exp(a[s] - ref[t])`` for real ``s <= t``, with ``ref[t]`` the running
    maximum of the logits over the prefix (strictly causal: a future logit never
    rescales a past output, and every weight is <= 1 so nothing overflows).

    The dispatch needs ``q_t · K'[t, i]`` and ``Σ_i p[t, i] V'[t, i]``, where ``K'`` and
    ``V'`` are prefix means of the folded values. Both are linear in those means, so
    instead of materialising ``K'[t, i]`` (``N x k x d``) this computes, per chunk of
    ``C`` positions:

    * across chunks, a running state per interest: ``S_c = Σ_{s <= end of c}
      exp(a[s] - R_c) values[s]`` and its normaliser, relative to the running maximum
      ``R_c`` at the chunk's end (``tf.scan`` over the ``N / C`` chunks, elementwise
      work only);
    * inside a chunk, the explicit ``C x C`` lower-triangular weights per interest and
      the ``C x C`` products ``q_t · value_key[s]``.

    Memory ``O(N·H·k·C + N·H·G·(k + C) + (N / C)·H·k·F)``, time
    ``O(N·H·G·(C·(k + d) + k·d))``: linear in ``N``, never ``N x N``.
    """
    dtype = q2.dtype
    neg = _very_negative(dtype)
    batch, heads, length = _dims(k1)[:3]
    chunk, pad, n_chunks, mask_c, _ = _causal_setup(k1, m, chunk)  # mask_c: [B, n, C]
    k_int = _dims(q1)[2]
    n_g, d_k, d_v, scale = _dispatch_sizes(q2, ik, iv)
    chunked = _chunker(pad, n_chunks, chunk)

    logits = _aggregate_logits(q1, k1, bias)
    logits_c = chunked(logits, 3)  # [B, H, k, n, C]
    valid = tf.broadcast_to(mask_c[:, tf.newaxis, tf.newaxis] > 0, _dims(logits_c))
    masked = tf.where(valid, logits_c, neg)
    # References (stop-gradient: the result does not depend on them).
    chunk_max = tf.stop_gradient(tf.reduce_max(masked, axis=-1))  # [B, H, k, n]
    # R_c: the running maximum at the end of chunk c (an inclusive cumulative max).
    run_max = _running_max(chunk_max, 3, neg)
    prev_max = _shift_right(run_max, 1, 3, neg)
    # ref[t]: the running maximum over the prefix s <= t (previous chunks included).
    ref = tf.stop_gradient(
        tf.maximum(_running_max(masked, 4, neg), prev_max[..., tf.newaxis])
    )  # [B, H, k, n, C]
    tril = tf.linalg.band_part(tf.ones([chunk, chunk], dtype), -1, 0)
    # [B, 1, 1, n, C(t), C(s)]: s <= t and s real (shared by heads and interests).
    pair_valid = (tril * mask_c[:, :, tf.newaxis, :])[:, tf.newaxis, tf.newaxis]
    # masked[s] - ref[t] <= 0 for every real s <= t; elsewhere the weight is 0.
    weights = tf.exp(
        tf.minimum(masked[..., tf.newaxis, :] - ref[..., tf.newaxis], 0.0)
    ) * pair_valid  # [B, H, k, n, C, C]
    decay = tf.exp(prev_max[..., tf.newaxis] - ref)  # <= 1, [B, H, k, n, C]

    # Chunk states relative to R_c, then the running state across chunks.
    values = tf.concat(
        [tf.reshape(vk, [batch, heads, length, -1]), tf.reshape(vv, [batch, heads, length, -1])],
        axis=-1,
    )  # [B, H, N, F], F = G (d_k + d_v)
    values_c = chunked(values, 2)  # [B, H, n, C, F]
    end_w = tf.where(valid, tf.exp(masked - run_max[..., tf.newaxis]), tf.zeros_like(masked))
    local = tf.einsum("bhknc,bhncf->bhknf", end_w, values_c)
    local = tf.concat([local, tf.reduce_sum(end_w, axis=-1)[..., tf.newaxis]], axis=-1)
    step_decay = tf.exp(prev_max - run_max)  # [B, H, k, n]

    states = _linear_recurrence(step_decay, local, 3)  # [B, H, k, n, F + 1], inclusive
    prev = _shift_right(states, 1, 3, 0.0)
    prev_z = prev[..., -1]  # [B, H, k, n]
    g_dk = n_g * d_k
    prev_key = tf.reshape(prev[..., :g_dk], [batch, heads, k_int, n_chunks, n_g, d_k])
    prev_val = tf.reshape(prev[..., g_dk:-1], [batch, heads, k_int, n_chunks, n_g, d_v])

    # Per-position normalisers; >= 1 once a real item is in the prefix, else 0.
    z = decay * prev_z[..., tf.newaxis] + tf.reduce_sum(weights, axis=-1)
    inv_z = 1.0 / tf.maximum(z, tf.ones_like(z))  # [B, H, k, n, C]
    inv_z = tf.transpose(inv_z, [0, 1, 3, 4, 2])[:, :, tf.newaxis]  # [B, H, 1, n, C, k]
    dec = tf.transpose(decay, [0, 1, 3, 4, 2])[:, :, tf.newaxis]

    q_c = chunked(q2, 2)  # [B, G, n, C, d_k]
    vk_c = chunked(vk, 2)  # [B, H, n, C, G, d_k]
    vv_c = chunked(vv, 2)  # [B, H, n, C, G, d_v]
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


def product_key_lookup(queries, sub_keys_1, sub_keys_2, top_m):
    """Exact top-m search over ``n²`` product keys (Lample et al. 2019).

    Slot ``(i1, i2)`` has the key ``[sub_keys_1[i1], sub_keys_2[i2]]``, so its score is
    ``q1 · sub_keys_1[i1] + q2 · sub_keys_2[i2]`` with ``q = [q1, q2]`` the two halves of
    the query. The best ``m`` slots are among the ``m x m`` pairs of the best ``m`` of
    each half (a slot outside them is beaten by ``m`` slots inside), so top-m on each half
    and top-m of the ``m²`` candidate sums is the exact top-m over all ``n²`` slots at
    cost ``O(n d_q + m²)``. Only ``tf.matmul``, ``tf.math.top_k`` and ``tf.gather`` are
    used: it compiles under ``tf.function(jit_compile=True)``.

    Args:
      queries: ``[..., d_q]`` with ``d_q`` even.
      sub_keys_1: ``[n, d_q / 2]``, the sub-keys of the first half.
      sub_keys_2: ``[n, d_q / 2]``, the sub-keys of the second half.
      top_m: how many slots to return, ``1 <= top_m <= n``.

    Returns:
      ``(scores, indices)``: ``scores [..., top_m]`` in decreasing order (dtype of
      ``queries``; computed in float32 for float16/bfloat16) and ``indices [..., top_m]``
      int32 into the ``n²`` slots, ``index = i1 * n + i2``.
    """
    queries = tf.convert_to_tensor(queries)
    sub_keys_1 = tf.convert_to_tensor(sub_keys_1)
    sub_keys_2 = tf.convert_to_tensor(sub_keys_2)
    for name, keys in (("sub_keys_1", sub_keys_1), ("sub_keys_2", sub_keys_2)):
        _check_rank(name, keys, 2, "[num_keys, query_dim / 2]")
    if not sub_keys_1.shape.is_compatible_with(sub_keys_2.shape):
        raise ValueError(
            "`sub_keys_1` and `sub_keys_2` must have the same shape [num_keys, "
            f"query_dim / 2], got {sub_keys_1.shape} and {sub_keys_2.shape}."
        )
    n, half = sub_keys_1.shape[0], sub_keys_1.shape[1]
    if queries.shape.rank is not None and queries.shape.rank < 1:
        raise ValueError(f"`queries` must be shaped [..., query_dim], got {queries.shape}.")
    d_q = queries.shape[-1]
    if d_q is not None and half is not None and d_q != 2 * half:
        raise ValueError(
            f"`queries` have width {d_q} but the sub-keys have width {half}: the query "
            f"width must be twice the sub-key width (queries {queries.shape}, sub-keys "
            f"{sub_keys_1.shape})."
        )
    top_m = int(top_m)
    if top_m < 1 or (n is not None and top_m > n):
        raise ValueError(f"top_m must be in [1, num_keys={n}], got {top_m}.")
    dtype = _compute_dtype(queries.dtype)
    q = tf.cast(queries, dtype)
    keys_1 = tf.cast(sub_keys_1, dtype)
    keys_2 = tf.cast(sub_keys_2, dtype)
    half = half if half is not None else tf.shape(keys_1)[1]
    n_keys = n if n is not None else tf.shape(keys_1)[0]
    lead = tf.shape(q)[:-1]
    flat = tf.reshape(q, [-1, 2 * half])
    scores_1 = tf.matmul(flat[:, :half], keys_1, transpose_b=True)  # [R, n]
    scores_2 = tf.matmul(flat[:, half:], keys_2, transpose_b=True)
    best_1, idx_1 = tf.math.top_k(scores_1, k=top_m)  # [R, m]
    best_2, idx_2 = tf.math.top_k(scores_2, k=top_m)
    candidates = best_1[:, :, tf.newaxis] + best_2[:, tf.newaxis, :]  # [R, m, m]
    candidates = tf.reshape(candidates, [-1, top_m * top_m])
    scores, pair = tf.math.top_k(candidates, k=top_m)  # [R, m]
    slot_1 = tf.gather(idx_1, pair // top_m, batch_dims=1)
    slot_2 = tf.gather(idx_2, pair % top_m, batch_dims=1)
    indices = tf.cast(slot_1 * n_keys + slot_2, tf.int32)
    out_shape = tf.concat([lead, [top_m]], axis=0)
    scores = tf.reshape(scores, out_shape)
    indices = tf.reshape(indices, out_shape)
    return tf.cast(scores, queries.dtype), indices


__all__ = [
    "dispatcher_aggregate",
    "dispatcher_attention",
    "dispatcher_dispatch",
    "masked_softmax_weights",
    "product_key_lookup",
]
