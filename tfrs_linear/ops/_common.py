"""Helpers shared by the op modules: compute dtype, masks, layout checks, chunking, logits.

Private to :mod:`tfrs_linear.ops` (the module is private; its names are not, so that
every op module can use them). Nothing here changes a number: these are the dtype,
mask, rank and chunk conventions the numerics contracts of
:mod:`tfrs_linear.ops.linrec` and :mod:`tfrs_linear.ops.dispatcher` are written in.
"""

import tensorflow as tf


def compute_dtype(dtype):
    """The dtype an op computes in: float64 for float64 inputs, float32 otherwise."""
    return tf.float64 if dtype == tf.float64 else tf.float32


def float_mask(mask, dtype, name="mask"):
    """A ``[batch, length]`` padding mask (booleans or 0/1 numbers) as 0/1 ``dtype``.

    Raises a ``ValueError`` naming the argument ``name`` when the mask is not rank 2.
    """
    mask = tf.convert_to_tensor(mask)
    if mask.shape.rank is not None and mask.shape.rank != 2:
        raise ValueError(
            f"`{name}` must be a [batch, length] padding mask, got shape {mask.shape}."
        )
    return tf.cast(tf.cast(mask, tf.bool), dtype)


def events_mask(mask, events):
    """The recurrent forms' 0/1 float32 ``[B, m]`` mask of the new events: ``mask``
    (:func:`float_mask`), or all ones for the ``[B, H, m, d]`` ``events`` when None."""
    if mask is None:
        return tf.ones(tf.shape(events)[0:3:2], tf.float32)
    return float_mask(mask, tf.float32, "mask")


def check_rank(name, x, rank, layout):
    """Raises a ``ValueError`` unless ``x`` has rank ``rank`` (``layout`` names its axes)."""
    if x.shape.rank is not None and x.shape.rank != rank:
        raise ValueError(f"`{name}` must be shaped {layout}, got shape {x.shape}.")


def check_match(name_a, a, axis_a, name_b, b, axis_b, what):
    """Raises a ``ValueError`` when two static sizes that must agree differ."""
    da, db = a.shape[axis_a], b.shape[axis_b]
    if da is not None and db is not None and da != db:
        raise ValueError(
            f"{what}: `{name_a}` has shape {a.shape} and `{name_b}` has shape "
            f"{b.shape} ({da} != {db})."
        )


def with_static_shape(x, shape):
    """``x`` with its static shape refined to ``shape`` (None = unknown), a trace-time
    fact only: unlike ``tf.ensure_shape`` no run-time op is added, which a served
    batch-1 step (a few hundred cheap graph ops) pays for. Raises ``ValueError`` if the
    shapes are incompatible."""
    x.set_shape(shape)
    return x


def very_negative(dtype):
    """A finite stand-in for -inf: half the dtype's lowest value, so that subtracting a
    (moderate) logit from it cannot overflow to -inf."""
    return tf.constant(dtype.min / 2.0, dtype)


def inverse_sqrt_width(x):
    """``1 / sqrt(width)`` of the last axis of ``x``, in the dtype of ``x``."""
    width = x.shape[-1] if x.shape[-1] is not None else tf.shape(x)[-1]
    return tf.math.rsqrt(tf.cast(width, x.dtype))


def dims(x):
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


def chunk_layout(length, chunk):
    """``(chunk, pad, n_chunks)`` of a length-``length`` axis cut into chunks.

    ``length`` is an int (static) or a scalar tensor. A static length no longer than
    ``chunk`` is one chunk of exactly that length (``max(length, 1)``); otherwise the
    axis is padded by ``pad`` to ``n_chunks`` chunks of ``chunk`` positions.
    """
    chunk = int(chunk)
    if isinstance(length, int) and length <= chunk:
        chunk = max(length, 1)
    pad = (-length) % chunk
    n_chunks = (length + pad) // chunk
    return chunk, pad, n_chunks


def chunked(x, axis, pad, n_chunks, chunk):
    """Pads the length ``axis`` of ``x`` by ``pad`` and splits it into ``[n_chunks, chunk]``."""
    paddings = [[0, 0]] * x.shape.rank
    paddings[axis] = [0, pad]
    x = tf.pad(x, paddings)
    shape = dims(x)
    return tf.reshape(x, shape[:axis] + [n_chunks, chunk] + shape[axis + 1:])


def check_aggregate_bias(bias):
    """The dispatcher's ``aggregate_bias`` as a tensor (or None), its rank checked."""
    if bias is None:
        return None
    bias = tf.convert_to_tensor(bias)
    if bias.shape.rank is not None and bias.shape.rank > 4:
        raise ValueError(
            "`aggregate_bias` must broadcast to the aggregate logits [batch, heads, k, "
            f"length], got shape {bias.shape}."
        )
    return bias


def aggregate_logits(q1, k1, bias, einsum=tf.einsum):
    """The dispatcher's scaled aggregate logits ``q1 · k1 / sqrt(d_k) (+ bias)``, ``[B, H, k, N]``.

    ``q1 [B, H, k, d_k]`` are the interest queries, ``k1 [B, H, N, d_k]`` the sequence
    keys. ``bias`` (or None) is broadcast to ``[B, H, k, N]``; it may differ per position
    ``s`` but not per query position, so the causal prefix sums stay prefix sums.
    ``einsum``: ``tf.einsum`` or a function like it (the recurrent forms pass
    :func:`tfrs_linear.ops.contract.contract`).
    """
    logits = einsum("bhid,bhnd->bhin", q1, k1) * inverse_sqrt_width(q1)
    if bias is not None:
        logits = logits + tf.cast(bias, logits.dtype)
    return logits
