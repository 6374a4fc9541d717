"""`tfrs-linear train`'s configuration flags: one per field, generated from the dataclasses."""

import argparse
import dataclasses

import pytest

from tfrs_linear.cli import main
from tfrs_linear.cli.config_flags import CONFIG_FIELDS, flag_name
from tfrs_linear.cli.train import add_arguments, config_from_args
from tfrs_linear.config import ModelConfig, TrainConfig

# For every field: the flags that set it to a value other than its default, the flags
# that make it apply to the model, and that value.
SETS = {
    "attention": (["--attention", "softmax"], [], "softmax"),
    "normalization": (["--normalization", "token"], [], "token"),
    "regime": (["--regime", "last"], [], "last"),
    "loss": (["--loss", "sampled"], [], "sampled"),
    "causal": (["--no-causal"], ["--regime", "last"], False),
    "max_len": (["--max-len", "20"], [], 20),
    "d_model": (["--d-model", "32"], [], 32),
    "num_layers": (["--num-layers", "3"], [], 3),
    "num_heads": (["--num-heads", "4"], [], 4),
    "ffn_dim": (["--ffn-dim", "96"], [], 96),
    "dropout": (["--dropout", "0.1"], [], 0.1),
    "attention_dropout": (["--attention-dropout", "0.05"], [], 0.05),
    "layer_norm_epsilon": (["--layer-norm-epsilon", "1e-6"], [], 1e-6),
    "chunk_size": (["--chunk-size", "16"], [], 16),
    "num_interests": (["--num-interests", "8"], ["--attention", "elastic"], 8),
    "positions": (["--positions", "none"], [], "none"),
    "recency_bias": (["--no-recency-bias"], ["--attention", "elastic"], False),
    "use_memory": (["--use-memory"], ["--attention", "elastic", "--regime", "last"], True),
    "memory_keys": (["--memory-keys", "16"],
                    ["--attention", "elastic", "--regime", "last", "--use-memory"], 16),
    "memory_top_m": (["--memory-top-m", "4"],
                     ["--attention", "elastic", "--regime", "last", "--use-memory"], 4),
    "tie_embeddings": (["--no-tie-embeddings"], [], False),
    "num_negatives": (["--num-negatives", "64"], ["--loss", "sampled"], 64),
    "learning_rate": (["--learning-rate", "0.01"], [], 0.01),
    "batch_size": (["--batch-size", "16"], [], 16),
    "epochs": (["--epochs", "3"], [], 3),
    "patience": (["--patience", "0"], [], 0),
    "seed": (["--seed", "7"], [], 7),
    "xla": (["--no-xla"], [], False),
    "exclude_history": (["--exclude-history"], [], True),
    "eval_batch_size": (["--eval-batch-size", "64"], [], 64),
    "precision": (["--precision", "mixed_bfloat16"], [], "mixed_bfloat16"),
    "optimizer": (["--optimizer", "lazy_adam"], [], "lazy_adam"),
    "lr_schedule": (["--lr-schedule", "cosine"], [], "cosine"),
    "warmup_steps": (["--warmup-steps", "100"], [], 100),
    "length_buckets": (["--length-buckets", "2"], [], 2),
    "bucket_window": (["--bucket-window", "8"], [], 8),
}


def parse(argv):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv + ["--output", "unused"])


def configs(argv):
    return config_from_args(parse(argv))


def test_every_field_has_a_flag_with_its_default_and_meaning_in_help(capsys):
    names = [f.name for f in CONFIG_FIELDS]
    assert sorted(SETS) == sorted(names)  # a new field needs a line above
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for field in CONFIG_FIELDS:
        assert flag_name(field.name) in text
        assert " ".join(field.metadata["help"].split()) in text, field.name
    assert "--max-len INT the fixed, left-padded sequence length (default: 200)" in text
    assert "--causal, --no-causal causal (unidirectional) encoder (default: by regime" in text
    assert "(default: by attention: on for elastic)" in text


