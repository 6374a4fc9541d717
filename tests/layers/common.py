"""Helpers shared by the layer tests: a small LinearDispatcherAttention with non-trivial
weights, its weights as float64 NumPy arrays (for :func:`tests.oracles.lda_reference`),
and a call returning NumPy arrays."""

import numpy as np
import tensorflow as tf

from tfrs_linear.layers import LinearDispatcherAttention

DIM, HEADS, KEY_DIM, K = 6, 2, 3, 3


def make_layer(causal, dtype="float64", seed=0, value_dim=None, chunk_size=4, **kw):
    tf.keras.utils.set_random_seed(seed)
    layer = LinearDispatcherAttention(
        num_heads=HEADS,
        key_dim=KEY_DIM,
        num_interests=K,
        value_dim=value_dim,
        causal=causal,
        chunk_size=chunk_size,
        dtype=dtype,
        bias_initializer="random_normal",
        **kw,
    )
    layer.build([None, None, DIM])
    if not causal:  # non-trivial LayerNorm parameters
        layer.interest_norm.gamma.assign(
            1.0 + 0.3 * tf.random.normal([DIM], dtype=layer.interest_norm.gamma.dtype)
        )
        layer.interest_norm.beta.assign(
            0.3 * tf.random.normal([DIM], dtype=layer.interest_norm.beta.dtype)
        )
    return layer


def weights_of(layer):
    w = {
        name: np.asarray(getattr(layer, name).numpy(), np.float64)
        for name in (
            "interest_tokens",
            "query_1_kernel", "query_1_bias", "key_1_kernel", "key_1_bias",
            "value_1_kernel", "value_1_bias", "output_1_kernel",
            "query_2_kernel", "query_2_bias", "key_2_kernel", "key_2_bias",
            "value_2_kernel", "value_2_bias", "output_2_kernel", "output_2_bias",
        )
    }
    if layer.interest_norm is not None:
        w["gamma"] = layer.interest_norm.gamma.numpy().astype(np.float64)
        w["beta"] = layer.interest_norm.beta.numpy().astype(np.float64)
        w["eps"] = layer.interest_norm.epsilon
    return w


def run(layer, x, mask, interests=None, training=False):
    out, p = layer(
        tf.constant(x, layer.compute_dtype),
        mask=None if mask is None else tf.constant(mask),
        interests=interests,
        training=training,
    )
    return out.numpy(), p.numpy()
