"""ELASTIC's linear dispatcher attention as pure TensorFlow (no Keras): the non-causal form.

Specification: ``docs/elastic.md`` ("ELASTIC: Efficient Linear Attention for SequenTial
Interest Compression", Deng et al., arXiv 2408.09380). The paper was withdrawn and never
had public code: these functions are this library's reconstruction, and every choice the
paper leaves open is documented where it is made. The causal form's chunk-wise machinery
is in :mod:`tfrs_linear.ops.dispatcher_causal`, the dense O(N²) references in
:mod:`tfrs_linear.ops.reference`, ELASTIC's product-key memory lookup in
:mod:`tfrs_linear.ops.product_keys`.

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
  values). That is the only form a causal model can use (docs/elastic.md, "Causal
  variant"), and it is offered non-causally too (it then equals the causal output at the
  last position, a property the tests use).

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
  0 when there are none (docs/elastic.md: "A is defined as 0").
  (The causal fast path shares one reference between the positions of a chunk, so its
  sums are ``>= exp(-30)`` rather than ``>= 1``; it divides by the sum where it is
  positive and by 1 where it is exactly 0: see :mod:`tfrs_linear.ops.dispatcher_causal`.)
"""

import tensorflow as tf

from tfrs_linear.ops._common import (
    aggregate_logits, check_aggregate_bias, check_match, check_rank, compute_dtype, float_mask,
    inverse_sqrt_width, very_negative,
)
from tfrs_linear.ops.dispatcher_causal import (
    causal_dispatcher, causal_dispatcher_from_values, check_causal_path, fold_values,
)


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
        tf.where(valid, logits, very_negative(logits.dtype)), axis=-1, keepdims=True
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
        check_rank(name, x, 4, "[batch, heads, length, dim]")
    check_match("query", query, -1, "key", key, -1, "query and key widths differ")
    check_match("key", key, 2, "value", value, 2, count_mismatch)
    dtype = compute_dtype(query.dtype)
    return query, tf.cast(query, dtype), tf.cast(key, dtype), tf.cast(value, dtype), dtype


def dispatcher_aggregate(query, key, value, mask=None, aggregate_bias=None):
    """The aggregate step (N -> k): ``A · value``, A a softmax over the real positions.

    ``A = softmax(query keyᵀ / sqrt(d_k))`` over the positions, per head, padded positions
    excluded; with no real position A is exactly 0 (docs/elastic.md), so the result is 0
    and finite, with finite gradients.

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
    logits = aggregate_logits(q, k, check_aggregate_bias(aggregate_bias))
    m = None if mask is None else float_mask(mask, dtype)[:, tf.newaxis, tf.newaxis, :]
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
    logits = tf.einsum("bhnd,bhid->bhni", q, k) * inverse_sqrt_width(q)
    out = tf.einsum("bhni,bhiv->bhnv", tf.nn.softmax(logits, axis=-1), v)
    if mask is not None:
        out = out * float_mask(mask, dtype)[:, tf.newaxis, :, tf.newaxis]
    return tf.cast(out, query.dtype)


def dispatcher_attention(query, key, interest_query, interest_key, interest_value, value_key,
                         value_value, mask=None, causal=False, chunk_size=64,
                         aggregate_bias=None, causal_path="auto"):
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

    Why this form (docs/elastic.md, causal variant): the interest after the aggregate is
    ``P'_t = P + (weighted mean of X W_v1) W_o1``, which is affine in the mean, so the
    dispatch projections ``W_k2``/``W_v2`` (and the aggregate output projection ``W_o1``)
    can be applied to the *values* once per position (``value_key`` and ``value_value``
    are ``X W_v1^h W_o1^h W_k2^g`` and ``... W_v2^g``) and averaged with the same weights:
    there is no per-position ``k x d x d`` work. Before the first real item the means are
    0 (so ``K' = interest_key``) and the output is 0 anyway.

    The causal form is computed chunk-wise, strictly causally, in memory linear in ``N``
    (never N x N, no state per position): a factorised fast path, or an exact
    per-position fallback when the logits jump by more than 60 inside a chunk
    (``causal_path``; :mod:`tfrs_linear.ops.dispatcher_causal` has the details).

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
      causal_path: which implementation of the causal form runs (ignored when
        ``causal=False``): ``"auto"`` (default) the fast path whenever it is exact for
        the call (:func:`tfrs_linear.ops.causal_fast_path_ok`), else the exact
        per-position fallback; ``"fast"`` always the fast path (exact only where
        ``"auto"`` takes it: for benchmarks and tests); ``"exact"`` always the fallback
        (exact for any logits, slower, ``O(N·H·k·C)`` memory).

    Returns:
      ``[B, G, N, d_v]`` in the dtype of ``query``.
    """
    tensors = validate_dispatcher_inputs(
        query, key, interest_query, interest_key, interest_value, value_key, value_value,
        chunk_size,
    )
    check_causal_path(causal_path)
    query = tensors[0]
    dtype = compute_dtype(query.dtype)
    q2, k1, q1, ik, iv, vk, vv = (tf.cast(x, dtype) for x in tensors)
    m = _float_mask_or_ones(mask, k1, dtype)
    bias = check_aggregate_bias(aggregate_bias)
    if causal:
        out = causal_dispatcher(
            q2, k1, q1, ik, iv, vk, vv, m, int(chunk_size), causal_path, bias=bias
        )
    else:
        out = _fused_non_causal(q2, k1, q1, ik, iv, vk, vv, m, bias)
    return tf.cast(out, query.dtype)