@pytest.mark.parametrize("name", sorted(SETS))
def test_each_flag_sets_its_field_and_nothing_else(name):
    flags, context, value = SETS[name]
    model_config, train_config = configs(context + flags)
    base = configs(context) if context else (ModelConfig(), TrainConfig())
    flat = {**model_config.to_dict(), **train_config.to_dict()}
    old = {**base[0].to_dict(), **base[1].to_dict()}
    assert flat[name] == value and old[name] != value
    changed = {k for k in flat if flat[k] != old[k]}
    assert changed == {name}


def test_todays_flags_parse_the_same():
    args = parse(["--no-xla", "--exclude-history", "--max-len", "20"])
    assert args.no_xla is True and args.xla is False and args.exclude_history is True
    assert parse([]).no_xla is False
    assert configs(["--xla"])[1].xla is True
    # A flag left out keeps the configuration's value, None defaults included.
    model_config, train_config = configs([])
    assert model_config.causal is None and model_config.recency_bias is None
    assert (model_config, train_config) == (ModelConfig(), TrainConfig())


@pytest.mark.parametrize("argv, refused", [
    (["--attention", "softmax", "--normalization", "token"], "--normalization"),
    (["--attention", "elastic", "--normalization", "paper"], "--normalization"),
    (["--num-negatives", "64"], "--num-negatives"),
    (["--num-interests", "8"], "--num-interests"),
    (["--attention", "softmax", "--no-recency-bias"], "--recency-bias"),
    (["--attention", "linrec", "--no-use-memory"], "--use-memory"),
    (["--attention", "elastic", "--memory-keys", "16"], "--memory-keys"),
    (["--attention", "softmax", "--chunk-size", "16"], "--chunk-size"),
])
def test_a_flag_that_does_nothing_is_refused(argv, refused, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *argv, "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"tfrs-linear train: error: {refused} would do nothing") and "only" in err
    assert err.count("\n") == 1 and not out.exists()


def test_a_config_file_may_hold_keys_that_do_not_apply(tmp_path):
    """A saved config.json of 0.1.0 holds every key: used as --config, it is accepted."""
    path = tmp_path / "c.json"
    path.write_text('{"attention": "softmax", "normalization": "token", "num_negatives": 9}')
    model_config, _ = configs(["--config", str(path)])
    assert model_config == ModelConfig(attention="softmax")


@pytest.mark.parametrize("argv, message", [
    (["check-serving", "x", "--tolerance", "-1"], "--tolerance must be a finite number >= 0"),
    (["export", "--model", "m", "--base-path", "b/recs", "--k", "0"], "--k must be an integer >= 1"),
])
def test_bad_serving_numbers_are_one_error_line(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TFRS_LINEAR_TRACEBACK", raising=False)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"tfrs-linear {argv[0]}: error: ") and message in err
    assert err.count("\n") == 1 and not (tmp_path / "b").exists()


@pytest.mark.parametrize("argv, message", [
    (["train", "--steps-per-epoch", "0"], "--steps-per-epoch: expected a positive integer, got '0'"),
    (["train", "--steps-per-epoch", "-3"], "--steps-per-epoch: expected a positive integer, got '-3'"),
    (["train", "--max-len", "2.5"], "--max-len: invalid int value: '2.5'"),
])
def test_bad_numbers_are_refused_by_the_cli(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv + (["--output", str(tmp_path / "run")] if argv[0] == "train" else []))
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("content, key", [
    ('{"max_len": 20.5}', "max_len must be int, got 20.5 (float)"),
    ('{"dropout": "0.1"}', "dropout must be float, got '0.1' (str)"),
    ('{"max_len": "20"}', "max_len must be int, got '20' (str)"),
    ('{"epochs": true}', "epochs must be int, got True (bool)"),
])
def test_a_config_file_of_the_wrong_type_is_one_error_line_and_writes_nothing(
        content, key, tmp_path, capsys):
    path = tmp_path / "c.json"
    path.write_text(content)
    out = tmp_path / "run"
    assert main(["train", "--config", str(path), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == f"tfrs-linear train: error: {path}: invalid configuration: {key}\n"
    assert not out.exists()


def test_fields_without_a_flag_of_their_own_name_do_not_exist():
    # dest == field name for every field: `args.<field>` is what the flag set.
    args = parse([])
    for field in dataclasses.fields(ModelConfig) + dataclasses.fields(TrainConfig):
        assert getattr(args, field.name) is None
