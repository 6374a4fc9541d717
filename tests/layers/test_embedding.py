"""TableEmbedding: Keras' Embedding gathering from a dense read (rows, gradients, Keras
habits, and the op that reads the variable)."""

import numpy as np
import pytest
import tensorflow as tf

from tfrs_linear.layers import TableEmbedding
from tfrs_linear.layers.embedding import gather_rows


def _pair(**kwargs):
    """A TableEmbedding and a Keras Embedding with the same table (float64 oracle too)."""
    ours = TableEmbedding(7, 3, **kwargs)
    keras = tf.keras.layers.Embedding(7, 3, **kwargs)
    ours.build([None])
    keras.build([None])
    table = np.random.default_rng(0).standard_normal([7, 3]).astype(np.float32)
    ours.embeddings.assign(table)
    keras.embeddings.assign(table)
    return ours, keras, table.astype(np.float64)


def _ops(fn, *args):
    graph = tf.function(fn).get_concrete_function(*args).graph
    return {op.type for op in graph.get_operations()}


@pytest.mark.parametrize("dtype", [tf.int32, tf.int64, tf.float32])
def test_rows_equal_the_table_and_keras(dtype):
    ours, keras, table = _pair()
    ids = tf.constant([[1, 0, 6], [3, 3, 2]], dtype)
    np.testing.assert_array_equal(ours(ids).numpy(), table[[[1, 0, 6], [3, 3, 2]]])
    np.testing.assert_array_equal(ours(ids).numpy(), keras(ids).numpy())


def test_gradient_is_the_scatter_of_the_upstream():
    ours, _, _ = _pair()
    ids = tf.constant([[1, 4, 1]])
    upstream = tf.constant(np.arange(9, dtype=np.float32).reshape([1, 3, 3]))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(ours(ids) * upstream)
    grad = tape.gradient(loss, ours.embeddings)
    assert isinstance(grad, tf.IndexedSlices)  # sparse for the optimizer, as Keras' own
    expected = np.zeros([7, 3])
    for pos, row in enumerate([1, 4, 1]):
        expected[row] += upstream.numpy()[0, pos]
    np.testing.assert_array_equal(tf.convert_to_tensor(grad).numpy(), expected)


def test_no_sparse_variable_read_but_keras_has_one():
    ours, keras, _ = _pair()
    ids = tf.TensorSpec([None, None], tf.int32)
    assert "ResourceGather" in _ops(keras, ids)  # what the layer exists to avoid
    ops = _ops(ours, ids)
    assert "ResourceGather" not in ops and "ReadVariableOp" in ops
    assert "ResourceGather" not in _ops(lambda i: gather_rows(ours.embeddings, i), ids)


def test_mixed_precision_casts_the_output_not_the_table():
    ours, _, table = _pair(dtype="mixed_bfloat16")
    out = ours(tf.constant([2, 5]))
    assert out.dtype == tf.bfloat16 and ours.embeddings.dtype == tf.float32
    np.testing.assert_allclose(out.numpy().astype(np.float64), table[[2, 5]], rtol=1e-2)


def test_mask_zero_config_and_ragged_stay_keras():
    ours, keras, table = _pair(mask_zero=True)
    ids = tf.constant([[0, 2, 3]])
    np.testing.assert_array_equal(ours.compute_mask(ids).numpy(), [[False, True, True]])
    clone = TableEmbedding.from_config(ours.get_config())
    assert type(clone) is TableEmbedding and clone.get_config() == ours.get_config()
    assert tf.keras.utils.get_registered_object("tfrs_linear>TableEmbedding") is TableEmbedding
    ragged = tf.ragged.constant([[1], [2, 3]])
    np.testing.assert_array_equal(ours(ragged).flat_values.numpy(), table[[1, 2, 3]])
