"""The Trainer: XLA training, resuming, the saved best weights, the strategies, and its
epoch hooks."""

import json
import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import tensorflow as tf

from tfrs_linear.config import ModelConfig, TrainConfig
from tfrs_linear.models import load_model_dir
from tfrs_linear.training import Evaluator, Trainer, epoch_data, train
from tests.models.common import TINY_MODEL, TINY_TRAIN, tiny_sequences


@pytest.fixture(scope="module")
def tiny_data():
    return tiny_sequences()


def test_train_xla_resume_and_reload(tiny_data, tmp_path, capsys):
    out = tmp_path / "run"
    model_config = ModelConfig(attention="linrec", **TINY_MODEL)
    train_config = TrainConfig(**{**TINY_TRAIN, "epochs": 1})
    # The command "started" 1000 s ago: its clock counts from there.
    first = train(model_config, train_config, tiny_data, out, verbose=0,
                  started=time.monotonic() - 1000)
    assert set(first["valid"]) == {f"{m}@{k}" for m in ("hr", "ndcg", "mrr") for k in (5, 10, 20)}
    assert first["protocol"] == "full" and first["exclude_history"] is False
    state = json.loads((out / "checkpoints" / "state.json").read_text())
    assert state["epoch"] == 1
    # "Interrupted" after epoch 1: the same command with more epochs resumes at epoch 2.
    second = train(model_config, train_config.replace(epochs=2), tiny_data, out, verbose=0)
    assert "resuming" in capsys.readouterr().out
    state = json.loads((out / "checkpoints" / "state.json").read_text())
    assert [h["epoch"] for h in state["history"]] == [1, 2]
    assert second["epochs_run"] == 2
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test"] == second["test"]
    # The history: the first run's epoch, then the resumed run's, whose clock continues
    # from the first run's (a new process, started now, but past 1000 s).
    assert [h["epoch"] for h in first["history"]] == [1]
    assert first["history"][0]["seconds"] > 1000
    assert metrics["history"] == second["history"]
    assert metrics["history"][:1] == first["history"]
    assert [h["epoch"] for h in metrics["history"]] == [1, 2]
    assert metrics["history"][1]["seconds"] > metrics["history"][0]["seconds"]
    assert [h["valid"] for h in metrics["history"]] == [h["valid"] for h in state["history"]]
    # The saved best weights reproduce the reported metrics.
    model, loaded_train_config, vocab = load_model_dir(out)
    assert vocab == list(tiny_data.vocab) and model.config == model_config.resolved()
    assert loaded_train_config == train_config.replace(epochs=2)
    again = Evaluator(model, loaded_train_config).evaluate(tiny_data, "test")
    assert again["ndcg@10"] == pytest.approx(metrics["test"]["ndcg@10"], abs=1e-6)
    with pytest.raises(ValueError, match="different configuration"):
        train(model_config.replace(d_model=32), train_config, tiny_data, out, verbose=0)


@pytest.mark.parametrize("attention,regime,loss", [("softmax", "last", "sampled"),
                                                   ("elastic", "all", "full")])
def test_other_attentions_regimes_and_losses_train(tiny_data, tmp_path, attention, regime, loss):
    model_config = ModelConfig(attention=attention, regime=regime, loss=loss, **TINY_MODEL)
    train_config = TrainConfig(**{**TINY_TRAIN, "epochs": 1})
    metrics = train(model_config, train_config, tiny_data, tmp_path / "run", verbose=0,
                    steps_per_epoch=3)
    assert 0.0 <= metrics["test"]["ndcg@10"] <= 1.0
    history = json.loads((tmp_path / "run" / "checkpoints" / "state.json").read_text())["history"]
    assert np.isfinite(history[0]["loss"])


def test_length_buckets_keep_the_training_of_a_run_without_them(tiny_data, tmp_path):
    """``bucket_window=1``: the same batches, only cut (tests/data/test_buckets.py), so
    without dropout the same losses and metrics up to float rounding, under XLA. (With
    dropout the hashed masks of a narrower tensor are other draws of the same
    distribution.)"""
    model_config = ModelConfig(attention="linrec", dropout=0.0, attention_dropout=0.0,
                               **{**TINY_MODEL, "max_len": 60})
    runs = {}
    for buckets in (1, 4):
        train_config = TrainConfig(**{**TINY_TRAIN, "epochs": 2, "length_buckets": buckets})
        if buckets > 1:  # some batches are narrower than max_len (else nothing is tested)
            widths = {int(b["inputs"].shape[1]) for b in epoch_data.epochs_dataset(
                tiny_data, model_config, train_config, 0, 4)}
            assert min(widths) < 60 and widths <= {15, 30, 45, 60}
        metrics = train(model_config, train_config, tiny_data, tmp_path / str(buckets),
                        verbose=0)
        runs[buckets] = metrics
    plain, cut = runs[1], runs[4]
    assert [h["valid"] for h in cut["history"]] == [
        pytest.approx(h["valid"], abs=1e-3) for h in plain["history"]]
    assert cut["test"] == pytest.approx(plain["test"], abs=1e-3)
    losses = [json.loads((tmp_path / str(b) / "checkpoints" / "state.json").read_text())
              for b in (1, 4)]
    assert [h["loss"] for h in losses[1]["history"]] == pytest.approx(
        [h["loss"] for h in losses[0]["history"]], rel=1e-5)


