"""Helpers shared by the Keras 3 layers: masks, dtypes, stable softmax, shape utilities.

Everything here is written against ``keras.ops`` and runs on every Keras backend. Nothing
imports TensorFlow, tf-keras or TFRS.
"""

import keras
import numpy as np
from keras import ops

from tfrs_linear.keras3 import _portable as P

try:  # Keras 3 keeps masks of JAX/torch tensors in a side table; this reads both.
    from keras.src.backend import get_keras_mask as _get_keras_mask
except ImportError:  # pragma: no cover - older/newer Keras layouts
    def _get_keras_mask(x):
        return getattr(x, "_keras_mask", None)

PACKAGE = "tfrs_linear_keras3"
register = keras.saving.register_keras_serializable(package=PACKAGE)


def backend_name():
    return keras.config.backend()


def keras_mask(x):
    """The Keras mask attached to ``x`` (``Embedding(mask_zero=True)`` etc.), or None."""
    if x is None:
        return None
    return _get_keras_mask(x)


def as_bool_mask(mask, what="mask"):
    """A ``[batch, length]`` padding mask as booleans (None stays None)."""
    if mask is None:
        return None
    mask = ops.convert_to_tensor(mask)
    if len(mask.shape) != 2:
        raise ValueError(
            f"`{what}` must be a [batch, length] padding mask (True = real item), got "
            f"shape {tuple(mask.shape)}."
        )
    return ops.cast(mask, "bool")


def compute_dtype(dtype):
    """float64 stays float64; everything else (float16, bfloat16, float32) is float32."""
    return "float64" if keras.backend.standardize_dtype(dtype) == "float64" else "float32"


def very_negative(dtype):
    """A finite stand-in for -inf as a scalar tensor of ``dtype``: half the dtype's lowest
    value, so that subtracting a moderate logit from it cannot overflow."""
    dtype = keras.backend.standardize_dtype(dtype)
    return ops.convert_to_tensor(np.asarray(np.finfo(dtype).min / 2, dtype=dtype))


def dims(x):
    """The shape of ``x`` as a list: ints where static, scalar tensors where not."""
    return list(ops.shape(x))


def safe_norm(x, axis, epsilon):
    """``max(||x||_2, epsilon)`` along ``axis`` (kept), with finite gradients at 0."""
    squared = ops.sum(ops.square(x), axis=axis, keepdims=True)
    return ops.sqrt(P.maximum(squared, ops.cast(epsilon, x.dtype) ** 2))


def positive_or_one(total):
    """``max(total, 1)`` for sums that are ``>= 1`` or exactly 0, written as a ``where`` so
    that the gradient is the identity's (JAX splits a ``maximum``'s gradient at ties)."""
    return ops.where(total > 0, total, ops.ones_like(total))


def masked_softmax_weights(logits, mask=None):
    """Softmax over the last axis restricted to ``mask`` (0/1 floats); all-masked rows -> 0.

    A stop-gradient maximum over the real entries is subtracted, masked entries are set
    to 0 before ``exp`` and multiplied by 0 after it, and the sum is divided by
    ``max(sum, 1)``: exact when a real entry exists (its largest term is ``exp(0) = 1``),
    exactly 0 weights when none does, and no NaN anywhere (values or gradients).
    """
    if mask is None:
        return ops.softmax(logits, axis=-1)
    mask = ops.broadcast_to(ops.cast(mask, logits.dtype), ops.shape(logits))
    valid = mask > 0
    neg = very_negative(logits.dtype)
    reference = ops.max(ops.where(valid, logits, neg), axis=-1, keepdims=True)
    reference = ops.stop_gradient(reference)
    shifted = ops.where(valid, logits - reference, ops.zeros_like(logits))
    exps = ops.exp(shifted) * mask
    total = ops.sum(exps, axis=-1, keepdims=True)
    return exps / positive_or_one(total)


def take_axis(x, axis, start, stop):
    """``x[..., start:stop, ...]`` along ``axis`` (static Python bounds)."""
    index = [slice(None)] * len(x.shape)
    index[axis] = slice(start, stop)
    return x[tuple(index)]


def pad_axis(x, axis, before, after, value=0.0):
    paddings = [[0, 0] for _ in x.shape]
    paddings[axis] = [before, after]
    return ops.pad(x, paddings, constant_values=value)


def chunked(x, axis, pad, n_chunks, chunk):
    """Pads ``axis`` of ``x`` by ``pad`` at the end and splits it into ``[n_chunks, chunk]``."""
    if not (isinstance(pad, int) and pad == 0):
        x = pad_axis(x, axis, 0, pad)
    shape = dims(x)
    return ops.reshape(x, shape[:axis] + [n_chunks, chunk] + shape[axis + 1:])


def chunk_layout(length, chunk):
    """``(chunk, pad, n_chunks, chunked)`` of :func:`chunk_sizes`, with ``chunked(x, axis)``
    padding ``axis`` of ``x`` and splitting it into ``[n_chunks, chunk]``."""
    chunk, pad, n_chunks = chunk_sizes(length, chunk)
    return chunk, pad, n_chunks, lambda x, axis: chunked(x, axis, pad, n_chunks, chunk)


def chunk_sizes(length, chunk):
    """``(chunk, pad, n_chunks)`` for a length (int or scalar tensor) and a chunk size."""
    chunk = int(chunk)
    if isinstance(length, int) and length <= chunk:
        chunk = max(length, 1)
    pad = (-length) % chunk
    n_chunks = (length + pad) // chunk
    return chunk, pad, n_chunks


def fresh(initializer):
    """A new instance of ``initializer`` for each weight (stateless initializers called
    twice would give equal values)."""
    if initializer is None:
        return None
    return initializer.__class__.from_config(initializer.get_config())


def serialize(obj):
    return None if obj is None else keras.saving.serialize_keras_object(obj)


def same_shape(shape, other):
    """Whether two shapes can be the same: equal ranks, equal sizes where both are known."""
    shape, other = tuple(shape), tuple(other)
    return len(shape) == len(other) and all(
        a is None or b is None or a == b for a, b in zip(shape, other))


def check_rank3(name, shape):
    shape = tuple(shape)
    if len(shape) != 3 or shape[-1] is None:
        raise ValueError(
            f"{name} expects inputs shaped [batch, length, dim] with a known dim, got "
            f"shape {shape}."
        )
    return int(shape[-1])
