"""`last_only`: the newest position alone, against the full computation's last position.

The query tower, a regime-"last" loss and the serving signatures need only the newest
position of the encoder's output; `last_only=True` runs the last block for that position
only. This file follows the property from the dispatcher layer and the block up to the
SequenceEncoder (the model's query tower: tests/models/test_retrieval.py). The oracle is
the full layer/block/encoder (itself tested against dense references in the ops and
layers tests), sliced at the last position.
"""

import numpy as np
import pytest
import tensorflow as tf

from tfrs_linear.layers import LinearDispatcherAttention, TransformerBlock
from tfrs_linear.layers.encoder import SequenceEncoder

CASES = [
    ("softmax", False),
    ("softmax", True),
    ("linrec", False),
    ("linrec", True),
    ("elastic", False),
    ("elastic", True),
]


def _left_padded_mask(lengths, n):
    return np.array([[i >= n - length for i in range(n)] for length in lengths])


@pytest.mark.parametrize("attention,causal", CASES)
def test_block_last_only_equals_the_full_blocks_last_position(attention, causal):
    tf.keras.utils.set_random_seed(5)
    n = 11
    x = tf.random.normal([4, n, 8])
    # full, partly padded, one item, empty (all padding)
    mask = tf.constant(_left_padded_mask([11, 6, 1, 0], n))
    block = TransformerBlock(
        num_heads=2, attention=attention, causal=causal, ffn_dim=16, num_interests=3,
        chunk_size=4,
    )
    full = block(x, mask=mask)
    last = block(x, mask=mask, last_only=True)
    assert last.shape == (4, 1, 8)
    np.testing.assert_allclose(last.numpy(), full.numpy()[:, -1:], rtol=1e-5, atol=1e-5)
    assert np.all(last.numpy()[3] == 0.0)  # the empty row stays exactly 0
    # Keras mask of the output: the input mask's last column (the full call keeps [B, N]).
    assert last._keras_mask.shape == (4, 1)
    np.testing.assert_array_equal(last._keras_mask.numpy(), mask.numpy()[:, -1:])
    assert full._keras_mask.shape == (4, n)
    # The rows are independent of each other: a different batch gives the same rows.
    alone = block(x[1:2], mask=mask[1:2], last_only=True)
    np.testing.assert_allclose(alone.numpy(), last.numpy()[1:2], rtol=1e-5, atol=1e-5)


def test_block_last_only_with_handed_interests_non_causal_elastic():
    tf.keras.utils.set_random_seed(6)
    x = tf.random.normal([3, 9, 8])
    mask = tf.constant(_left_padded_mask([9, 4, 2], 9))
    interests = tf.random.normal([3, 3, 8])
    block = TransformerBlock(num_heads=2, attention="elastic", causal=False, ffn_dim=16,
                             num_interests=3)
    full, p_full = block(x, mask=mask, interests=interests, return_interests=True)
    last, p_last = block(x, mask=mask, interests=interests, return_interests=True, last_only=True)
    np.testing.assert_allclose(last.numpy(), full.numpy()[:, -1:], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(p_last.numpy(), p_full.numpy(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("causal", [False, True])
def test_dispatcher_layer_last_only_gradients_match(causal):
    # The layer's own last-only form (not through a block), values and gradients.
    tf.keras.utils.set_random_seed(7)
    x = tf.random.normal([2, 13, 8])
    mask = tf.constant(_left_padded_mask([13, 5], 13))
    layer = LinearDispatcherAttention(num_heads=2, key_dim=4, num_interests=5, causal=causal,
                                      chunk_size=4)
    layer(x, mask=mask)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        full, _ = layer(x, mask=mask)
        last, _ = layer(x, mask=mask, last_only=True)
        loss_full = tf.reduce_sum(tf.sin(full[:, -1:]))
        loss_last = tf.reduce_sum(tf.sin(last))
    np.testing.assert_allclose(last.numpy(), full.numpy()[:, -1:], rtol=1e-5, atol=1e-5)
    for a, b in zip(tape.gradient(loss_last, [x] + layer.trainable_weights),
                    tape.gradient(loss_full, [x] + layer.trainable_weights)):
        np.testing.assert_allclose(tf.convert_to_tensor(a).numpy(), tf.convert_to_tensor(b).numpy(),
                                   rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("attention,causal", CASES + [
    ("elastic-memory", False), ("elastic-recency", False), ("elastic-recency", True)])
def test_encoder_last_only_eager_and_xla(attention, causal):
    tf.keras.utils.set_random_seed(8)
    memory = attention == "elastic-memory"
    encoder = SequenceEncoder(
        vocab_size=20, max_len=10, d_model=8, num_layers=2, num_heads=2, ffn_dim=16,
        attention=attention.split("-")[0], causal=causal, dropout=0.0,
        attention_dropout=0.0, num_interests=3, use_memory=memory, memory_keys=4,
        memory_top_m=2, chunk_size=4, recency_bias=attention == "elastic-recency",
    )
    assert encoder.get_config()["recency_bias"] == (attention == "elastic-recency")
    rng = np.random.default_rng(8)
    ids = rng.integers(2, 20, (4, 10)).astype(np.int32)
    ids[1, :4] = 0
    ids[2, :9] = 0
    ids[3, :] = 0
    full = encoder(ids).numpy()[:, -1]
    last = encoder(ids, last_only=True)
    assert last.shape == (4, 1, 8)
    np.testing.assert_allclose(last.numpy()[:, 0], full, rtol=1e-5, atol=1e-5)
    xla = tf.function(lambda t: encoder(t, last_only=True), jit_compile=True)(tf.constant(ids))
    np.testing.assert_allclose(xla.numpy()[:, 0], full, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("attention", ["softmax", "linrec", "elastic"])
def test_encoder_last_only_under_mixed_precision(float32_policy, attention):
    tf.keras.mixed_precision.set_global_policy("mixed_float16")
    tf.keras.utils.set_random_seed(9)
    encoder = SequenceEncoder(vocab_size=20, max_len=10, d_model=8, num_layers=2, num_heads=2,
                              ffn_dim=16, attention=attention, causal=True, dropout=0.0,
                              attention_dropout=0.0, num_interests=3, chunk_size=4)
    ids = np.random.default_rng(9).integers(2, 20, (3, 10)).astype(np.int32)
    ids[1, :6] = 0
    full = encoder(ids)
    last = encoder(ids, last_only=True)
    assert last.dtype == full.dtype == tf.float16
    np.testing.assert_allclose(last.numpy()[:, 0].astype(np.float32),
                               full.numpy()[:, -1].astype(np.float32), rtol=1e-2, atol=1e-2)
