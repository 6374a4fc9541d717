"""`tfrs-linear train` and `tfrs-linear evaluate`: flags over a configuration file, the
files they write."""

import argparse
import json

import numpy as np
import pytest

from tfrs_linear.cli import main
from tfrs_linear.config import ModelConfig, TrainConfig
from tfrs_linear.training import add_train_arguments, config_from_args


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
    add_train_arguments(parser)
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


def test_cli_train_then_evaluate(csv_file, tmp_path):
    out = tmp_path / "run"
    rc = main(["train", "--data", str(csv_file), "--attention", "linrec", "--max-len", "8",
               "--d-model", "16", "--num-layers", "1", "--epochs", "1", "--batch-size", "8",
               "--loss", "sampled", "--num-negatives", "6", "--output", str(out)])
    assert rc == 0
    config = json.loads((out / "config.json").read_text())
    assert config["max_len"] == 8 and config["attention"] == "linrec" and config["xla"] is True
    assert config["loss"] == "sampled" and config["num_negatives"] == 6
    for protocol in ("full", "pop100", "uniform100"):
        assert main(["evaluate", "--model", str(out), "--protocol", protocol]) == 0
        result = json.loads((out / f"metrics-{protocol}.json").read_text())
        assert result["protocol"] == protocol and 0 <= result["test"]["hr@10"] <= 1
    assert main(["evaluate", "--model", str(out), "--exclude-history"]) == 0
    assert json.loads((out / "metrics-full.json").read_text())["exclude_history"] is True