class _ValidationLog(tf.keras.callbacks.Callback):
    """Records Keras' validation logs per epoch and the moments fit's validation begins;
    each validation lasts at least ``pause`` seconds more (a slow evaluation)."""

    def __init__(self, pause):
        super().__init__()
        self.pause, self.logs, self.test_begin = pause, [], []

    def on_test_begin(self, logs=None):
        self.test_begin.append(time.monotonic())

    def on_test_end(self, logs=None):
        time.sleep(self.pause)

    def on_epoch_end(self, epoch, logs=None):
        self.logs.append({k[len("val_"):]: v for k, v in logs.items() if k.startswith("val_")})


def test_metrics_history_holds_each_epochs_validation_and_a_clock_without_evaluation(
        tiny_data, tmp_path):
    log = _ValidationLog(pause=1.0)
    metrics = train(ModelConfig(attention="linrec", **TINY_MODEL),
                    TrainConfig(**{**TINY_TRAIN, "epochs": 3, "patience": 5}), tiny_data,
                    tmp_path / "run", verbose=0, steps_per_epoch=2, callbacks=[log])
    history = json.loads((tmp_path / "run" / "metrics.json").read_text())["history"]
    assert history == metrics["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3]
    # Each epoch's validation metrics are those Keras logged for it (fit's own validation).
    assert [h["valid"] for h in history] == log.logs
    assert history[metrics["best_epoch"] - 1]["valid"] == pytest.approx(metrics["valid"], rel=1e-9)
    seconds = [h["seconds"] for h in history]
    assert 0 < seconds[0] < seconds[1] < seconds[2]
    # The clock stops during each validation (here >= 1 s longer): between two epochs'
    # ends it advances by the wall time minus that validation.
    for e in (1, 2):
        wall = log.test_begin[e] - log.test_begin[e - 1]
        assert seconds[e] - seconds[e - 1] < wall - 0.9


def test_mirrored_strategy_on_cpu_falls_back_from_xla(tmp_path):
    """Two logical CPU devices, MirroredStrategy: the train step runs without XLA (tf-keras
    cannot compile merge_call) and training still completes."""
    code = textwrap.dedent(f"""
        import tfrs_linear, tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        from tfrs_linear import data as data_lib
        from tfrs_linear.data import synthetic
        from tfrs_linear.config import ModelConfig, TrainConfig
        from tfrs_linear.training import train
        data = data_lib.build_sequences(synthetic.generate(num_users=30, num_items=20, num_interests=4,
                                        median_length=15, min_length=6, max_length=30, seed=1))
        model_config = ModelConfig(attention="linrec", max_len=8, d_model=8, num_layers=1,
                                   num_heads=2, ffn_dim=16)
        m = train(model_config, TrainConfig(batch_size=8, epochs=1), data, r"{tmp_path / 'run'}",
                  strategy="mirrored", verbose=0)
        print("NDCG", m["test"]["ndcg@10"])
    """)
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "XLA is off for the train step" in result.stdout
    assert "NDCG" in result.stdout


def test_the_configuration_comes_as_two_objects_in_order(tiny_data, tmp_path):
    with pytest.raises(TypeError, match="takes a ModelConfig and a TrainConfig"):
        Trainer(TrainConfig(), ModelConfig(), tiny_data, tmp_path / "run")
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------- hooks
class RecordingTrainer(Trainer):
    """Records every hook call, in order, with what the run directory held then."""

    def on_train_begin(self, state):
        self.calls = [("begin", state["epoch"])]

    def on_epoch_end(self, epoch, logs):
        saved = json.loads((self.output / "checkpoints" / "state.json").read_text()) if epoch > 1 else None
        self.calls.append(("end", epoch, np.isfinite(logs["loss"]), saved and saved["epoch"]))

    def on_epoch_saved(self, epoch, record):
        saved = json.loads((self.output / "checkpoints" / "state.json").read_text())
        self.calls.append(("saved", epoch, record["epoch"], saved["epoch"], "ndcg@10" in record["valid"]))


def test_epoch_hooks_run_around_each_epochs_bookkeeping_and_across_a_resume(tiny_data, tmp_path):
    model_config = ModelConfig(attention="linrec", **TINY_MODEL)
    train_config = TrainConfig(**{**TINY_TRAIN, "epochs": 2})
    first = RecordingTrainer(model_config, train_config, tiny_data, tmp_path / "run", verbose=0,
                             steps_per_epoch=2)
    first.run()
    # on_epoch_end comes before the epoch's state.json (it still says the epoch before),
    # on_epoch_saved after it.
    assert first.calls == [("begin", 0),
                           ("end", 1, True, None), ("saved", 1, 1, 1, True),
                           ("end", 2, True, 1), ("saved", 2, 2, 2, True)]
    resumed = RecordingTrainer(model_config, train_config.replace(epochs=3), tiny_data,
                               tmp_path / "run", verbose=0, steps_per_epoch=2)
    resumed.run()
    assert resumed.calls == [("begin", 2), ("end", 3, True, 2), ("saved", 3, 3, 3, True)]
    done = RecordingTrainer(model_config, train_config.replace(epochs=3), tiny_data,
                            tmp_path / "run", verbose=0, steps_per_epoch=2)
    done.run()
    assert done.calls == [("begin", 3)]  # nothing left to train: no epoch hook


def test_the_trainer_compiles_its_query_tower_once(tiny_data, tmp_path):
    """Every validation and the final scores reuse one compiled encode function."""
    model_config = ModelConfig(attention="linrec", **TINY_MODEL)
    trainer = Trainer(model_config, TrainConfig(**{**TINY_TRAIN, "epochs": 2}), tiny_data,
                      tmp_path / "run", verbose=0, steps_per_epoch=2)
    trainer.run()
    assert trainer.evaluator.encode_fn.experimental_get_tracing_count() == 1
    assert "_tfrs_linear_encode_fns" not in vars(trainer.model)


# ------------------------------------------------------- nothing written before it is valid
@pytest.mark.parametrize("steps", [0, -3, 2.5])
def test_steps_per_epoch_below_one_is_refused_before_anything_is_written(tiny_data, tmp_path, steps):
    with pytest.raises(ValueError, match="steps_per_epoch must be a whole number of batches >= 1"):
        Trainer(ModelConfig(**TINY_MODEL), TrainConfig(**TINY_TRAIN), tiny_data, tmp_path / "run",
                steps_per_epoch=steps)
    assert not (tmp_path / "run").exists()


def test_a_run_that_fails_on_its_data_leaves_nothing_behind(tiny_data, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    with pytest.raises(ValueError, match="fewer than batch_size=100000"):
        train(ModelConfig(**TINY_MODEL), TrainConfig(**{**TINY_TRAIN, "batch_size": 100000}),
              tiny_data, out, verbose=0)
    assert list(out.iterdir()) == []


def test_a_folder_without_a_completed_epoch_is_no_reason_to_refuse(tiny_data, tmp_path):
    from tfrs_linear.data import build_sequences
    from tfrs_linear.data import synthetic
    from tfrs_linear.training import run_dir
    other = build_sequences(synthetic.generate(num_users=20, num_items=12, num_interests=3,
                                               median_length=10, min_length=5, max_length=20, seed=9))
    out = tmp_path / "run"
    out.mkdir()
    # What a run on other data, with another model, wrote before it stopped in epoch 1.
    run_dir.write_metadata(out, ModelConfig(**{**TINY_MODEL, "d_model": 32}), TrainConfig(), other)
    model_config, train_config = ModelConfig(**TINY_MODEL), TrainConfig(**TINY_TRAIN)
    run_dir.check_resumable(out, model_config, train_config, tiny_data.vocab)  # no error
    (out / "checkpoints").mkdir()
    run_dir.write_state(out, run_dir.new_state())  # epoch 0: still nothing completed
    run_dir.check_resumable(out, model_config, train_config, tiny_data.vocab)
    run_dir.write_state(out, {**run_dir.new_state(), "epoch": 1})
    with pytest.raises(ValueError, match="different configuration"):
        run_dir.check_resumable(out, model_config, train_config, tiny_data.vocab)
    run_dir.write_metadata(out, model_config, train_config, other)
    with pytest.raises(ValueError, match="trained on other data"):
        run_dir.check_resumable(out, model_config, train_config, tiny_data.vocab)


# ---------------------------------------------------------------------------- precision
@pytest.mark.parametrize("precision", ["float32", "mixed_float16", "mixed_bfloat16"])
def test_each_precision_trains_with_its_policy_and_restores_the_global_one(
        tiny_data, tmp_path, precision, caplog, capfd):
    import logging

    import tensorflow as tf
    before = tf.keras.mixed_precision.global_policy().name
    rng_before = tf.keras.backend.experimental.is_tf_random_generator_enabled()
    caplog.set_level(logging.WARNING)
    trainer = Trainer(ModelConfig(attention="linrec", **TINY_MODEL),
                      TrainConfig(**{**TINY_TRAIN, "epochs": 1, "xla": False, "precision": precision}),
                      tiny_data, tmp_path / "run", verbose=0, steps_per_epoch=2)
    metrics = trainer.run()
    assert trainer.model.encoder.dtype_policy.name == precision
    is_scaled = isinstance(trainer.model.optimizer, tf.keras.mixed_precision.LossScaleOptimizer)
    assert is_scaled == (precision == "mixed_float16")
    assert all(np.isfinite(v) for split in ("valid", "test") for v in metrics[split].values())
    assert tf.keras.mixed_precision.global_policy().name == before
    assert tf.keras.backend.experimental.is_tf_random_generator_enabled() == rng_before
    logged = caplog.text + capfd.readouterr().err
    assert "get_scaled_loss" not in logged and "loss scal" not in logged.lower()
