"""TFRS retrieval models over users' item sequences.

``retrieval``
    :class:`SequentialRetrievalModel`, a ``tfrs.Model``: query tower = a
    :class:`~tfrs_linear.layers.SequenceEncoder`, candidate tower = the item embeddings;
    its losses (full cross-entropy, sampled softmax with log-uniform negatives:
    :func:`log_uniform_probability`, :func:`sample_log_uniform`).
``model_dir``
    The model directory (``config.json``, ``vocab.txt``, ``weights/``):
    :func:`save_model_dir`, :func:`load_model_dir`. A model also round-trips through
    Keras' own ``model.save`` / ``tf.keras.models.load_model`` (a SavedModel directory or
    a ``.keras`` file).

:class:`SequenceEncoder` is a layer (``tfrs_linear.layers.encoder``); it stays
importable from here, as before.
"""

from tfrs_linear.keras2 import require_keras2

require_keras2()  # TensorFlow Recommenders needs tf-keras behind tf.keras: before it is imported.

from tfrs_linear.constants import OOV_INDEX, PAD_INDEX  # noqa: E402
from tfrs_linear.layers.encoder import SequenceEncoder  # noqa: E402
from tfrs_linear.models.model_dir import load_model_dir, save_model_dir  # noqa: E402
from tfrs_linear.models.retrieval import (  # noqa: E402
    SequentialRetrievalModel,
    log_uniform_probability,
    sample_log_uniform,
)

# The reserved indices under the names this module defined before the layout split.
PAD, OOV = PAD_INDEX, OOV_INDEX

__all__ = [
    "SequenceEncoder",
    "SequentialRetrievalModel",
    "load_model_dir",
    "save_model_dir",
    "log_uniform_probability",
    "sample_log_uniform",
]
