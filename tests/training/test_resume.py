"""Resume is the same run: a run killed (SIGKILL) or stopped cleanly after epoch 1 and
resumed ends with exactly the uninterrupted run's metrics and best epoch (on CPU), with
the full loss and with the sampled loss (whose negatives come from a checkpointed
generator)."""

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tfrs_linear.config import ModelConfig, TrainConfig
from tfrs_linear.training import train
from tfrs_linear.training import trainer as trainer_module
from tests.models.common import TINY_MODEL, TINY_TRAIN, tiny_sequences

REPO = Path(__file__).resolve().parents[2]
# Dropout on (the model's RNG), 3 epochs of 3 batches, patience enough to run them all.
MODEL = dict(TINY_MODEL, dropout=0.2, attention_dropout=0.2)
TRAIN = dict(TINY_TRAIN, epochs=3, patience=5, xla=False)
SCRIPT = textwrap.dedent(f"""
    import sys
    from tfrs_linear.config import ModelConfig, TrainConfig
    from tfrs_linear.training import train
    from tests.models.common import tiny_sequences
    train(ModelConfig(attention="linrec", loss=sys.argv[2], **{MODEL!r}), TrainConfig(**{TRAIN!r}),
          tiny_sequences(), sys.argv[1], verbose=0, steps_per_epoch=3)
""")


def _start(output, loss):
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2",
           "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-c", SCRIPT, str(output), loss], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(process):
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, err[-3000:]
    return out


def _without_seconds(metrics):
    """``metrics`` without the training clock of its history (timings differ by run)."""
    history = [{k: v for k, v in h.items() if k != "seconds"} for h in metrics.get("history", [])]
    return {**metrics, "history": history}


def _outcome(output):
    metrics = json.loads((output / "metrics.json").read_text())
    history = json.loads((output / "checkpoints" / "state.json").read_text())["history"]
    return _without_seconds(metrics), [(h["epoch"], h["loss"], h["valid"]) for h in history]


@pytest.mark.parametrize("loss", ["full", "sampled"])
def test_a_run_killed_after_epoch_1_and_resumed_is_the_uninterrupted_run(tmp_path, loss):
    straight = _start(tmp_path / "straight", loss)
    killed = _start(tmp_path / "killed", loss)
    for line in killed.stdout:
        if line.startswith("epoch 1:"):
            killed.send_signal(signal.SIGKILL)
            break
    killed.communicate(timeout=600)
    assert killed.returncode == -signal.SIGKILL
    assert not (tmp_path / "killed" / "metrics.json").exists()
    done = json.loads((tmp_path / "killed" / "checkpoints" / "state.json").read_text())["epoch"]
    assert 1 <= done < 3
    resumed = _finish(_start(tmp_path / "killed", loss))
    assert f"resuming {tmp_path / 'killed'} after epoch {done}" in resumed
    _finish(straight)
    metrics, history = _outcome(tmp_path / "straight")
    again, again_history = _outcome(tmp_path / "killed")
    assert again == metrics  # valid and test metrics, best epoch: exactly
    assert again_history == history
    # The resumed run's clock continues the killed run's.
    resumed_history = json.loads((tmp_path / "killed" / "metrics.json").read_text())["history"]
    seconds = [h["seconds"] for h in resumed_history]
    assert len(seconds) == 3 and 0 < seconds[0] < seconds[1] < seconds[2]


@pytest.mark.parametrize("loss, buckets", [("full", {}), ("sampled", {}),
                                           ("full", {"bucket_window": 3})])
def test_a_run_stopped_cleanly_and_resumed_is_the_uninterrupted_run(tmp_path, loss, buckets):
    data = tiny_sequences()
    model_config = ModelConfig(attention="linrec", loss=loss, **MODEL)
    train_config = TrainConfig(**TRAIN, **buckets)
    straight = train(model_config, train_config, data, tmp_path / "straight", verbose=0,
                     steps_per_epoch=3)
    train(model_config, train_config.replace(epochs=1), data, tmp_path / "stopped", verbose=0,
          steps_per_epoch=3)
    resumed = train(model_config, train_config, data, tmp_path / "stopped", verbose=0,
                    steps_per_epoch=3)
    assert _without_seconds(resumed) == _without_seconds(straight)
    assert _outcome(tmp_path / "stopped")[1] == _outcome(tmp_path / "straight")[1]
    # Not trivially equal: every epoch changed the model (its loss).
    losses = [loss for _, loss, _ in _outcome(tmp_path / "straight")[1]]
    assert len(set(losses)) == 3


def test_a_sampled_run_checkpointed_without_its_sampler_generator_still_resumes(
        tmp_path, monkeypatch, capsys):
    """A checkpoint written before the sampler's generator was checkpointed (it holds the
    dropout generators only) resumes with the generators it holds."""
    data = tiny_sequences()
    model_config = ModelConfig(attention="linrec", loss="sampled", **MODEL)
    train_config = TrainConfig(**{**TRAIN, "epochs": 1})
    listed = trainer_module.random_generators
    with monkeypatch.context() as patch:  # the checkpoint an older version wrote
        patch.setattr(trainer_module, "random_generators", lambda model: listed(model)[:-1])
        train(model_config, train_config, data, tmp_path / "run", verbose=0, steps_per_epoch=2)
    import tensorflow as tf
    from tfrs_linear.models import SequentialRetrievalModel
    from tfrs_linear.training.model_scope import model_scope
    with model_scope("float32"):
        model = SequentialRetrievalModel(model_config, data.num_items).build_all()
    dropout = len(listed(model)) - 1  # every generator but the sampler's
    keys = tf.train.list_variables(str(tmp_path / "run" / "checkpoints"))
    saved = {name.split("/")[1] for name, _ in keys if name.startswith("rng/")}
    assert dropout >= 1 and saved == {str(i) for i in range(dropout)}
    metrics = train(model_config, train_config.replace(epochs=2), data, tmp_path / "run",
                    verbose=0, steps_per_epoch=2)
    assert "resuming" in capsys.readouterr().out
    assert metrics["epochs_run"] == 2 and [h["epoch"] for h in metrics["history"]] == [1, 2]
