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


def dispatcher_aggregate(query, key, value, mask=None):
    """The aggregate step (N -> k): ``A · value``, A a softmax over the real positions.

    ``A = softmax(query keyᵀ / sqrt(d_k))`` over the positions, per head, padded positions
    excluded; with no real position A is exactly 0 (elastic.md), so the result is 0 and
    finite, with finite gradients.

    Args:
      query: ``[B, H, k, d_k]``, the interest queries (``P W_q1``).
      key: ``[B, H, N, d_k]``, the sequence keys (``X W_k1``).
      value: ``[B, H, N, d_v]``, the sequence values (``X W_v1``).
      mask: optional ``[B, N]`` padding mask (True/1 = real item).

    Returns:
      ``[B, H, k, d_v]`` in the dtype of ``query``.
    """
    query, q, k, v, dtype = _prepare_qkv(query, key, value, "key and value lengths differ")
    logits = tf.einsum("bhid,bhnd->bhin", q, k) * _inverse_sqrt_width(q)
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

    The causal form is computed chunk-wise (:func:`_causal_dispatcher`): inside a chunk
    of ``C`` positions the explicit ``C x C`` lower-triangular weights per interest,
    relative to the running maximum of the logits over the prefix (``max`` over
    ``s <= t``, so strictly causal: no future logit rescales a past output); across
    chunks a running (normaliser, numerator) state per interest and aggregate head,
    combined by a log-depth prefix scan. The per-position interests ``K'``/``V'`` are
    never materialised: the dispatch logits and outputs are formed from the states and
    the ``C x C`` products directly. Memory ``O(N·H·k·C + N·H·G·(k + C) +
    (N/C)·H·k·F)`` with ``F = G (d_k + d_v)``; never N x N and no state per position.

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
    logits = tf.einsum("bhid,bhnd->bhin", q1, k1) * _inverse_sqrt_width(q1)

    if not causal:
        weights = masked_softmax_weights(logits, m[:, tf.newaxis, tf.newaxis, :])
        means = tf.reduce_sum(tf.einsum("bhin,bhnf->bhif", weights, values), axis=1)
        n_g = tf.shape(ik)[1]
        k_int = tf.shape(means)[1]
        means = tf.transpose(tf.reshape(means, [batch, k_int, n_g, -1]), [0, 2, 1, 3])
        out = dispatcher_dispatch(q2, ik + means[..., :d_k], iv + means[..., d_k:], m)
        return tf.cast(out, query.dtype)

    out = _causal_dispatcher(q2, k1, q1, ik, iv, vk, vv, m, int(chunk_size))
    return tf.cast(out, query.dtype)


def _shift_right(x, shift, axis, fill):
    """``x`` moved ``shift`` places along ``axis`` (static), the gap filled with ``fill``."""
    paddings = [[0, 0]] * x.shape.rank
    paddings[axis] = [shift, 0]
    length = tf.shape(x)[axis]
    x = tf.pad(x, paddings, constant_values=fill)
    begin = [0] * x.shape.rank
    size = tf.unstack(tf.shape(x))
    size[axis] = length
    return tf.slice(x, begin, tf.stack(size))


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


def _causal_dispatcher(q2, k1, q1, ik, iv, vk, vv, m, chunk):
    """The causal fused dispatcher attention, chunk-wise, without per-position interests.

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
    shape = tf.shape(k1)
    batch, heads, length = shape[0], shape[1], shape[2]
    n_static = k1.shape[2]
    if n_static is not None and n_static <= chunk:
        chunk = max(int(n_static), 1)
    pad = (-length) % chunk
    n_chunks = (length + pad) // chunk
    k_int = q1.shape[2] if q1.shape[2] is not None else tf.shape(q1)[2]
    n_g = q2.shape[1] if q2.shape[1] is not None else tf.shape(q2)[1]
    d_k = ik.shape[-1] if ik.shape[-1] is not None else tf.shape(ik)[-1]
    d_v = iv.shape[-1] if iv.shape[-1] is not None else tf.shape(iv)[-1]
    scale = _inverse_sqrt_width(q2)

    def chunked(x, axis):
        # Pads the length axis and splits it into [n_chunks, chunk].
        paddings = [[0, 0]] * x.shape.rank
        paddings[axis] = [0, pad]
        x = tf.pad(x, paddings)
        new_shape = tf.concat(
            [tf.shape(x)[:axis], [n_chunks, chunk], tf.shape(x)[axis + 1:]], 0
        )
        return tf.reshape(x, new_shape)

    mask_c = chunked(m, 1)  # [B, n, C]
    logits = tf.einsum("bhid,bhnd->bhin", q1, k1) * _inverse_sqrt_width(q1)
    logits_c = chunked(logits, 3)  # [B, H, k, n, C]
    valid = tf.broadcast_to(mask_c[:, tf.newaxis, tf.newaxis] > 0, tf.shape(logits_c))
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
