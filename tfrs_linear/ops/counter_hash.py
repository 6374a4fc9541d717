"""The counter-based keep mask of the dropout layers (pure TensorFlow).

Why: under XLA on CPU, the random bits of Keras' dropout cost a lot per element (tf-keras'
Philox about 25 ns; Keras 3's ``tf.nn.experimental.stateless_dropout`` about 220 ns on
the TensorFlow backend). The same keep mask from an integer hash of each element's index
is plain vectorised integer arithmetic that XLA fuses with the multiply. Used by
:class:`tfrs_linear.layers.CounterDropout` (tf-keras) and by the Keras 3 layers'
dropout on the TensorFlow backend (:mod:`tfrs_linear.keras3.dropout`).

The hash: ``x = i * 0x9E3779B9 + key_0``, then the ``lowbias32`` integer finaliser
(xor-shift 16, multiply 0x7feb352d, xor-shift 15, xor ``key_1``, multiply 0x846ca68b,
xor-shift 16), all in uint32. Its bits pass as uniform for this purpose (the tests check
the keep rate, independence between neighbouring elements and between calls); it is not
a cryptographic or a statistical-simulation generator. The counter covers fewer than
:data:`MAX_COUNTER` elements.
"""

import math

import tensorflow as tf

_GOLDEN = 0x9E3779B9
_MIX_1 = 0x7FEB352D
_MIX_2 = 0x846CA68B
MAX_COUNTER = 2**32  # elements a mask may have (the uint32 counter)


def counter_fits(dims):
    """Whether a mask of static-or-None ``dims`` surely has fewer than :data:`MAX_COUNTER`
    elements (an unknown dimension, the batch, counted as 4,096: small next to
    ``2**32``). Larger masks take the framework's own dropout."""
    dims = list(dims)
    known = math.prod(int(d) for d in dims if d is not None)
    return known * (4096 if None in dims else 1) < MAX_COUNTER


def mixed_key(seed):
    """Two well-mixed uint32 key words from a seed pair that moves by small steps.

    Keras 3's ``SeedGenerator`` adds 1 to the seed's second word at every call; fed to
    :func:`keep_mask` as they are, two consecutive seeds give masks that agree on about
    40% of the elements instead of the 58% of independent masks at rate 0.3 (the second
    word enters the hash by an xor before one multiply). Each word here goes through the
    whole finaliser: ``a = f(k_1 + f(k_0))``, ``b = f(a + 0x9E3779B9)``.
    """
    seed = _low_words(seed)
    a = _finalise(seed[1] + _finalise(seed[0]))
    return tf.stack([a, _finalise(a + _u32(_GOLDEN))])


def keep_mask(shape, key, rate):
    """The boolean keep mask of the counter-based dropout for ``shape`` and ``key``.

    Args:
      shape: the noise shape (a 1-D int tensor or list).
      key: two integers (an int tensor of shape ``[2]``, any int dtype); only the low
        32 bits of each are used.
      rate: the drop probability, in ``[0, 1)`` (a Python number).

    Returns:
      A ``tf.bool`` tensor of ``shape``: True (keep) with probability ``1 - rate``.
    """
    key = _low_words(key)
    size = tf.reduce_prod(tf.cast(shape, tf.int64))
    counter = tf.cast(tf.range(size, dtype=tf.int64), tf.uint32)
    x = counter * _u32(_GOLDEN) + key[0]
    x = _xorshift(x, 16) * _u32(_MIX_1)
    x = tf.bitwise.bitwise_xor(_xorshift(x, 15), key[1]) * _u32(_MIX_2)
    x = _xorshift(x, 16)
    threshold = _u32(min(int(round(float(rate) * 2**32)), 2**32 - 1))
    return tf.reshape(x >= threshold, shape)


def _finalise(x):
    """``lowbias32``: xor-shift 16, multiply, xor-shift 15, multiply, xor-shift 16 (the
    hash of :func:`keep_mask` without its key)."""
    x = _xorshift(x, 16) * _u32(_MIX_1)
    x = _xorshift(x, 15) * _u32(_MIX_2)
    return _xorshift(x, 16)


def _low_words(key):
    """The low 32 bits of each of ``key``'s integers, as uint32."""
    return tf.cast(tf.bitwise.bitwise_and(tf.cast(key, tf.int64), 0xFFFFFFFF), tf.uint32)


def _u32(value):
    return tf.constant(value, tf.uint32)


def _xorshift(x, bits):
    return tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, _u32(bits)))


__all__ = ["MAX_COUNTER", "counter_fits", "keep_mask", "mixed_key"]
