"""The learning-rate schedules against the closed form (math.cos, float64), their
refusals, and a run that trains, resumes and ends on the curve."""

import math

import numpy as np
import pytest
import tensorflow as tf

from tfrs_linear.config import ModelConfig, TrainConfig, config_from_dict
from tfrs_linear.training import Trainer, train
from tfrs_linear.training.lr_schedule import learning_rate
from tests.models.common import TINY_MODEL, TINY_TRAIN, tiny_sequences

LR = 3e-3


def _expected(step, schedule, warmup, total, lr=LR):
    """The rate at ``step`` by the formula in lr_schedule's docstring."""
    if step < warmup:
        return lr * step / warmup
    if schedule == "constant":
        return lr
    done = min(step - warmup, total - warmup) / (total - warmup)
    return lr * (1 + math.cos(math.pi * done)) / 2


def test_constant_without_warmup_is_the_plain_float():
    assert learning_rate(TrainConfig(learning_rate=LR), steps_per_epoch=7) == LR


@pytest.mark.parametrize("schedule,warmup", [("cosine", 0), ("cosine", 5), ("constant", 5)])
def test_the_rate_at_every_step_is_the_closed_form(schedule, warmup):
    epochs, steps = 4, 6
    rate = learning_rate(TrainConfig(learning_rate=LR, lr_schedule=schedule,
                                     warmup_steps=warmup, epochs=epochs), steps)
    total = epochs * steps
    for step in range(total + 3):  # past the cap it stays at its end value
        assert float(rate(step)) == pytest.approx(
            _expected(step, schedule, warmup, total), rel=1e-5, abs=1e-9), step
    if schedule == "cosine":
        assert float(rate(total)) == pytest.approx(0.0, abs=1e-9)
        assert float(rate(warmup)) == pytest.approx(LR)


def test_refusals_name_the_field():
    with pytest.raises(ValueError, match="lr_schedule must be one of"):
        config_from_dict({"lr_schedule": "linear"})
    with pytest.raises(ValueError, match="warmup_steps must be >= 0"):
        config_from_dict({"warmup_steps": -1})
    with pytest.raises(ValueError, match=r"warmup_steps \(12\) must be fewer than the run's "
                                         r"train steps \(epochs 2 x 6 steps per epoch = 12\)"):
        learning_rate(TrainConfig(epochs=2, warmup_steps=12), steps_per_epoch=6)


class _RateLog(tf.keras.callbacks.Callback):
    """The optimizer's step counter and current rate after each batch."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def on_train_batch_end(self, batch, logs=None):
        optimizer = self.model.optimizer
        self.seen.append((int(optimizer.iterations.numpy()),
                          float(optimizer.learning_rate.numpy())))


def test_a_cosine_run_follows_the_curve_across_a_resume(tmp_path):
    """Epoch 1, then a resumed run for epoch 2 (the cap is 2 throughout): the rates the
    optimizer used are the closed form's at the global step, the resume included. A resume with another epoch cap is refused (the curve depends on
    it), where a constant schedule allows it."""
    data = tiny_sequences()
    model_config = ModelConfig(attention="linrec", **TINY_MODEL)
    train_config = TrainConfig(**{**TINY_TRAIN, "epochs": 2, "patience": 5,
                                  "learning_rate": LR, "lr_schedule": "cosine",
                                  "warmup_steps": 2})
    steps, out, logs = 3, tmp_path / "run", []
    for epochs_now in (1, 2):
        log = _RateLog()
        trainer = Trainer(model_config, train_config, data, out, verbose=0,
                          steps_per_epoch=steps, callbacks=[log])
        # First process: stop after epoch 1 as a kill would (the hook raises).
        if epochs_now == 1:
            trainer.on_epoch_saved = _stop_after_first_epoch
            with pytest.raises(_Stop):
                trainer.run()
        else:
            trainer.run()
        logs += log.seen
    # After batch i (1-based) iterations is i and the optimizer reports the rate that
    # update used: the curve's at step i - 1 (0 for the first step, in the warm-up).
    assert [i for i, _ in logs] == list(range(1, 2 * steps + 1))
    for i, rate in logs:
        assert rate == pytest.approx(_expected(i - 1, "cosine", 2, 2 * steps),
                                     rel=1e-5, abs=1e-9), i
    assert logs[0][1] == 0.0 and logs[2][1] == pytest.approx(LR)
    with pytest.raises(ValueError, match=r"epochs: 2 -> 3"):
        train(model_config, train_config.replace(epochs=3), data, out, verbose=0,
              steps_per_epoch=steps)


class _Stop(Exception):
    pass


def _stop_after_first_epoch(epoch, record):
    raise _Stop(epoch)
