"""Backend-neutral helpers of the Keras 3 backend tests: forward passes and gradients.

On JAX a layer runs as one ``jax.jit``-compiled ``stateless_call`` (eager JAX compiles
every op separately, which is many times slower for these small layers); on TensorFlow and
PyTorch it runs eagerly (gradients by ``tf.GradientTape`` / ``torch.autograd``). Results
come back as float64-comparable NumPy arrays.
"""

import keras
import numpy as np
from keras import ops

BACKEND = keras.config.backend()
# Tolerances against the float64 oracles. Keras 3 computes LayerNormalization in
# float32 on the non-TensorFlow backends even for float64 layers (its dtype promotion
# maps float64 to float32 there), so checks that pass through one are float32-exact.
TOL = dict(rtol=1e-9, atol=1e-9)
TOL_LN = TOL if BACKEND == "tensorflow" else dict(rtol=2e-6, atol=2e-6)
# Blocks and encoders also pass through GELU, whose float64 erf on TensorFlow is good to
# about 1e-9 (Eigen's), not to the last bit.
TOL_BLOCK = dict(rtol=1e-7, atol=1e-7) if BACKEND == "tensorflow" else TOL_LN


def to_numpy(x):
    return keras.tree.map_structure(
        lambda t: None if t is None else np.asarray(ops.convert_to_numpy(t)), x
    )


def _is_array(v):
    return isinstance(v, np.ndarray) or (hasattr(v, "shape") and hasattr(v, "dtype"))


def _symbolic(v):
    return keras.KerasTensor(tuple(v.shape), dtype=keras.backend.standardize_dtype(v.dtype))


def ensure_built(layer, *args, **kwargs):
    """Builds ``layer`` by a symbolic call (no compilation) if it is not built yet."""
    if layer.built:
        return
    arrays = {k: _symbolic(v) for k, v in kwargs.items() if _is_array(v)}
    static = {k: v for k, v in kwargs.items() if not _is_array(v)}
    layer(*[_symbolic(a) for a in args], **arrays, **static)


def _split(kwargs):
    arrays = {k: v for k, v in kwargs.items() if _is_array(v)}
    static = {k: v for k, v in kwargs.items() if not _is_array(v)}
    return arrays, static


def _state(layer):
    return ([v.value for v in layer.trainable_variables],
            [v.value for v in layer.non_trainable_variables])


class _Outer(keras.layers.Layer):
    """Calls ``inner`` through ``__call__``: ``stateless_call`` runs the outer layer's
    ``call`` directly, which would skip the inner layer's autocasting (mixed precision)."""

    def __init__(self, inner):
        super().__init__(dtype=inner.dtype_policy)
        self.inner = inner

    def call(self, *args, **kwargs):
        return self.inner(*args, **kwargs)


def _jax_apply(layer, static):
    outer = layer if isinstance(layer, keras.Model) else _Outer(layer)
    outer.built = True

    def apply(trainable, non_trainable, args, arrays):
        return outer.stateless_call(trainable, non_trainable, *args, **arrays, **static)[0]

    return apply


def forward(layer, *args, **kwargs):
    """``layer(*args, **kwargs)`` as NumPy (jit-compiled on JAX)."""
    if BACKEND != "jax":
        return to_numpy(layer(*args, **kwargs))
    import jax

    ensure_built(layer, *args, **kwargs)
    arrays, static = _split(kwargs)
    trainable, non_trainable = _state(layer)
    out = jax.jit(_jax_apply(layer, static))(trainable, non_trainable, list(args), arrays)
    return to_numpy(out)


def run(fn, *args):
    """``fn(*args)`` as NumPy; jit-compiled on JAX (variables read inside are constants)."""
    if BACKEND == "jax":
        import jax

        return to_numpy(jax.jit(fn)(*args))
    return to_numpy(fn(*args))


def _first(out):
    return out[0] if isinstance(out, (tuple, list)) else out


def gradients(layer, x, cotangent, *args, **kwargs):
    """``(d/dx, [d/dw])`` of ``sum(first_output * cotangent)`` for ``layer(x, *args)``."""
    cotangent = np.asarray(cotangent)
    if BACKEND == "jax":
        import jax

        ensure_built(layer, x, *args, **kwargs)
        arrays, static = _split(kwargs)
        trainable, non_trainable = _state(layer)
        apply = _jax_apply(layer, static)

        def loss(trainable, x):
            out = _first(apply(trainable, non_trainable, [x, *args], arrays))
            return (out * cotangent).sum()

        g_w, g_x = jax.jit(jax.grad(loss, argnums=(0, 1)))(trainable, x)
        return to_numpy(g_x), to_numpy(g_w)
    if BACKEND == "torch":
        return _torch_gradients(layer, x, cotangent, *args, **kwargs)
    import tensorflow as tf

    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        out = _first(layer(xt, *args, **kwargs))
        loss = tf.reduce_sum(out * tf.cast(cotangent, out.dtype))
    g_x, g_w = tape.gradient(loss, (xt, list(layer.trainable_variables)))
    g_w = [None if g is None else tf.convert_to_tensor(g) for g in g_w]
    return to_numpy(g_x), to_numpy(g_w)


def _torch_gradients(layer, x, cotangent, *args, **kwargs):
    """:func:`gradients` on PyTorch: eager autograd (``None`` for an unused weight)."""
    import torch

    ensure_built(layer, x, *args, **kwargs)
    xt = ops.convert_to_tensor(x)
    xt.requires_grad_(True)
    weights = [v.value for v in layer.trainable_variables]
    out = _first(layer(xt, *args, **kwargs))
    loss = (out * torch.as_tensor(cotangent, dtype=out.dtype, device=out.device)).sum()
    grads = torch.autograd.grad(loss, [xt, *weights], allow_unused=True)
    return to_numpy(grads[0]), to_numpy(list(grads[1:]))
