"""Helpers shared by the ELASTIC layers (private module; its names are public so that
:mod:`tfrs_linear.layers.dispatcher` and :mod:`tfrs_linear.layers.interest_memory` can
both use them)."""

import tensorflow as tf


def keras_mask_or(inputs, mask):
    """``mask`` or, when it is None, the Keras mask of ``inputs``; as bool or None.

    Raises a ``ValueError`` naming both shapes unless the mask is ``[batch, length]``.
    """
    if mask is None:
        mask = getattr(inputs, "_keras_mask", None)
    if mask is None:
        return None
    mask = tf.convert_to_tensor(mask)
    if mask.shape.rank is not None and mask.shape.rank != 2:
        raise ValueError(
            f"`mask` must be a [batch, length] padding mask, got shape {mask.shape} "
            f"for inputs of shape {inputs.shape}."
        )
    return tf.cast(mask, tf.bool)


def fresh(initializer):
    """A new instance of ``initializer`` for each weight.

    tf-keras initializers that are called twice return the same values (and warn), so
    each weight gets its own copy, as ``MultiHeadAttention`` does for its sublayers.
    """
    if initializer is None:
        return None
    return initializer.__class__.from_config(initializer.get_config())


def check_inputs(name, inputs):
    """Raises a ``ValueError`` (naming the layer ``name``) unless ``inputs`` is rank 3."""
    if inputs.shape.rank is not None and inputs.shape.rank != 3:
        raise ValueError(
            f"{name} expects inputs shaped [batch, length, dim], got shape {inputs.shape}."
        )


def input_dim(name, input_shape):
    """The width ``dim`` of a ``[batch, length, dim]`` build shape.

    Raises a ``ValueError`` naming the layer ``name`` unless the shape has rank 3 and a
    known last size.
    """
    input_shape = tf.TensorShape(input_shape)
    if input_shape.rank != 3 or input_shape[-1] is None:
        raise ValueError(
            f"{name} expects inputs shaped [batch, length, dim] with a known dim, got "
            f"shape {input_shape}."
        )
    return int(input_shape[-1])
