"""The padding conventions of item-id rows: ``"left"`` (``[0 0 a b c]``, newest last) or
``"right"`` (``[a b c 0 0]``), their checks and the alignment between them.

The encoder computes on left-padded rows; these are its doors for callers (a training or
serving loop that checks its batches before a compiled step) and for its own methods.
"""

import numpy as np
import tensorflow as tf

from tfrs_linear.constants import PAD_INDEX

PADDINGS = ("left", "right")


def find_padding_errors(item_ids, padding="left"):
    """The rows of ``item_ids`` (NumPy-like ``[batch, length]``) not padded as ``padding``
    says: ``"left"`` = every 0 (padding) comes before the first real item, ``"right"`` =
    after the last one. Returns their indices (an empty list when all are right).

    The encoder checks its input with it when it runs eagerly; a training or serving loop
    that compiles the encoder with XLA (where ``tf.debugging.Assert`` is dropped) can call
    it, or :func:`check_padding`, on each batch before the compiled step.
    """
    real = np.asarray(item_ids) != PAD_INDEX
    if real.ndim != 2 or real.shape[1] < 2:
        return []
    if padding == "left":
        wrong = real[:, :-1] & ~real[:, 1:]  # a real item followed by padding
    else:
        wrong = ~real[:, :-1] & real[:, 1:]  # padding followed by a real item
    return [int(i) for i in np.flatnonzero(wrong.any(axis=1))]


def padding_error_message(padding, rows=None):
    """The one-line error for rows padded on the wrong side (:func:`find_padding_errors`;
    ``rows=None``: the graph-mode check, which prints the row indices after it)."""
    which = "(indices below)" if rows is None else list(rows)[:5]
    if padding == "left":
        found, expected, other = "after a real item: they look right-padded", "Left-pad", "right"
    else:
        found, expected, other = "before a real item: they look left-padded", "Right-pad", "left"
    return (
        f"SequenceEncoder(padding={padding!r}): item_ids row(s) {which} have padding "
        f"(0) {found} (or have holes). {expected} every row, newest item last, or build the "
        f"encoder with padding={other!r}."
    )


def check_padding(item_ids, padding="left"):
    """Raises ``ValueError`` (:func:`padding_error_message`) if a row of the NumPy-like
    ``item_ids`` is not ``padding``-padded."""
    if padding not in PADDINGS:
        raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}.")
    rows = find_padding_errors(item_ids, padding)
    if rows:
        raise ValueError(padding_error_message(padding, rows))


def left_aligned(item_ids, real, padding):
    """Right-padded rows turned left-padded (``[a b 0] -> [0 a b]``), lengths kept."""
    if padding == "left":
        return item_ids
    lengths = tf.reduce_sum(tf.cast(real, tf.int32), axis=1)
    return tf.reverse(tf.reverse_sequence(item_ids, lengths, seq_axis=1, batch_axis=0), [1])


def back_to_right(sequence, real, padding):
    """The inverse of :func:`left_aligned` on the outputs ``[B, N, d]``."""
    if padding == "left":
        return sequence
    lengths = tf.reduce_sum(tf.cast(real, tf.int32), axis=1)
    return tf.reverse_sequence(tf.reverse(sequence, [1]), lengths, seq_axis=1, batch_axis=0)


__all__ = [
    "PADDINGS",
    "back_to_right",
    "check_padding",
    "find_padding_errors",
    "left_aligned",
    "padding_error_message",
]
