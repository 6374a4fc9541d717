"""CounterDropout: Keras' Dropout with hashed random bits (distribution, oracle, Keras habits)."""

import numpy as np
import pytest
import tensorflow as tf

from tests.oracles import counter_keep_mask as _numpy_keep_mask
from tfrs_linear.layers import SequenceEncoder
from tfrs_linear.layers.dropout import CounterDropout, keep_mask
from tfrs_linear.training.model_scope import model_scope, random_generators


@pytest.mark.parametrize("key", [(0, 0), (12345, 987654321), (2**40 + 7, -3)])
def test_keep_mask_matches_a_numpy_oracle_eager_and_xla(key):
    shape = [7, 11, 13]
    expected = _numpy_keep_mask(7 * 11 * 13, key, 0.3).reshape(shape)
    eager = keep_mask(shape, tf.constant(key, tf.int64), 0.3).numpy()
    xla = tf.function(lambda k: keep_mask(shape, k, 0.3), jit_compile=True)(
        tf.constant(key, tf.int64)).numpy()
    np.testing.assert_array_equal(eager, expected)
    np.testing.assert_array_equal(xla, expected)


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.9])
def test_keep_rate_and_independence(rate):
    n = 1 << 20
    keep = _numpy_keep_mask(n, (2024, 77), rate)
    p = 1.0 - rate
    sd = np.sqrt(p * (1 - p) / n)
    assert abs(keep.mean() - p) < 5 * sd
    # Neighbours (the counter's consecutive values) are independent: P(both) = p².
    both = (keep[:-1] & keep[1:]).mean()
    assert abs(both - p * p) < 5 * np.sqrt(p * p * (1 - p * p) / n)
    # Two keys (two calls) are independent of each other.
    other = _numpy_keep_mask(n, (2025, 77), rate)
    assert abs((keep & other).mean() - p * p) < 5 * np.sqrt(p * p * (1 - p * p) / n)


def test_layer_scales_kept_values_and_its_gradient():
    layer = CounterDropout(0.25)
    x = tf.random.normal([64, 33])
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, training=True)
        loss = tf.reduce_sum(y * 3.0)
    grad = tape.gradient(loss, x).numpy()
    y, x = y.numpy(), x.numpy()
    kept = y != 0
    np.testing.assert_allclose(y[kept], x[kept] / 0.75, rtol=1e-6)
    np.testing.assert_allclose(grad, np.where(kept, 3.0 / 0.75, 0.0), rtol=1e-6)
    assert 0.6 < kept.mean() < 0.9


def test_inference_rate_zero_and_fresh_masks_per_call():
    x = tf.ones([200, 50])
    assert np.all(CounterDropout(0.5)(x, training=False).numpy() == 1.0)
    assert np.all(CounterDropout(0.0)(x, training=True).numpy() == 1.0)
    layer = CounterDropout(0.5)
    step = tf.function(lambda t: layer(t, training=True), jit_compile=True)
    a, b = step(x).numpy() != 0, step(x).numpy() != 0
    assert 0.4 < (a != b).mean() < 0.6  # 2 p (1 - p) = 0.5 for independent masks


def test_noise_shape_broadcasts():
    layer = CounterDropout(0.5, noise_shape=(None, 1, 6))
    y = layer(tf.ones([4, 5, 6]), training=True).numpy()
    assert np.all(y == y[:, :1, :])  # one mask along the broadcast axis
    assert 0 < (y != 0).mean() < 1


def test_same_seed_same_masks_under_the_tf_random_generator():
    def masks():
        with model_scope("float32"):
            tf.keras.utils.set_random_seed(11)
            layer = CounterDropout(0.5)
            return [layer(tf.ones([300]), training=True).numpy() for _ in range(3)]

    first, second = masks(), masks()
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0], first[1])


def test_keras_serialization_and_checkpointed_generators():
    layer = CounterDropout(0.3, noise_shape=(None, 1), seed=5, name="drop")
    assert tf.keras.utils.get_registered_name(CounterDropout) == "tfrs_linear>CounterDropout"
    config = tf.keras.layers.serialize(layer)
    clone = tf.keras.layers.deserialize(config)
    assert isinstance(clone, CounterDropout)
    assert (clone.rate, tuple(clone.noise_shape), clone.seed) == (0.3, (None, 1), 5)
    # Every dropout of an encoder keeps a generator that the run's checkpoint holds.
    with model_scope("float32"):
        encoder = SequenceEncoder(vocab_size=20, max_len=8, d_model=16, num_layers=2,
                                  num_heads=2, attention="linrec", causal=True, dropout=0.2)
        encoder(tf.ones([2, 8], tf.int32), training=True)
        dropouts = [m for m in encoder.submodules if isinstance(m, CounterDropout)]
        assert len(dropouts) == 1 + 2 * 3  # input; per block: heads, attention, FFN
        assert len(random_generators(encoder)) == len(dropouts)