def dispatcher_attention_from_values(query, key, interest_query, interest_key,
                                     interest_value, values, fold_key, fold_value, mask=None,
                                     causal=False, chunk_size=64, aggregate_bias=None,
                                     causal_path="auto"):
    """:func:`dispatcher_attention` with the value contributions given as factors.

    Equal to ``dispatcher_attention(query, key, interest_query, interest_key,
    interest_value, *fold_values(values, fold_key, fold_value), ...)``: ``value_key[b, h,
    n, g] = values[b, h, n] @ fold_key[h, :, g]`` and the same for ``value_value``. In
    the layer ``values`` is ``X W_v1 + b_v1`` and the folds are ``W_o1 W_k2`` and ``W_o1
    W_v2`` per head. The causal fast path never forms the folded values: its sums run
    over ``values`` (``d`` features instead of ``G (d_k + d_v)``) and the folds are
    applied after them (about 1.2–1.5× faster forward and backward than forming them
    first, at batch 8, N = 1,024 and batch 128, N = 200; ``docs/bench/causal/profile.md``).
    The non-causal form and the exact fallback form them.

    Args:
      query, key, interest_query, interest_key, interest_value, mask, causal, chunk_size,
        aggregate_bias, causal_path: as in :func:`dispatcher_attention`.
      values: ``[B, H, N, d]``, the aggregate values (``X W_v1``).
      fold_key: ``[H, d, G, d_k]``.
      fold_value: ``[H, d, G, d_v]``.

    Returns:
      ``[B, G, N, d_v]`` in the dtype of ``query``.
    """
    query, values, fold_key, fold_value = (
        tf.convert_to_tensor(x) for x in (query, values, fold_key, fold_value))
    check_rank("values", values, 4, "[batch, heads, length, value_dim]")
    for name, fold, width in (("fold_key", fold_key, "key_dim"),
                              ("fold_value", fold_value, "value_dim")):
        check_rank(name, fold, 4, f"[heads, value_dim, heads, {width}]")
        check_match(name, fold, 0, "values", values, 1, "aggregate heads differ")
        check_match(name, fold, 1, "values", values, 3, "value widths differ")
        check_match(name, fold, 2, "query", query, 1, "dispatch heads differ")
    interest_key, interest_value = (
        tf.convert_to_tensor(x) for x in (interest_key, interest_value))
    check_match("fold_key", fold_key, 3, "interest_key", interest_key, -1, "key widths differ")
    check_match("fold_value", fold_value, 3, "interest_value", interest_value, -1,
                "value widths differ")
    if not causal:
        return dispatcher_attention(
            query, key, interest_query, interest_key, interest_value,
            *fold_values(values, fold_key, fold_value), mask=mask,
            causal=False, chunk_size=chunk_size, aggregate_bias=aggregate_bias)
    # dispatcher_attention's checks, on the shapes the folded values would have.
    lead = values.shape[:3]
    _check_layouts(
        tuple(tf.convert_to_tensor(x) for x in (
            query, key, interest_query, interest_key, interest_value))
        + (tf.TensorSpec(lead.concatenate(fold_key.shape[2:])),
           tf.TensorSpec(lead.concatenate(fold_value.shape[2:]))),
        chunk_size)
    check_causal_path(causal_path)
    dtype = compute_dtype(query.dtype)
    q2, k1, q1, ik, iv, v1, fk, fv = (
        tf.cast(x, dtype) for x in (query, key, interest_query, interest_key, interest_value,
                                    values, fold_key, fold_value))
    m = _float_mask_or_ones(mask, k1, dtype)
    out = causal_dispatcher_from_values(
        q2, k1, q1, ik, iv, v1, fk, fv, m, int(chunk_size), causal_path,
        bias=check_aggregate_bias(aggregate_bias))
    return tf.cast(out, query.dtype)


