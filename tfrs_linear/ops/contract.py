"""Two-operand einsums for the recurrent forms' small products.

A served batch-1 ``step`` multiplies tensors of a few thousand elements: one event's
query against a ``[heads, d_k, d_v]`` state, one key's outer product with its value.
TensorFlow's CPU ``Einsum`` and batched ``MatMul`` kernels cost 5-50 µs each at these
sizes (oneDNN primitive set-up and transposes), and under the default thread pools each
call also hands its work to the intra-op pool; a broadcast product and a ``Sum`` cost
about 2 µs and run inline. :func:`contract` picks the broadcast form when every size of
the product except the batch is static and the product is small, and ``tf.einsum``
otherwise (a whole history, a dynamic number of events, a training batch).
"""

import functools
import math

import tensorflow as tf

# The largest broadcast product per batch row (elements): 256 KiB of float32.
MAX_BROADCAST_ELEMENTS = 1 << 16


@functools.lru_cache(maxsize=None)
def _broadcast_order(a, b, out):
    """An order of every subscript of ``a`` and ``b`` in which ``a``, ``b`` and ``out``
    each appear in their own order (so that no operand needs a transpose), or None."""
    letters = list(dict.fromkeys(a + b))
    after = {c: set() for c in letters}  # c -> the subscripts that must come after c
    for word in (a, b, out):
        for first, second in zip(word, word[1:]):
            after[first].add(second)
    before = {c: sum(c in after[x] for x in letters) for c in letters}
    order = []
    ready = [c for c in letters if before[c] == 0]
    while ready:
        c = ready.pop(0)
        order.append(c)
        for nxt in sorted(after[c], key=letters.index):
            before[nxt] -= 1
            if before[nxt] == 0:
                ready.append(nxt)
    return "".join(order) if len(order) == len(letters) else None


def _parse(equation, a, b):
    inputs, _, out = equation.replace(" ", "").partition("->")
    sa, _, sb = inputs.partition(",")
    if (not out or not sb or len(sa) != a.shape.rank or len(sb) != b.shape.rank
            or "." in equation or len(set(sa)) != len(sa) or len(set(sb)) != len(sb)):
        return None
    return sa, sb, out


def _static_sizes(sa, sb, a, b, batch):
    """``{subscript: static size}`` (the batch subscript excluded), or None when a size
    other than the batch's is unknown or two operands disagree."""
    sizes = {}
    for word, x in ((sa, a), (sb, b)):
        for c, size in zip(word, x.shape.as_list()):
            if c == batch:
                continue
            if size is None:
                return None
            if sizes.setdefault(c, size) != size:
                return None
    return sizes


def _expanded(x, word, order):
    """``x`` (subscripts ``word``) with a new axis of size 1 at each subscript of
    ``order`` it lacks: one StridedSlice, or ``x`` itself."""
    if word == order:
        return x
    return x[tuple(slice(None) if c in word else tf.newaxis for c in order)]


def contract(equation, a, b):
    """``tf.einsum(equation, a, b)``, as a broadcast product and a sum when it is small.

    The broadcast form is used when no subscript repeats within an operand, every size
    but the output's first (the batch) is static, an order of the subscripts exists in
    which both operands and the output keep their own orders (no transposes), and the
    product holds at most :data:`MAX_BROADCAST_ELEMENTS` per batch row. Otherwise this is
    ``tf.einsum``. Both give the same values up to float rounding (the sums' order).
    """
    parsed = _parse(equation, a, b)
    if parsed is None:
        return tf.einsum(equation, a, b)
    sa, sb, out = parsed
    order = _broadcast_order(sa, sb, out)
    sizes = _static_sizes(sa, sb, a, b, out[0])
    if order is None or sizes is None or set(out) - set(sa + sb):
        return tf.einsum(equation, a, b)
    if math.prod(sizes.values()) > MAX_BROADCAST_ELEMENTS:
        return tf.einsum(equation, a, b)
    product = _expanded(a, sa, order) * _expanded(b, sb, order)
    summed = [i for i, c in enumerate(order) if c not in out]
    return tf.reduce_sum(product, axis=summed) if summed else product


__all__ = ["MAX_BROADCAST_ELEMENTS", "contract"]
