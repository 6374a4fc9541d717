"""Keras 3 CounterDropout on one backend: Keras' Dropout, with on the TensorFlow backend
its keep mask from the counter hash (the NumPy oracle of tests/oracles.py).

Run by tests/keras3/test_backends.py in a process of its own per backend."""

import keras
import numpy as np
import pytest

from tests.keras3._harness import BACKEND
from tests.oracles import counter_keep_mask, counter_mixed_key
from tfrs_linear.keras3 import LinearDispatcherAttention, LinRecAttention, SequenceEncoder
from tfrs_linear.keras3.dropout import CounterDropout


def _kept(y, x, rate):
    """The keep mask a dropout applied, checking that kept elements were scaled."""
    y, x = np.asarray(y), np.asarray(x)
    kept = y != 0
    np.testing.assert_allclose(y[kept], x[kept] / (1.0 - rate), rtol=1e-6)
    return kept


def test_keeps_each_element_at_its_rate_and_changes_nothing_outside_training():
    rate, shape = 0.3, (64, 50, 32)
    x = np.random.default_rng(0).uniform(1.0, 2.0, size=shape).astype("float32")
    layer = CounterDropout(rate, seed=7)
    first = _kept(layer(x, training=True), x, rate)
    second = _kept(layer(x, training=True), x, rate)
    sd = np.sqrt(rate * (1 - rate) / first.size)
    assert abs(first.mean() - (1 - rate)) < 5 * sd
    assert abs(second.mean() - (1 - rate)) < 5 * sd
    same = (1 - rate) ** 2 + rate**2  # two independent calls agree this often
    assert abs((first == second).mean() - same) < 5 * np.sqrt(same * (1 - same) / first.size)
    np.testing.assert_array_equal(np.asarray(layer(x, training=False)), x)
    np.testing.assert_array_equal(np.asarray(CounterDropout(0.0)(x, training=True)), x)


@pytest.mark.parametrize("compiled", [False, True])
def test_mask_is_the_counter_hash_on_tensorflow_and_keras_own_elsewhere(compiled):
    rate, shape = 0.25, (5, 7, 9)
    x = np.random.default_rng(1).uniform(1.0, 2.0, size=shape).astype("float32")
    if BACKEND != "tensorflow":
        # Keras' own dropout, bit for bit: the same seed gives the same masks.
        ours, keras_own = CounterDropout(rate, seed=3), keras.layers.Dropout(rate, seed=3)
        for _ in range(2):
            np.testing.assert_array_equal(np.asarray(ours(x, training=True)),
                                          np.asarray(keras_own(x, training=True)))
        return
    import tensorflow as tf

    layer = CounterDropout(rate, seed=3)
    call = lambda t: layer(t, training=True)  # noqa: E731
    if compiled:
        call = tf.function(call, jit_compile=True)
    for _ in range(2):  # the second call's seed has moved on
        seed = np.asarray(layer.seed_generator.state.value)  # what next() hands out
        kept = _kept(call(tf.constant(x)), x, rate)
        key = counter_mixed_key(seed)
        want = counter_keep_mask(int(np.prod(shape)), key, rate).reshape(shape)
        np.testing.assert_array_equal(kept, want)


def test_consecutive_seeds_give_independent_masks():
    """Keras' SeedGenerator moves its seed by 1 per call: the masks of consecutive calls
    must agree as often as independent ones (without mixed_key they agreed on 40%
    instead of 58% at rate 0.3)."""
    rate, x = 0.3, np.ones((64, 50, 32), "float32")
    layer = CounterDropout(rate, seed=11)
    masks = [_kept(layer(x, training=True), x, rate) for _ in range(4)]
    same = (1 - rate) ** 2 + rate**2
    for a, b in zip(masks, masks[1:]):
        assert abs((a == b).mean() - same) < 5 * np.sqrt(same * (1 - same) / a.size)


def test_the_layers_use_it():
    x = np.zeros((2, 5, 8), "float32")
    linrec = LinRecAttention(2, 4, dropout=0.1)
    linrec(x, x)
    assert isinstance(linrec._dropout_layer, CounterDropout)
    elastic = LinearDispatcherAttention(2, 4, num_interests=3, dropout=0.1)
    elastic(x)
    assert isinstance(elastic.dropout_layer, CounterDropout)
    encoder = SequenceEncoder(vocab_size=10, max_len=5, d_model=8, num_heads=2, num_layers=1,
                              ffn_dim=16, attention="linrec")
    encoder(np.ones((2, 5), "int32"))
    # Every dropout that drops anything is a CounterDropout (the parent attention's own,
    # replaced in its build hook, stays tracked with rate 0 and no seed variable).
    dropouts = [layer for layer in encoder._flatten_layers()
                if isinstance(layer, keras.layers.Dropout) and layer.rate > 0]
    assert len(dropouts) == 4 and all(isinstance(lay, CounterDropout) for lay in dropouts)
