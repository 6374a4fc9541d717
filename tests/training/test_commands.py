"""`tfrs-linear train` and `tfrs-linear evaluate`: flags over a configuration file, the
files they write, resuming a run saved before the flags changed."""

import argparse
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tfrs_linear.cli import main
from tfrs_linear.cli.quiet import NOISE
from tfrs_linear.cli.train import add_arguments, config_from_args
from tfrs_linear.config import ModelConfig, TrainConfig
from tfrs_linear.data.vocabulary import save_vocabulary
from tfrs_linear.training import commands, run_dir


@pytest.fixture
def csv_file(tmp_path):
    rng = np.random.default_rng(0)
    lines = ["user_id,item_id,timestamp"]
    for u in range(30):
        for t in range(int(rng.integers(5, 25))):
            lines.append(f"u{u},i{int(rng.integers(0, 25))},{t}")
    path = tmp_path / "events.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def _train_args(argv):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv + ["--output", "unused"])


def test_flags_override_the_configuration_file(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"_comment": "a note", "attention": "softmax", "max_len": 50,
                                "epochs": 7, "xla": True}))
    model_config, train_config = config_from_args(
        _train_args(["--config", str(path), "--max-len", "20", "--no-xla", "--exclude-history"]))
    assert model_config == ModelConfig(attention="softmax", max_len=20)
    assert train_config == TrainConfig(epochs=7, xla=False, exclude_history=True)
    assert config_from_args(_train_args([])) == (ModelConfig(), TrainConfig())


@pytest.mark.parametrize("flag, expected", [([], False), (["--keep-duplicates"], True)])
def test_keep_duplicates_reaches_the_loader(flag, expected, tmp_path, monkeypatch, capsys):
    calls = []

    def fake_load(path, format="auto", keep_duplicates=None, stream=False):
        calls.append((path, format, keep_duplicates))
        raise ValueError("stop here")

    monkeypatch.setattr(commands, "load_dataset", fake_load)
    monkeypatch.delenv("TFRS_LINEAR_TRACEBACK", raising=False)
    out = tmp_path / "run"
    assert main(["train", "--data", "f.csv", "--format", "csv", *flag, "--output", str(out)]) == 2
    assert calls == [("f.csv", "csv", expected)] and not out.exists()
    assert capsys.readouterr().err == "tfrs-linear train: error: stop here\n"


@pytest.mark.parametrize("recorded, flag, expected", [
    ({}, [], False), ({"keep_duplicates": True}, [], True), ({}, ["--keep-duplicates"], True)])
def test_evaluate_loads_the_data_as_the_run_did(recorded, flag, expected, tmp_path, monkeypatch,
                                                capsys):
    calls = []

    def fake_load(path, format="auto", keep_duplicates=None, stream=False):
        calls.append((path, keep_duplicates, stream))
        raise ValueError("stop here")

    monkeypatch.setattr(commands, "load_model_dir", lambda model: (None, None, []))
    monkeypatch.setattr(commands, "load_dataset", fake_load)
    monkeypatch.delenv("TFRS_LINEAR_TRACEBACK", raising=False)
    (tmp_path / "data.json").write_text(json.dumps({"source": "f.csv", **recorded}))
    assert main(["evaluate", "--model", str(tmp_path), *flag]) == 2
    # A preprocessed directory is streamed, as `train` streams it (a 50M-event directory
    # held in memory peaked at 5.3 GB); a raw file is read into memory either way.
    assert calls == [("f.csv", expected, True)]
    assert capsys.readouterr().err == "tfrs-linear evaluate: error: stop here\n"


def test_a_run_saved_with_every_key_resumes_with_the_flags_that_apply(tmp_path):
    """config.json as 0.1.0 wrote it (every key, including softmax's unused normalization
    'token' and the full loss's num_negatives): the same command today (those flags are
    refused now, so left out) resumes it."""
    out = tmp_path / "run"
    out.mkdir()
    old = {**ModelConfig(attention="softmax").to_dict(), **TrainConfig().to_dict()}
    old.update(normalization="token", num_negatives=64, recency_bias=False)
    del old["precision"]
    (out / "config.json").write_text(json.dumps(old))
    save_vocabulary(["[PAD]", "[OOV]", "a"], out / "vocab.txt")
    (out / "checkpoints").mkdir()
    (out / "checkpoints" / "state.json").write_text(json.dumps({**run_dir.new_state(), "epoch": 1}))
    run_dir.check_resumable(out, ModelConfig(attention="softmax"), TrainConfig(),
                            ["[PAD]", "[OOV]", "a"])
    with pytest.raises(ValueError, match="different configuration"):
        run_dir.check_resumable(out, ModelConfig(attention="softmax", d_model=32), TrainConfig(),
                                ["[PAD]", "[OOV]", "a"])


def test_cli_train_quietly_then_evaluate(csv_file, tmp_path):
    """`tfrs-linear train` in its own process: TensorFlow's start-up lines do not reach
    stderr; then `evaluate` by every protocol."""
    out = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    proc = subprocess.run(
        [sys.executable, "-m", "tfrs_linear", "train", "--data", str(csv_file), "--attention",
         "linrec", "--max-len", "8", "--d-model", "16", "--num-layers", "1", "--epochs", "1",
         "--batch-size", "8", "--loss", "sampled", "--num-negatives", "6", "--output", str(out)],
        capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr
    assert not [line for line in proc.stderr.splitlines() if NOISE.match(line)], proc.stderr
    for word in ("cuInit", "cudart_stub", "oneDNN", "absl::InitializeLog", "cpu_feature_guard"):
        assert word not in proc.stderr
    assert "epoch 1:" in proc.stdout
    config = json.loads((out / "config.json").read_text())
    assert config["max_len"] == 8 and config["attention"] == "linrec" and config["xla"] is True
    assert config["loss"] == "sampled" and config["num_negatives"] == 6
    assert "num_interests" not in config and config["precision"] == "float32"
    for protocol in ("full", "pop100", "uniform100"):
        assert main(["evaluate", "--model", str(out), "--protocol", protocol]) == 0
        result = json.loads((out / f"metrics-{protocol}.json").read_text())
        assert result["protocol"] == protocol and 0 <= result["test"]["hr@10"] <= 1
    assert main(["evaluate", "--model", str(out), "--exclude-history"]) == 0
    assert json.loads((out / "metrics-full.json").read_text())["exclude_history"] is True
