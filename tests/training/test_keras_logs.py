"""Training speaks Keras: the protocol's validation metrics in fit's logs (History, stock
callbacks, the progress bar, TensorBoard), the epoch's mean loss, the library's line after
Keras' own."""

import json

import numpy as np
import pytest
import tensorflow as tf

from tfrs_linear import evaluation
from tfrs_linear.config import ModelConfig, TrainConfig
from tfrs_linear.data.datasets import evaluation_batches, training_dataset
from tfrs_linear.training import Trainer
from tfrs_linear.training.evaluator import make_encode_fn, uses_offsets
from tfrs_linear.training.epoch_data import epochs_dataset
from tfrs_linear.training.fit_model import METRIC_NAMES, FitRetrievalModel
from tests.models.common import TINY_MODEL, TINY_TRAIN, tiny_sequences


@pytest.fixture(scope="module")
def tiny_data():
    return tiny_sequences()


@pytest.mark.parametrize("exclude_history", [False, True])
def test_stock_callbacks_see_the_protocols_validation_metrics(tiny_data, exclude_history):
    tf.keras.utils.set_random_seed(0)
    model = FitRetrievalModel(ModelConfig(attention="linrec", **TINY_MODEL), tiny_data.num_items,
                              exclude_history=exclude_history).build_all()
    model.compile(optimizer=tf.keras.optimizers.Adam(1e-2))
    history = tf.keras.callbacks.History()
    # An improvement no NDCG can make (min_delta 1): EarlyStopping stops at its first
    # chance (the second epoch) only if it finds val_ndcg@10 in the logs (otherwise it
    # warns and never stops).
    stop = tf.keras.callbacks.EarlyStopping(monitor="val_ndcg@10", mode="max", patience=0,
                                            min_delta=1.0)
    valid = evaluation_batches(tiny_data, "valid", TINY_MODEL["max_len"], 16)
    model.fit(training_dataset(tiny_data, TINY_MODEL["max_len"], 8).take(3), epochs=4,
              validation_data=valid, callbacks=[history, stop], verbose=0)
    assert len(history.history["loss"]) == 2  # stopped by the stock callback
    assert set(history.history) == {"loss"} | {f"val_{name}" for name in METRIC_NAMES}
    # The oracle encodes as the model's own evaluation does (with the rows' offsets under
    # positions from_start, the default of this causal LinRec).
    encode = make_encode_fn(model, xla=False)
    expected = evaluation.evaluate(encode, model.item_embeddings(), valid,
                                   exclude_history=exclude_history,
                                   with_offsets=uses_offsets(model))
    for name in METRIC_NAMES:
        assert history.history[f"val_{name}"][-1] == pytest.approx(expected[name], abs=1e-12), name
    # The same model without exclusion ranks against more items: never a better HR.
    if exclude_history:
        kept = evaluation.evaluate(encode, model.item_embeddings(), valid,
                                   with_offsets=uses_offsets(model))
        assert kept["hr@20"] <= history.history["val_hr@20"][-1] + 1e-12


def _scalars(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(folder))
    acc.Reload()
    out = {}
    for tag in acc.Tags()["tensors"]:
        out[tag] = [(e.step, float(tf.make_ndarray(e.tensor_proto))) for e in acc.Tensors(tag)]
    return out


def test_tensorboard_epoch_axis_mean_loss_and_the_epoch_line_after_keras(tiny_data, tmp_path, capfd):
    """A (practically) frozen model, no dropout: every batch loss of an epoch can be
    recomputed; TensorBoard's loss is their mean, at the validation's step."""
    model_config = ModelConfig(attention="linrec", **{**TINY_MODEL, "dropout": 0.0,
                                                      "attention_dropout": 0.0})
    train_config = TrainConfig(**{**TINY_TRAIN, "epochs": 2, "xla": False, "learning_rate": 1e-12})
    keras_history = tf.keras.callbacks.History()  # a stock callback given to the Trainer
    trainer = Trainer(model_config, train_config, tiny_data, tmp_path / "run", verbose=1,
                      steps_per_epoch=4, callbacks=[keras_history])
    trainer.run()
    out = capfd.readouterr().out.split("\n")
    for epoch in (1, 2):
        at = next(i for i, line in enumerate(out) if line.startswith(f"epoch {epoch}: loss"))
        assert "val_ndcg@10" in out[at - 1]  # Keras' line ends before the library's starts
    train_scalars = _scalars(tmp_path / "run" / "logs" / "train")
    valid_scalars = _scalars(tmp_path / "run" / "logs" / "validation")
    assert [s for s, _ in train_scalars["epoch_loss"]] == [0, 1]
    assert [s for s, _ in valid_scalars["epoch_ndcg@10"]] == [0, 1]
    assert not [tag for tag in valid_scalars if tag.startswith("valid/")]  # one tag family
    records = json.loads((tmp_path / "run" / "checkpoints" / "state.json").read_text())["history"]
    assert [v for _, v in valid_scalars["epoch_ndcg@10"]] == pytest.approx(
        [h["valid"]["ndcg@10"] for h in records], abs=1e-6)
    assert keras_history.history["val_ndcg@10"] == [h["valid"]["ndcg@10"] for h in records]
    batches = list(epochs_dataset(tiny_data, trainer.model_config, train_config, 0, 4).take(4))
    losses = [float(trainer.model.compute_loss(b, training=False)) for b in batches]
    logged = train_scalars["epoch_loss"][0][1]
    assert logged == pytest.approx(np.mean(losses), abs=1e-5)
    assert abs(logged - losses[-1]) > 1e-3  # not the last batch's
