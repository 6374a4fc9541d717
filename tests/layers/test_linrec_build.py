"""LinRecAttention creates all its weights in ``build`` (issue 16): a subclassed model holding
one reloads from a SavedModel with exactly the same outputs, without the "skipping full
serialization" warning, and the weights keep MultiHeadAttention's names, order and shapes."""

import logging

import numpy as np
import pytest
import tensorflow as tf

from tfrs_linear.layers import LinRecAttention


@tf.keras.utils.register_keras_serializable(package="tests_linrec_build")
class _Subclassed(tf.keras.Model):
    def __init__(self, cross=False, **kwargs):
        super().__init__(**kwargs)
        self.cross = cross
        self.attention = LinRecAttention(num_heads=2, key_dim=4, causal=True, chunk_size=3)
        self.head = tf.keras.layers.Dense(3)

    def call(self, x):
        value = x[:, :, :5] if self.cross else x  # cross-attention: another width
        return self.head(self.attention(x, value))

    def get_config(self):
        return {"cross": self.cross}


@pytest.mark.parametrize("cross", [False, True])
def test_subclassed_model_reloads_from_savedmodel_with_the_same_outputs(cross, tmp_path, caplog):
    tf.keras.utils.set_random_seed(4)
    model = _Subclassed(cross=cross)
    x = tf.random.normal([2, 7, 8])
    want = model(x).numpy()
    with caplog.at_level(logging.WARNING):
        model.save(tmp_path / "sm")
    assert not [r for r in caplog.records if "Skipping full serialization" in r.getMessage()]
    again = tf.keras.models.load_model(tmp_path / "sm")
    # Before the fix the projections were re-initialized at the first call: up to 0.76 apart.
    np.testing.assert_array_equal(again(x).numpy(), want)


def test_build_creates_the_weights_of_multi_head_attention():
    layer = LinRecAttention(num_heads=2, key_dim=4, value_dim=3, output_shape=5)
    layer.build(tf.TensorShape([None, 7, 6]))  # the query alone (tf-keras' __call__): wait
    assert not layer.weights
    layer.build([None, 7, 6], [None, 9, 10])
    mha = tf.keras.layers.MultiHeadAttention(num_heads=2, key_dim=4, value_dim=3, output_shape=5)
    mha(tf.zeros([2, 7, 6]), tf.zeros([2, 9, 10]))
    suffix = lambda w: w.name.split("/", 1)[1]  # noqa: E731 (the layer's own name differs)
    assert [(suffix(w), w.shape) for w in layer.weights] == [(suffix(w), w.shape) for w in mha.weights]
    assert [w.name for w in layer.weights][0] == f"{layer.name}/query/kernel:0"
    # The SavedModel loader's form: one list of the three shapes.
    again = LinRecAttention(num_heads=2, key_dim=4, value_dim=3, output_shape=5)
    again.build([[None, 7, 6], [None, 9, 10], [None, 9, 10]])
    assert [w.shape for w in again.weights] == [w.shape for w in layer.weights]
    with pytest.raises(ValueError, match=r"`value` shaped \[batch, length, dim\]"):
        LinRecAttention(num_heads=1, key_dim=2).build([None, 4, 2], [None, 2, 4, 2])