def _float_mask_or_ones(mask, key, dtype):
    """The ``[B, N]`` padding mask as ``dtype`` (all ones without one) for ``key
    [B, H, N, d]``."""
    if mask is not None:
        return float_mask(mask, dtype)
    shape = tf.shape(key)
    return tf.ones([shape[0], shape[2]], dtype)


def validate_dispatcher_inputs(
    query, key, interest_query, interest_key, interest_value, value_key, value_value,
    chunk_size=64,
):
    """Checks the layouts of :func:`dispatcher_attention`'s inputs; returns them as tensors.

    Raises a ``ValueError`` naming the argument, its shape and the expected layout when a
    rank is wrong, when two sizes that must agree differ (widths, head counts, lengths),
    or when ``chunk_size < 1``. Returns the seven inputs converted to tensors, in order.
    """
    tensors = tuple(
        tf.convert_to_tensor(x)
        for x in (query, key, interest_query, interest_key, interest_value, value_key,
                  value_value)
    )
    _check_layouts(tensors, chunk_size)
    return tensors


def _check_layouts(tensors, chunk_size):
    """:func:`validate_dispatcher_inputs`' checks on anything with a ``.shape``."""
    query, key, interest_query, interest_key, interest_value, value_key, value_value = tensors
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
        check_rank(name, x, rank, layout)
    if int(chunk_size) < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}.")
    check_match("interest_query", interest_query, -1, "key", key, -1, "key widths differ")
    check_match("query", query, -1, "interest_key", interest_key, -1, "key widths differ")
    check_match("value_key", value_key, -1, "interest_key", interest_key, -1,
                "key widths differ")
    check_match("value_value", value_value, -1, "interest_value", interest_value, -1,
                "value widths differ")
    check_match("value_key", value_key, 3, "query", query, 1, "dispatch heads differ")
    check_match("value_key", value_key, 1, "key", key, 1, "aggregate heads differ")
    check_match("key", key, 2, "query", query, 2, "lengths differ")


def _fused_non_causal(q2, k1, q1, ik, iv, vk, vv, m, bias):
    """The non-causal fused form on cast tensors: means over every real position.

    The key and value contributions share the aggregate weights, so they are averaged
    together along one feature axis ``F = G (d_k + d_v)``; the interests of every
    position are then ``interest_key + means`` and ``interest_value + means`` and one
    :func:`dispatcher_dispatch` finishes. Returns ``[B, G, N, d_v]`` (compute dtype).
    """
    d_k = ik.shape[-1] if ik.shape[-1] is not None else tf.shape(ik)[-1]
    shape = tf.shape(k1)
    batch, heads, length = shape[0], shape[1], shape[2]
    values = tf.concat([vk, vv], axis=-1)  # [B, H, N, G, d_k + d_v]
    values = tf.reshape(values, [batch, heads, length, -1])  # [B, H, N, F]
    logits = aggregate_logits(q1, k1, bias)
    weights = masked_softmax_weights(logits, m[:, tf.newaxis, tf.newaxis, :])
    means = tf.reduce_sum(tf.einsum("bhin,bhnf->bhif", weights, values), axis=1)
    n_g = tf.shape(ik)[1]
    k_int = tf.shape(means)[1]
    means = tf.transpose(tf.reshape(means, [batch, k_int, n_g, -1]), [0, 2, 1, 3])
    return dispatcher_dispatch(q2, ik + means[..., :d_k], iv + means[..., d_k:], m)


__all__ = [
    "dispatcher_aggregate",
    "dispatcher_attention",
    "dispatcher_attention_from_values",
    "dispatcher_dispatch",
    "masked_softmax_weights",
]
