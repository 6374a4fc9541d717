"""Resume is the same run: a run killed (SIGKILL) or stopped cleanly after epoch 1 and
resumed ends with exactly the uninterrupted run's metrics and best epoch (on CPU)."""

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path


from tfrs_linear.config import ModelConfig, TrainConfig
from tfrs_linear.training import train
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
    train(ModelConfig(attention="linrec", **{MODEL!r}), TrainConfig(**{TRAIN!r}),
          tiny_sequences(), sys.argv[1], verbose=0, steps_per_epoch=3)
""")


def _start(output):
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2",
           "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-c", SCRIPT, str(output)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(process):
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, err[-3000:]
    return out


def _outcome(output):
    metrics = json.loads((output / "metrics.json").read_text())
    history = json.loads((output / "checkpoints" / "state.json").read_text())["history"]
    return metrics, [(h["epoch"], h["loss"], h["valid"]) for h in history]


def test_a_run_killed_after_epoch_1_and_resumed_is_the_uninterrupted_run(tmp_path):
    straight = _start(tmp_path / "straight")
    killed = _start(tmp_path / "killed")
    for line in killed.stdout:
        if line.startswith("epoch 1:"):
            killed.send_signal(signal.SIGKILL)
            break
    killed.communicate(timeout=600)
    assert killed.returncode == -signal.SIGKILL
    assert not (tmp_path / "killed" / "metrics.json").exists()
    done = json.loads((tmp_path / "killed" / "checkpoints" / "state.json").read_text())["epoch"]
    assert 1 <= done < 3
    resumed = _finish(_start(tmp_path / "killed"))
    assert f"resuming {tmp_path / 'killed'} after epoch {done}" in resumed
    _finish(straight)
    metrics, history = _outcome(tmp_path / "straight")
    again, again_history = _outcome(tmp_path / "killed")
    assert again == metrics  # valid and test metrics, best epoch: exactly
    assert again_history == history


def test_a_run_stopped_cleanly_and_resumed_is_the_uninterrupted_run(tmp_path):
    data = tiny_sequences()
    model_config = ModelConfig(attention="linrec", **MODEL)
    train_config = TrainConfig(**TRAIN)
    straight = train(model_config, train_config, data, tmp_path / "straight", verbose=0,
                     steps_per_epoch=3)
    train(model_config, train_config.replace(epochs=1), data, tmp_path / "stopped", verbose=0,
          steps_per_epoch=3)
    resumed = train(model_config, train_config, data, tmp_path / "stopped", verbose=0,
                    steps_per_epoch=3)
    assert resumed == straight
    assert _outcome(tmp_path / "stopped")[1] == _outcome(tmp_path / "straight")[1]
    # Not trivially equal: every epoch changed the model (its loss).
    losses = [loss for _, loss, _ in _outcome(tmp_path / "straight")[1]]
    assert len(set(losses)) == 3
