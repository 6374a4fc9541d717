"""LazyAdam against a numpy oracle: Adam's formulas on the touched rows only."""

import numpy as np
import pytest
import tensorflow as tf

from tfrs_linear.training import LazyAdam
from tfrs_linear.training.model_scope import make_optimizer

B1, B2, EPS, LR = 0.9, 0.999, 1e-7, 0.01


def _adam_rows(var, m, v, rows, grads, step):
    """Adam (Kingma & Ba, with tf-keras' epsilon placement) on ``rows`` only, float64."""
    alpha = LR * np.sqrt(1 - B2 ** step) / (1 - B1 ** step)
    m[rows] = B1 * m[rows] + (1 - B1) * grads
    v[rows] = B2 * v[rows] + (1 - B2) * grads ** 2
    var[rows] -= alpha * m[rows] / (np.sqrt(v[rows]) + EPS)


def test_sparse_gradients_update_only_the_touched_rows_and_their_moments():
    rng = np.random.default_rng(0)
    start = rng.normal(size=(10, 3))
    variable = tf.Variable(start, dtype=tf.float32)
    optimizer = LazyAdam(LR)
    want, m, v = start.copy(), np.zeros((10, 3)), np.zeros((10, 3))
    for step, indices in enumerate([[1, 4, 4, 7], [4, 2], [9, 1, 1, 1]], start=1):
        values = rng.normal(size=(len(indices), 3))
        optimizer.apply_gradients([(tf.IndexedSlices(tf.constant(values, tf.float32),
                                                     tf.constant(indices)), variable)])
        rows = np.unique(indices)
        summed = np.stack([values[np.array(indices) == r].sum(0) for r in rows])
        _adam_rows(want, m, v, rows, summed, step)
        np.testing.assert_allclose(variable.numpy(), want, rtol=1e-5, atol=1e-6)
    untouched = [0, 3, 5, 6, 8]
    np.testing.assert_array_equal(variable.numpy()[untouched], start[untouched].astype(np.float32))
    assert len(optimizer.variables) == 3  # iterations, m, v: Adam's, so checkpoints are Adam's
    np.testing.assert_allclose(optimizer.variables[1].numpy(), m, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(optimizer.variables[2].numpy(), v, rtol=1e-4, atol=1e-9)


def test_dense_gradients_are_adams():
    rng = np.random.default_rng(1)
    start = rng.normal(size=(4, 3)).astype(np.float32)
    lazy, plain = tf.Variable(start), tf.Variable(start)
    lazy_opt, plain_opt = LazyAdam(LR), tf.keras.optimizers.Adam(LR)
    for _ in range(3):
        g = tf.constant(rng.normal(size=(4, 3)), tf.float32)
        lazy_opt.apply_gradients([(g, lazy)])
        plain_opt.apply_gradients([(g, plain)])
    np.testing.assert_array_equal(lazy.numpy(), plain.numpy())


def test_make_optimizer_and_refusals():
    assert type(make_optimizer(1e-3, "float32", "lazy_adam")) is LazyAdam
    wrapped = make_optimizer(1e-3, "mixed_float16", "lazy_adam")
    assert isinstance(wrapped, tf.keras.mixed_precision.LossScaleOptimizer)
    assert isinstance(wrapped.inner_optimizer, LazyAdam)
    with pytest.raises(ValueError, match="optimizer must be one of"):
        make_optimizer(1e-3, "float32", "sgd")
    with pytest.raises(ValueError, match="amsgrad"):
        LazyAdam(amsgrad=True)
