"""Configuration: ModelConfig and TrainConfig in one flat key space; validation messages;
configuration files (models/*.json, config.json of saved models)."""

import dataclasses
import inspect
import json
from pathlib import Path

import pytest

from tfrs_linear.config import (
    MODEL_KEYS,
    TRAIN_KEYS,
    ModelConfig,
    TrainConfig,
    config_from_dict,
    load_config,
    load_saved_config,
    replace_config,
    save_config,
    to_flat_dict,
)
from tfrs_linear.layers.encoder import SequenceEncoder

ROOT = Path(__file__).resolve().parents[1]
# The flat keys of config.json as tfrs-linear 0.1.0 wrote them: every one stays readable.
KEYS_V0_1_0 = (
    "attention", "attention_dropout", "batch_size", "causal", "chunk_size", "d_model", "dropout",
    "epochs", "eval_batch_size", "exclude_history", "ffn_dim", "layer_norm_epsilon",
    "learning_rate", "loss", "max_len", "memory_keys", "memory_top_m", "normalization",
    "num_heads", "num_interests", "num_layers", "num_negatives", "patience", "recency_bias",
    "regime", "seed", "tie_embeddings", "use_memory", "xla",
)


def test_config_validation_and_file_errors(tmp_path):
    with pytest.raises(ValueError, match="attention must be one of"):
        ModelConfig(attention="performer").validate()
    with pytest.raises(ValueError, match="needs a causal encoder"):
        ModelConfig(regime="all", causal=False).validate()
    with pytest.raises(ValueError, match="interest memory is non-causal"):
        ModelConfig(attention="elastic", use_memory=True).validate()
    with pytest.raises(ValueError, match="recency_bias needs attention='elastic'"):
        ModelConfig(attention="linrec", recency_bias=True).validate()
    with pytest.raises(ValueError, match="learning_rate must be > 0"):
        TrainConfig(learning_rate=0.0).validate()
    # The recency bias is on by default for ELASTIC only, and can be turned off.
    assert ModelConfig(attention="elastic").uses_recency_bias
    assert not ModelConfig(attention="elastic", recency_bias=False).uses_recency_bias
    assert not ModelConfig(attention="linrec").validate().uses_recency_bias
    bad = tmp_path / "bad.json"
    bad.write_text('{"attention": "linrec",\n "max_lenn": 5}')
    with pytest.raises(ValueError, match="unknown configuration keys"):
        load_config(bad)
    bad.write_text('{"attention": "linrec",\n "max_len": }')
    with pytest.raises(ValueError, match="line 2"):
        load_config(bad)
    with pytest.raises(FileNotFoundError, match="configuration file not found"):
        load_config(tmp_path / "nowhere.json")


def test_one_flat_key_space_split_between_the_two_classes():
    assert set(MODEL_KEYS).isdisjoint(TRAIN_KEYS)
    assert set(KEYS_V0_1_0) <= set(MODEL_KEYS) | set(TRAIN_KEYS)
    assert {"regime", "loss", "num_negatives", "attention", "max_len"} <= set(MODEL_KEYS)
    assert {"learning_rate", "batch_size", "epochs", "patience", "seed", "xla",
            "exclude_history", "eval_batch_size"} <= set(TRAIN_KEYS)
    model_config, train_config = config_from_dict(
        {"max_len": 50, "epochs": 3, "loss": "sampled", "attention": "elastic", "use_memory": True,
         "regime": "last"})
    assert (model_config.max_len, model_config.loss, train_config.epochs) == (50, "sampled", 3)
    flat = to_flat_dict(model_config, train_config)
    # Everything applies to a sampled ELASTIC model with the memory, but LinRec's options.
    assert sorted(flat) == sorted(set(MODEL_KEYS + TRAIN_KEYS) - {"normalization", "chunk_size"})
    assert config_from_dict(flat) == (model_config, train_config)


def test_unknown_keys_are_listed_with_every_known_key():
    with pytest.raises(ValueError) as error:
        config_from_dict({"max_lenn": 5, "zz": 1}, source="x.json")
    assert str(error.value) == (
        f"x.json: unknown configuration keys ['max_lenn', 'zz']; known keys: "
        f"{sorted(MODEL_KEYS + TRAIN_KEYS)}"
    )


