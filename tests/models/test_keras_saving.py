"""SequentialRetrievalModel through Keras' own saving (issue 16): ``model.save(dir)`` (a
SavedModel) and ``model.save("x.keras")``, then ``tf.keras.models.load_model``, give back a
SequentialRetrievalModel with exactly the same scores (before: the SavedModel came back as a
generic revived object, and the ``.keras`` file was written but could not be loaded)."""

import numpy as np
import pytest
import tensorflow as tf

from tfrs_linear.config import ModelConfig
from tfrs_linear.models import SequentialRetrievalModel

IDS = np.array([[0, 0, 0, 2, 3, 4, 5, 6], [0, 0, 0, 0, 0, 0, 7, 8], [9, 10, 11, 2, 3, 4, 5, 6]],
               np.int32)


def _scores(model):
    """Every (user, item) score, float64: the user embeddings against the candidate table."""
    users = model(IDS).numpy().astype(np.float64)
    return users @ model.item_embeddings().numpy().astype(np.float64).T


# Each format with one attention (the SavedModel of causal ELASTIC traces its large
# causal graph several times: a minute of the suite for no more coverage; the serving
# tests export causal ELASTIC as a SavedModel).
@pytest.mark.parametrize("path,attention,tie", [
    ("model.keras", "linrec", True),  # the tied embedding is shared by three attributes
    ("savedmodel", "linrec", True),
    ("model.keras", "elastic", False),
])
def test_keras_save_and_load_model_give_the_same_scores(tmp_path, path, attention, tie):
    tf.keras.utils.set_random_seed(16)
    config = ModelConfig(attention=attention, max_len=8, d_model=8, num_layers=2, num_heads=2,
                         ffn_dim=16, num_interests=3, chunk_size=4, num_negatives=4,
                         tie_embeddings=tie)
    model = SequentialRetrievalModel(config, vocab_size=12).build_all()
    want = _scores(model)
    model.save(tmp_path / path)
    again = tf.keras.models.load_model(tmp_path / path)
    assert type(again) is SequentialRetrievalModel
    assert again.config == model.config and again.vocab_size == 12
    np.testing.assert_array_equal(_scores(again), want)
    # The reloaded model trains on (its loss runs).
    targets = np.concatenate([IDS[:, 1:], [[7], [9], [10]]], axis=1)  # regime "all"
    batch = {"inputs": IDS, "targets": targets}
    assert np.isfinite(again.compute_loss(batch).numpy())
