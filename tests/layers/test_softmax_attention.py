"""SoftmaxAttention: Keras' MultiHeadAttention with a CounterDropout on the probabilities."""

import numpy as np
import pytest
import tensorflow as tf

from tfrs_linear.layers import CounterDropout, SoftmaxAttention, TransformerBlock

N, HEADS = 8, 2


def _reference(x, wq, wk, mask):
    """Float64 NumPy softmax probabilities ``[B, H, N, N]`` (no biases), causal + padding."""
    q = np.einsum("bnm,mhd->bhnd", x, wq)
    k = np.einsum("bnm,mhd->bhnd", x, wk)
    logits = np.einsum("bhtd,bhsd->bhts", q, k) / np.sqrt(wq.shape[-1])
    allowed = np.tril(np.ones([N, N], bool))[None, None] & mask[:, None, None, :]
    logits = np.where(allowed, logits, -1e300)
    probs = np.exp(logits - logits.max(-1, keepdims=True)) * allowed
    return probs / np.maximum(probs.sum(-1, keepdims=True), 1e-300)


def _probe_layer(rate, seed=0):
    """A layer whose output is its heads' (dropped) probabilities: the inputs are one-hot
    positions, the values copy them and the output projection lays the heads side by side.
    """
    layer = SoftmaxAttention(num_heads=HEADS, key_dim=N, dropout=rate, use_bias=False,
                             output_shape=HEADS * N)
    x = np.tile(np.eye(N, dtype=np.float32)[None], [64, 1, 1])
    layer(x, x)
    rng = np.random.default_rng(seed)
    wq, wk = (rng.normal(size=[N, HEADS, N]).astype(np.float32) for _ in range(2))
    wv = np.tile(np.eye(N, dtype=np.float32)[:, None, :], [1, HEADS, 1])
    wo = np.zeros([HEADS, N, HEADS * N], np.float32)
    for h in range(HEADS):
        wo[h, :, h * N:(h + 1) * N] = np.eye(N)
    layer.set_weights([wq, wk, wv, wo])
    return layer, x, wq.astype(np.float64), wk.astype(np.float64)


def _probabilities(layer, x, mask, training):
    out = layer(x, x, attention_mask=mask[:, None, :], use_causal_mask=True,
                training=training).numpy()
    return out.reshape(64, N, HEADS, N).transpose(0, 2, 1, 3)  # [B, H, t, s]


def test_inference_equals_a_float64_reference_and_keras():
    layer, x, wq, wk = _probe_layer(0.4)
    mask = np.ones([64, N], bool)
    mask[:, :3] = False  # left padding
    got = _probabilities(layer, x, mask, training=False)
    expected = _reference(x.astype(np.float64), wq, wk, mask)
    real = mask[:, None, :, None]  # padded queries attend nothing real
    np.testing.assert_allclose(np.where(real, got, 0), np.where(real, expected, 0),
                               atol=1e-6)
    stock = tf.keras.layers.MultiHeadAttention(
        num_heads=HEADS, key_dim=N, dropout=0.4, use_bias=False, output_shape=HEADS * N)
    stock(x, x)
    stock.set_weights(layer.get_weights())
    np.testing.assert_allclose(_probabilities(stock, x, mask, False), got, atol=1e-7)


@pytest.mark.parametrize("compiled", [False, True])
def test_training_drops_probabilities_with_counter_dropout(compiled):
    rate = 0.5
    layer, x, wq, wk = _probe_layer(rate)
    assert isinstance(layer._dropout_layer, CounterDropout)
    assert layer._dropout_layer.rate == rate
    mask = np.ones([64, N], bool)
    expected = _reference(x.astype(np.float64), wq, wk, mask)
    call = tf.function(lambda: layer(x, x, use_causal_mask=True, training=True),
                       jit_compile=compiled)
    out = call().numpy().reshape(64, N, HEADS, N).transpose(0, 2, 1, 3)
    positive = expected > 0
    dropped = positive & (out == 0)
    # Every probability is either dropped or kept and scaled by exactly 1 / (1 - rate).
    kept = positive & ~dropped
    np.testing.assert_allclose(out[kept], expected[kept] / (1 - rate), rtol=1e-4)
    assert np.all(out[~positive] == 0)
    n = positive.sum()
    assert abs(dropped.sum() / n - rate) < 5 * np.sqrt(rate * (1 - rate) / n)
    # A second call draws a fresh mask.
    again = call().numpy().reshape(64, N, HEADS, N).transpose(0, 2, 1, 3)
    assert np.any((again == 0) != (out == 0))


def test_checkpoint_of_a_stock_multi_head_attention_restores_into_it(tmp_path):
    x = tf.random.normal([3, 5, 16])
    stock = tf.keras.layers.MultiHeadAttention(num_heads=2, key_dim=8, dropout=0.1,
                                               name="attention")
    stock(x, x)
    path = tf.train.Checkpoint(layer=stock).write(str(tmp_path / "ckpt"))
    ours = SoftmaxAttention(num_heads=2, key_dim=8, dropout=0.1, name="attention")
    ours(x, x)
    tf.train.Checkpoint(layer=ours).read(path).assert_consumed()
    np.testing.assert_array_equal(ours(x, x).numpy(), stock(x, x).numpy())
    assert [w.name for w in ours.weights] == [w.name for w in stock.weights]
    assert ours.weights[0].name == "attention/query/kernel:0"


def test_softmax_block_uses_it_and_keeps_its_weight_names():
    block = TransformerBlock(num_heads=2, attention="softmax", dropout=0.2, name="block")
    block(tf.zeros([2, 6, 16]))
    assert type(block.attention_layer) is SoftmaxAttention
    names = [w.name for w in block.attention_layer.weights]
    assert names[0] == "block/attention/query/kernel:0"
    assert isinstance(block.attention_layer._dropout_layer, CounterDropout)
    assert block.attention_layer._dropout_layer.rate == pytest.approx(0.2)


def test_serialization_round_trip():
    layer = SoftmaxAttention(num_heads=2, key_dim=4, dropout=0.3)
    config = tf.keras.layers.serialize(layer)
    assert tf.keras.utils.get_registered_name(SoftmaxAttention) == "tfrs_linear>SoftmaxAttention"
    again = tf.keras.layers.deserialize(config)
    assert type(again) is SoftmaxAttention and again.get_config() == layer.get_config()
