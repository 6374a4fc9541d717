"""Helpers shared by the layers (private module; its names are public so that
:mod:`tfrs_linear.layers.dispatcher`, :mod:`tfrs_linear.layers.interest_memory` and
:mod:`tfrs_linear.layers.linrec` can use them)."""

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


def heads_projection(x, kernel, bias=None):
    """``[B, L, dim] -> [B, H, L, width]``: ``einsum("bld,dhe->bhle", x, kernel) + bias``
    (``kernel [dim, H, width]``, ``bias [H, width]`` or None) as one 2-D MatMul.

    The recurrent forms' projections: a served step's single event makes an einsum (or a
    batched MatMul) of this size cost several times a plain MatMul, and hand its work to
    the intra-op pool. With ``L`` statically 1 the heads move first by a reshape."""
    dim, heads, width = kernel.shape
    flat = tf.matmul(tf.reshape(x, [-1, dim]), tf.reshape(kernel, [dim, heads * width]))
    if bias is not None:
        flat = tf.nn.bias_add(flat, tf.reshape(bias, [heads * width]))
    if x.shape[1] == 1:
        return tf.reshape(flat, [-1, heads, 1, width])
    y = tf.reshape(flat, tf.concat([tf.shape(x)[:2], [heads, width]], axis=0))
    return tf.transpose(y, [0, 2, 1, 3])


def heads_output(y, kernel, bias=None):
    """``[B, H, L, width] -> [B, L, dim]``: ``einsum("bhlv,hvd->bld", y, kernel) + bias``
    (``kernel [H, width, dim]``, ``bias [dim]`` or None) as one 2-D MatMul (see
    :func:`heads_projection`)."""
    heads, width, dim = kernel.shape
    one = y.shape[2] == 1
    if not one:
        y = tf.transpose(y, [0, 2, 1, 3])  # [B, L, H, width]
    flat = tf.matmul(tf.reshape(y, [-1, heads * width]), tf.reshape(kernel, [heads * width, dim]))
    if bias is not None:
        flat = tf.nn.bias_add(flat, bias)
    if one:
        return tf.reshape(flat, [-1, 1, dim])
    return tf.reshape(flat, tf.concat([tf.shape(y)[:2], [dim]], axis=0))
