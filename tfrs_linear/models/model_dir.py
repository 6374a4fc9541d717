"""The model directory: what ``tfrs-linear train`` leaves for ``evaluate`` and ``export``.

A model directory holds

* ``config.json``: the flat configuration (:class:`~tfrs_linear.config.ModelConfig` and
  :class:`~tfrs_linear.config.TrainConfig` in one JSON object, keys sorted);
* ``vocab.txt``: the vocabulary (line i = index i; 0 = ``[PAD]``, 1 = ``[OOV]``);
* ``weights/``: a TensorFlow checkpoint of the model (``weights/model``).

The format has not changed since version 0.1.0: directories written by every earlier
version load and give the same scores (``tests/models/``). Keys a saved ``config.json``
predates take the value those models were trained with
(:func:`~tfrs_linear.config.load_saved_config`).
"""

from pathlib import Path

import tensorflow as tf

from tfrs_linear.config import TrainConfig, load_saved_config, save_config
from tfrs_linear.data.vocabulary import load_vocabulary, save_vocabulary
from tfrs_linear.models.retrieval import SequentialRetrievalModel

CONFIG_FILE = "config.json"
VOCAB_FILE = "vocab.txt"
WEIGHTS_DIR = "weights"


def save_model_dir(model: SequentialRetrievalModel, vocab, directory, train_config=None):
    """Writes ``config.json``, ``vocab.txt`` and ``weights/`` (a TF checkpoint).

    Args:
        model: the model; its ``model.config`` is saved.
        vocab: the vocabulary, one entry per row of the model's item embedding.
        directory: the model directory (created if needed).
        train_config: the :class:`~tfrs_linear.config.TrainConfig` saved beside it
            (``exclude_history`` is the default of ``evaluate``); the
            defaults if ``None``.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_config(directory / CONFIG_FILE, model.config, train_config or TrainConfig())
    save_vocabulary(vocab, directory / VOCAB_FILE)
    model.save_weights(str(directory / WEIGHTS_DIR / "model"))


def load_model_dir(directory):
    """``(model, train_config, vocab)`` from a directory written by ``tfrs-linear train``
    or :func:`save_model_dir`.

    The model's own configuration is ``model.config`` (a
    :class:`~tfrs_linear.config.ModelConfig`); ``train_config`` is the
    :class:`~tfrs_linear.config.TrainConfig` of the run that trained it. Raises
    ``FileNotFoundError`` naming the directory and the missing file.
    """
    directory = Path(directory)
    for name in (CONFIG_FILE, VOCAB_FILE):
        if not (directory / name).exists():
            raise FileNotFoundError(
                f"{directory} is not a trained model directory: {name} is missing "
                "(train one with `tfrs-linear train --output DIR`)."
            )
    model_config, train_config = load_saved_config(directory / CONFIG_FILE)
    vocab = load_vocabulary(directory / VOCAB_FILE)
    model = SequentialRetrievalModel(model_config, len(vocab)).build_all()
    if not tf.train.latest_checkpoint(str(directory / WEIGHTS_DIR)):
        raise FileNotFoundError(f"{directory}: no weights under {directory / WEIGHTS_DIR}")
    model.load_weights(str(directory / WEIGHTS_DIR / "model")).expect_partial()
    return model, train_config, vocab


__all__ = ["save_model_dir", "load_model_dir", "CONFIG_FILE", "VOCAB_FILE", "WEIGHTS_DIR"]
