"""TransformerBlock (:mod:`tfrs_linear.layers.transformer`) with each attention: padding
invariance, configuration, the ELASTIC interest hand-off and the output's Keras mask."""

import numpy as np
import pytest
import tensorflow as tf

from tests.oracles import random_mask
from tfrs_linear.layers import TransformerBlock


@pytest.mark.parametrize("attention", ["softmax", "linrec"])
@pytest.mark.parametrize("causal", [False, True])
def test_transformer_block_padding_invariance(attention, causal):
    block = TransformerBlock(num_heads=2, attention=attention, causal=causal, ffn_dim=16)
    rng = np.random.default_rng(13)
    x = rng.standard_normal((1, 5, 8)).astype(np.float32)
    padded = np.concatenate([rng.standard_normal((1, 3, 8)).astype(np.float32), x], axis=1)
    out = block(x, mask=tf.ones([1, 5], tf.bool)).numpy()
    out_padded = block(padded, mask=tf.constant([[False] * 3 + [True] * 5])).numpy()
    np.testing.assert_allclose(out_padded[:, 3:], out, atol=1e-5)
    assert np.all(out_padded[:, :3] == 0)
    assert TransformerBlock.from_config(block.get_config()).get_config() == block.get_config()


def test_transformer_block_rejects_unknown_attention():
    with pytest.raises(ValueError, match="attention must be one of"):
        TransformerBlock(num_heads=2, attention="performer")


@pytest.mark.parametrize("causal", [False, True])
def test_transformer_block_elastic(causal):
    tf.keras.utils.set_random_seed(19)
    x = tf.random.normal([2, 6, 8])
    mask = tf.constant(random_mask(np.random.default_rng(19), 2, 6))
    block_1 = TransformerBlock(num_heads=2, attention="elastic", causal=causal, num_interests=4)
    block_2 = TransformerBlock(num_heads=2, attention="elastic", causal=causal, num_interests=4)
    y, p = block_1(x, mask=mask, return_interests=True)
    assert y.shape == (2, 6, 8) and p.shape == (2, 4, 8)
    assert np.all(y.numpy()[~mask.numpy()] == 0.0)
    if causal:
        z = block_2(y, mask=mask)
        assert z.shape == (2, 6, 8)
        with pytest.raises(ValueError, match="interests"):
            block_2(y, mask=mask, interests=p)
    else:
        z, p2 = block_2(y, mask=mask, interests=p, return_interests=True)
        z_default = block_2(y, mask=mask)
        assert p2.shape == (2, 4, 8)
        assert not np.allclose(z.numpy(), z_default.numpy())  # the hand-off is used


@pytest.mark.parametrize("attention", ["softmax", "linrec", "elastic"])
def test_keras_mask_of_the_output_in_a_functional_model(attention):
    """The output's Keras mask travels with the output (full calls: the input mask;
    last-only calls: its last column), also through a functional model."""
    ids = tf.keras.Input([6], dtype=tf.int32)
    h = tf.keras.layers.Embedding(20, 8, mask_zero=True)(ids)
    block = TransformerBlock(num_heads=2, attention=attention, causal=True, ffn_dim=16,
                             num_interests=3, chunk_size=4)
    full, last = block(h), block(h, last_only=True)
    assert full._keras_mask.shape.as_list() == [None, 6]
    assert last._keras_mask.shape.as_list() == [None, 1]
    model = tf.keras.Model(ids, [full, last])
    x = np.array([[0, 0, 3, 4, 5, 6], [7, 8, 9, 1, 2, 3]], np.int32)
    full_y, last_y = model(x)
    np.testing.assert_allclose(last_y.numpy(), full_y.numpy()[:, -1:], rtol=1e-5, atol=1e-5)
    assert block.compute_mask(h, tf.ones([2, 6], tf.bool)).shape == (2, 6)