def test_replace_config_routes_each_override_to_its_class_and_skips_none():
    model_config, train_config = replace_config(ModelConfig(), TrainConfig(), d_model=32,
                                                epochs=3, attention=None, xla=False)
    assert model_config == ModelConfig(d_model=32)
    assert train_config == TrainConfig(epochs=3, xla=False)
    with pytest.raises(ValueError, match="invalid configuration: regime 'all'"):
        replace_config(ModelConfig(), TrainConfig(), causal=False)
    with pytest.raises(ValueError, match="unknown configuration keys"):
        replace_config(ModelConfig(), TrainConfig(), d_modell=32)


def test_encoder_kwargs_are_the_encoders_arguments_resolved():
    parameters = inspect.signature(SequenceEncoder.__init__).parameters
    kwargs = ModelConfig(attention="elastic", regime="last").encoder_kwargs()
    assert set(kwargs) <= set(parameters)
    # Every encoder argument that is a configuration field comes from the configuration.
    assert set(parameters) & set(MODEL_KEYS) == set(kwargs)
    assert kwargs["causal"] is False and kwargs["recency_bias"] is True
    assert ModelConfig(attention="linrec").encoder_kwargs()["causal"] is True


@pytest.mark.parametrize("name", ["sasrec-ml100k", "linrec-ml100k", "linrec-paper-ml100k",
                                  "elastic-ml100k", "linrec-long"])
def test_reference_configs_load(name):
    model_config, _ = load_config(ROOT / "models" / f"{name}.json")
    assert model_config.is_causal


def test_paper_form_elastic_config_loads_non_causal_without_recency():
    model_config, train_config = load_config(ROOT / "models" / "elastic-paper-ml100k.json")
    assert model_config.attention == "elastic" and not model_config.is_causal
    assert not model_config.uses_recency_bias and train_config.learning_rate == 3e-4


def test_every_reference_config_keeps_its_values():
    for path in sorted((ROOT / "models").glob("*.json")):
        values = {k: v for k, v in json.loads(path.read_text()).items() if not k.startswith("_")}
        flat = to_flat_dict(*load_config(path))
        assert {k: flat[k] for k in values} == values, path.name


# Keys of the 0.1.0 fixtures that do nothing for their model (not written back).
INAPPLICABLE_IN_FIXTURES = {
    "elastic": {"normalization", "chunk_size", "memory_keys", "memory_top_m", "num_negatives"},
    "linrec": {"num_interests", "recency_bias", "use_memory", "memory_keys", "memory_top_m",
               "num_negatives"},
    "softmax-last": {"normalization", "chunk_size", "num_interests", "recency_bias", "use_memory",
                     "memory_keys", "memory_top_m", "num_negatives"},
}


def test_a_saved_config_is_written_back_with_the_keys_that_apply(tmp_path):
    """config.json of a model saved by 0.1.0: loaded and saved again, every key that applies
    keeps its value (and the new ``precision``, ``positions``, ``optimizer``,
    ``lr_schedule``, ``warmup_steps``, ``length_buckets`` and ``bucket_window`` are how it was trained:
    float32, positions counted from the newest item, Adam at a constant rate, every batch
    ``max_len`` wide); the keys
    that do nothing for the model are left out, and the configuration is the same."""
    fixtures = ROOT / "tests" / "fixtures" / "model_dir_v0_1_0"
    for name, skipped in INAPPLICABLE_IN_FIXTURES.items():
        saved = fixtures / name / "config.json"
        old = json.loads(saved.read_text())
        save_config(tmp_path / "config.json", *load_saved_config(saved))
        new = json.loads((tmp_path / "config.json").read_text())
        assert new == {**{k: v for k, v in old.items() if k not in skipped},
                       "precision": "float32", "positions": "from_end",
                       "optimizer": "adam", "lr_schedule": "constant",
                       "warmup_steps": 0, "length_buckets": 1, "bucket_window": 1}, name
        assert load_saved_config(tmp_path / "config.json") == load_saved_config(saved)


