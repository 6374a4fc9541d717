"""`tfrs-linear train --strategy multiworker`: two worker processes on loopback ports
against a single-process run of the same global batches, and the TF_CONFIG checks."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tfrs_linear import data
from tfrs_linear.cli import main
from tfrs_linear.training.strategy import loopback_tf_configs, parse_tf_config
from tests.data.test_preprocessed import sequence_data, write_preprocessed

# The machine running the suite may be heavily loaded: generous, never asserted.
PROCESS_TIMEOUT = 900

# Regime "last" (one real target per example, none padding) with an even global batch:
# each worker's half-batch loss is the mean over 8 targets, so the mean of the two halves
# is the global batch's loss. The summed (not averaged) gradients of the two replicas
# differ from one process's by a factor 2 that Adam's update is invariant to except
# through epsilon (1e-7), plus float32 summation order: well under TOLERANCE.
FLAGS = ["--attention", "linrec", "--regime", "last", "--loss", "full", "--max-len", "8",
         "--d-model", "16", "--num-layers", "1", "--num-heads", "2", "--ffn-dim", "32",
         "--dropout", "0", "--attention-dropout", "0", "--batch-size", "16",
         "--steps-per-epoch", "3", "--epochs", "1", "--eval-batch-size", "32", "--no-xla"]
TOLERANCE = 1e-5  # relative, on epoch 1's mean loss over its 3 steps (seen: 3e-7)
RUN_FILES = {"config.json", "vocab.txt", "data.json", "checkpoints", "weights", "logs",
             "metrics.json"}


@pytest.fixture
def csv_file(tmp_path):
    rng = np.random.default_rng(3)
    lines = ["user_id,item_id,timestamp"]
    for u in range(24):
        for t in range(int(rng.integers(6, 12))):
            lines.append(f"u{u},i{int(rng.integers(0, 30))},{t}")
    path = tmp_path / "events.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def _train(args, env):
    return subprocess.Popen([sys.executable, "-m", "tfrs_linear", "train", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _wait(proc):
    try:
        out, err = proc.communicate(timeout=PROCESS_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    return proc.returncode, out, err


def _run_workers(args, output, tmp_path, tag, meanwhile=None):
    """Runs ``tfrs-linear train ARGS --strategy multiworker --output OUTPUT`` as two
    workers on free loopback ports; returns their (code, stdout, stderr). Worker i's
    temporary directories go to ``tmp_path / f"{tag}{i}"``. ``meanwhile()`` (must
    return 0) runs in this process while the workers run."""
    base = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    configs = loopback_tf_configs(2)
    procs = []
    for index in range(2):
        scratch = tmp_path / f"{tag}{index}"
        scratch.mkdir()
        env = dict(base, TMPDIR=str(scratch), TF_CONFIG=configs[index])
        procs.append(_train([*args, "--strategy", "multiworker", "--output", str(output)], env))
    try:
        if meanwhile is not None:
            assert meanwhile() == 0
    finally:
        results = [_wait(p) for p in procs]
    for code, out, err in results:
        assert code == 0, out[-2000:] + err[-4000:]
    assert not list((tmp_path / f"{tag}1").iterdir())  # worker 1 removed its scratch
    return results


def _epoch_loss(output):
    state = json.loads((output / "checkpoints" / "state.json").read_text())
    return state["history"][0]["loss"], state["history"][0]["valid"]


def test_two_workers_match_one_process(csv_file, tmp_path, monkeypatch):
    output = tmp_path / "multi"
    monkeypatch.delenv("TF_CONFIG", raising=False)
    # The single-process run here, while the workers run (_run_workers waits for them).
    single = ["train", "--data", str(csv_file), *FLAGS, "--output", str(tmp_path / "single")]
    results = _run_workers(["--data", str(csv_file), *FLAGS], output, tmp_path, "tmp",
                           meanwhile=lambda: main(single))

    # Only the chief wrote the run directory.
    assert {p.name for p in output.iterdir()} == RUN_FILES
    assert not [p for p in output.rglob("*") if "workertemp" in p.name or "worker1" in p.name]
    assert all("epoch 1:" in out for _, out, _ in results)
    assert json.loads((output / "metrics.json").read_text())["epochs_run"] == 1

    loss, valid = _epoch_loss(output)
    single_loss, single_valid = _epoch_loss(tmp_path / "single")
    print(f"epoch-1 loss: 2 workers {loss!r}, 1 process {single_loss!r}")
    assert abs(loss - single_loss) <= TOLERANCE * single_loss, (loss, single_loss)
    # Validation is sharded by data; its metrics are those of every user.
    for key in ("hr@10", "ndcg@10", "mrr@10"):
        assert valid[key] == pytest.approx(single_valid[key], abs=1e-6), (valid, single_valid)


def test_shard_splits_the_files_between_workers(tmp_path):
    seq = sequence_data()
    write_preprocessed(tmp_path / "pre", seq, num_shards=3)
    whole = data.load_dataset(str(tmp_path / "pre"), stream=True)
    parts = [whole.shard(2, i) for i in range(2)]
    assert [len(p.shards) for p in parts] == [2, 1]
    assert sorted(parts[0].shards + parts[1].shards) == sorted(whole.shards)
    # Users dealt round-robin to 3 shards: shards 0 and 2 go to worker 0, shard 1 to 1.
    expected = [[u for u in range(seq.num_users) if u % 3 != 1],
                [u for u in range(seq.num_users) if u % 3 == 1]]
    for part, users in zip(parts, expected):
        assert part.num_users == len(users)
        assert part.num_interactions == sum(len(seq.sequences[u]) for u in users)
        assert part.vocab == whole.vocab
    with pytest.raises(ValueError, match="cannot give shard 0 of 4 from 3"):
        whole.shard(4, 0)


def test_file_sharded_workers_train_and_resume(tmp_path):
    """A preprocessed directory with 2 shards: each worker reads its own; run 1 epoch,
    then start both again for 2 epochs: both resume after epoch 1."""
    write_preprocessed(tmp_path / "pre", sequence_data(), num_shards=2)
    args = ["--data", str(tmp_path / "pre"), *FLAGS]
    output = tmp_path / "multi"
    _run_workers(args, output, tmp_path, "first")
    state = json.loads((output / "checkpoints" / "state.json").read_text())
    assert state["epoch"] == 1 and np.isfinite(state["history"][0]["loss"])
    again = _run_workers([*args, "--epochs", "2"], output, tmp_path, "again")
    assert all("resuming" in out and "epoch 2:" in out and "epoch 1:" not in out
               for _, out, _ in again)
    assert {p.name for p in output.iterdir()} == RUN_FILES
    state = json.loads((output / "checkpoints" / "state.json").read_text())
    assert [h["epoch"] for h in state["history"]] == [1, 2]
    assert json.loads((output / "metrics.json").read_text())["epochs_run"] == 2


@pytest.mark.parametrize("tf_config, message", [
    (None, "needs the TF_CONFIG"),
    ("{not json", "not valid JSON"),
    ('{"cluster": {"worker": ["a:1"], "ps": ["b:2"]}, "task": {"type": "worker", "index": 0}}',
     "worker tasks only"),
    ('{"cluster": {"chief": ["a:1"]}, "task": {"type": "chief", "index": 0}}',
     "worker tasks only"),
    ('{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 2}}',
     r"index must be in \[0, 1\], got 2"),
    ('{"cluster": {"worker": "a:1"}, "task": {"type": "worker", "index": 0}}',
     "non-empty list"),
])
def test_bad_tf_config_is_refused(tf_config, message):
    with pytest.raises(ValueError, match=message):
        parse_tf_config(tf_config)


def test_cli_refuses_a_missing_tf_config_before_writing(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    out = tmp_path / "run"
    assert main(["train", "--strategy", "multiworker", "--output", str(out)]) == 2
    assert "tfrs-linear train: error: --strategy multiworker needs the TF_CONFIG" in \
        capsys.readouterr().err
    assert not out.exists()


def test_good_tf_config_names_the_workers():
    text = json.dumps({"cluster": {"worker": ["h0:1", "h1:2", "h2:3"]},
                       "task": {"type": "worker", "index": 1}})
    assert parse_tf_config(text) == (["h0:1", "h1:2", "h2:3"], 1)


def test_loopback_tf_configs_name_each_worker_on_distinct_local_ports():
    configs = loopback_tf_configs(3)
    parsed = [parse_tf_config(text) for text in configs]
    workers = parsed[0][0]
    assert [index for _, index in parsed] == [0, 1, 2]
    assert all(w == workers for w, _ in parsed)
    assert len(set(workers)) == 3 and all(w.startswith("127.0.0.1:") for w in workers)