@pytest.mark.parametrize("values, message", [
    ({"max_len": 20.5}, "max_len must be int, got 20.5 (float)"),
    ({"dropout": "0.1"}, "dropout must be float, got '0.1' (str)"),
    ({"max_len": "20"}, "max_len must be int, got '20' (str)"),
    ({"num_heads": True}, "num_heads must be int, got True (bool)"),
    ({"xla": 1}, "xla must be bool, got 1 (int)"),
    ({"causal": "yes"}, "causal must be bool or null, got 'yes' (str)"),
    ({"attention": 3}, "attention must be str, got 3 (int)"),
    ({"precision": "float16"}, "precision must be one of ('float32', 'mixed_float16', "
                               "'mixed_bfloat16'), got 'float16'"),
])
def test_a_wrong_type_is_refused_never_converted(values, message):
    with pytest.raises(ValueError) as error:
        config_from_dict(values, source="custom_config")
    assert str(error.value) == f"custom_config: invalid configuration: {message}"


def test_an_int_is_a_valid_float_and_null_a_valid_default_by_regime(tmp_path):
    model_config, train_config = config_from_dict({"dropout": 0, "learning_rate": 1,
                                                   "causal": None, "recency_bias": None})
    assert model_config.dropout == 0.0 and train_config.learning_rate == 1.0
    assert model_config.causal is None and model_config.is_causal
    path = tmp_path / "list.json"
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match="holds one JSON object, got list"):
        load_config(path)


def test_fields_that_do_nothing_are_neither_compared_nor_stored(tmp_path):
    full = ModelConfig(loss="full", num_negatives=8, normalization="token", attention="softmax")
    assert full == ModelConfig(attention="softmax")
    assert ModelConfig(loss="sampled", num_negatives=8) != ModelConfig(loss="sampled")
    assert set(full.inapplicable_fields()) == {
        "normalization", "chunk_size", "num_interests", "recency_bias", "use_memory",
        "memory_keys", "memory_top_m", "num_negatives"}
    assert set(ModelConfig(attention="linrec", regime="last").inapplicable_fields()) >= {"chunk_size"}
    save_config(tmp_path / "config.json", full, TrainConfig())
    stored = json.loads((tmp_path / "config.json").read_text())
    assert "num_negatives" not in stored and "normalization" not in stored
    assert stored["attention"] == "softmax" and stored["precision"] == "float32"


def test_saved_configs_fill_keys_they_predate_with_how_they_were_trained(tmp_path):
    path = tmp_path / "config.json"
    values = to_flat_dict(ModelConfig(attention="elastic"), TrainConfig())
    del values["recency_bias"], values["length_buckets"], values["bucket_window"]
    path.write_text(json.dumps(values))
    assert load_saved_config(path)[0].recency_bias is False  # trained before the option
    assert load_config(path)[0].uses_recency_bias  # a configuration file: the default
    assert load_saved_config(path)[1].length_buckets == 1  # every batch max_len wide
    assert load_saved_config(path)[1].bucket_window == 1


def test_resolved_makes_the_attention_defaults_explicit():
    config = ModelConfig(attention="elastic")
    assert config.recency_bias is None and config.resolved().recency_bias is True
    assert config.resolved().causal is None  # causal stays as given (config.json records None)
    assert config.positions is None and config.resolved().positions == "none"
    assert ModelConfig().resolved().positions == "from_end"  # LinRec
    assert dataclasses.replace(config.resolved(), recency_bias=None, positions=None) == config


@pytest.mark.parametrize("fields, positions", [
    ({}, "from_end"),                                          # causal LinRec: -6% HR@10
    ({"attention": "elastic"}, "none"),                        # causal ELASTIC + recency
    ({"attention": "elastic", "recency_bias": False}, "from_end"),
    ({"attention": "softmax"}, "from_end"),                    # no recurrent form
    ({"attention": "elastic", "regime": "last"}, "from_end"),  # non-causal
    ({"attention": "elastic", "regime": "last", "causal": True}, "none"),
    ({"attention": "elastic", "regime": "last", "use_memory": True}, "from_end"),
    ({"positions": "from_start"}, "from_start"),               # explicit wins
    ({"attention": "softmax", "positions": "none"}, "none"),   # explicit wins
    ({"positions": "from_end"}, "from_end"),
])
def test_positions_default_by_model_is_streamable_where_the_model_can_stream(fields, positions):
    config = ModelConfig(**fields)
    assert config.resolved_positions == positions
    assert config.resolved().positions == positions  # what config.json records
    assert config.encoder_kwargs()["positions"] == positions
    assert config.is_streamable == (config.can_stream and positions != "from_end")
    if "positions" not in fields:
        assert config.positions is None
