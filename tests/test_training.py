"""The TFRS retrieval model, its losses, training (XLA), resuming and the CLI."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from tfrs_linear import data as data_lib
from tfrs_linear import synthetic
from tfrs_linear.cli import main
from tfrs_linear.config import ModelConfig
from tfrs_linear.models import SequentialRetrievalModel, load_model_dir
from tfrs_linear.training import train

TINY = dict(max_len=12, d_model=16, num_layers=1, num_heads=2, ffn_dim=32, batch_size=8,
            eval_batch_size=16, epochs=2, patience=3, num_negatives=8, seed=1)


@pytest.fixture(scope="module")
def tiny_data():
    interactions = synthetic.generate(num_users=40, num_items=30, num_interests=5, median_length=20,
                                      min_length=6, max_length=40, seed=3)
    return data_lib.build_sequences(interactions)


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


# --------------------------------------------------------------------------- losses
def _numpy_softmax_ce(logits, target):
    logits = logits - logits.max()
    return -(logits[target] - np.log(np.exp(logits).sum()))


@pytest.mark.parametrize("regime", ["all", "last"])
def test_full_loss_equals_cross_entropy_over_the_catalogue(regime):
    config = ModelConfig(attention="linrec", regime=regime, loss="full", dropout=0.0,
                         attention_dropout=0.0, **{k: v for k, v in TINY.items() if k != "seed"})
    model = SequentialRetrievalModel(config, vocab_size=9).build_all()
    rng = np.random.default_rng(0)
    inputs = np.concatenate([np.zeros((3, 5), np.int32), rng.integers(2, 9, (3, 7), dtype=np.int32)], 1)
    targets = (np.concatenate([np.zeros((3, 6), np.int32), rng.integers(2, 9, (3, 6), dtype=np.int32)], 1)
               if regime == "all" else rng.integers(2, 9, (3,), dtype=np.int32))
    loss = model.compute_loss({"inputs": inputs, "targets": targets}).numpy()
    seq = model.encoder(inputs, training=False).numpy().astype(np.float64)
    table = model.item_embeddings().numpy().astype(np.float64)
    queries = seq.reshape(-1, 16) if regime == "all" else seq[:, -1]
    flat_targets = targets.reshape(-1)
    losses = [_numpy_softmax_ce((q @ table.T)[2:], t - 2) for q, t in zip(queries, flat_targets) if t > 1]
    np.testing.assert_allclose(loss, np.mean(losses), rtol=1e-5)


def _numpy_sampled_block(q, targets, negatives, table, catalogue):
    """Oracle of one Retrieval block: rows = queries, candidates = [targets; negatives]."""
    ids = np.concatenate([targets, negatives])
    p = lambda rank: np.log((rank + 2) / (rank + 1)) / np.log(catalogue + 1)  # noqa: E731
    losses, weights = [], []
    for row, target in enumerate(targets):
        if target <= 1:  # padding / OOV target: weight 0
            continue
        logits, label = [], None
        for col, cid in enumerate(ids):
            if cid <= 1:
                continue  # padding / OOV never compete
            if cid == target and col != row:
                continue  # accidental hit: the row's own target in another column
            if col == row:
                label = len(logits)
            logits.append(q[row] @ table[cid] - np.log(p(cid - 2)))
        losses.append(_numpy_softmax_ce(np.array(logits), label))
    return losses


@pytest.mark.parametrize("regime", ["last", "all"])
def test_sampled_loss_is_tfrs_retrieval_with_in_batch_and_shared_negatives(monkeypatch, regime):
    import tensorflow_recommenders as tfrs
    import tfrs_linear.models as models

    config = ModelConfig(attention="softmax", regime=regime, loss="sampled", dropout=0.0,
                         attention_dropout=0.0, **{**{k: v for k, v in TINY.items() if k != "seed"},
                                                   "num_negatives": 4})
    model = SequentialRetrievalModel(config, vocab_size=12).build_all()
    assert isinstance(model.task, tfrs.tasks.Retrieval)
    negatives = np.array([0, 3, 5, 9], np.int32)  # ranks; ids = ranks + 2
    monkeypatch.setattr(models, "sample_log_uniform", lambda n, r, seed=None: tf.constant(negatives))
    inputs = np.array([[0] * 8 + [2, 3, 4, 5], [0] * 10 + [6, 7], [0] * 9 + [8, 9, 5]], np.int32)
    if regime == "last":
        # target 5 is also sampled (rank 3): an accidental hit; row 2's target repeats row 0's.
        targets = np.array([5, 9, 5], np.int32)
    else:
        targets = np.zeros((3, 12), np.int32)
        targets[0, 8:] = [3, 4, 5, 11]
        targets[1, 10:] = [7, 5]
        targets[2, 9:] = [9, 5, 1]  # an OOV target: weight 0
    loss = model.compute_loss({"inputs": inputs, "targets": targets}).numpy()
    table = model.item_embeddings().numpy().astype(np.float64)
    seq = model.encoder(inputs).numpy().astype(np.float64)
    want = []
    if regime == "last":
        want += _numpy_sampled_block(seq[:, -1], targets, negatives + 2, table, 10)
    else:
        for n in range(12):
            want += _numpy_sampled_block(seq[:, n], targets[:, n], negatives + 2, table, 10)
    assert len(want) == (3 if regime == "last" else 8)
    np.testing.assert_allclose(loss, np.mean(want), rtol=1e-5)


def test_sampled_loss_trains_xla_compiled_in_regime_all(tiny_data):
    """Sampled-loss steps (XLA, per-position Retrieval blocks) lower the FULL cross-entropy."""
    tf.random.set_seed(0)
    config = ModelConfig(attention="linrec", regime="all", loss="sampled", dropout=0.0,
                         attention_dropout=0.0, **TINY)
    model = SequentialRetrievalModel(config, vocab_size=tiny_data.num_items).build_all()
    ds = data_lib.training_dataset(tiny_data, config.max_len, config.batch_size, seed=0)
    batch = next(iter(ds))
    full = SequentialRetrievalModel(config.replace(loss="full"), vocab_size=tiny_data.num_items)
    full.build_all()

    def full_loss():
        full.set_weights(model.get_weights())
        return float(full.compute_loss(batch))

    before = full_loss()
    model.compile(optimizer=tf.keras.optimizers.Adam(1e-2), jit_compile=True)
    history = model.fit(ds.take(4), epochs=5, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    assert full_loss() < before - 0.1


def test_log_uniform_sampler_matches_its_probabilities():
    from tfrs_linear.models import log_uniform_probability, sample_log_uniform

    draws = sample_log_uniform(200_000, 10).numpy()
    freq = np.bincount(draws, minlength=10) / len(draws)
    np.testing.assert_allclose(freq, log_uniform_probability(np.arange(10), 10).numpy(), atol=5e-3)
    assert draws.min() >= 0 and draws.max() <= 9


def test_config_validation_and_file_errors(tmp_path):
    with pytest.raises(ValueError, match="attention must be one of"):
        ModelConfig(attention="performer").validate()
    with pytest.raises(ValueError, match="needs a causal encoder"):
        ModelConfig(regime="all", causal=False).validate()
    with pytest.raises(ValueError, match="interest memory is non-causal"):
        ModelConfig(attention="elastic", use_memory=True).validate()
    with pytest.raises(ValueError, match="recency_bias needs attention='elastic'"):
        ModelConfig(attention="linrec", recency_bias=True).validate()
    # The recency bias is on by default for ELASTIC only, and can be turned off.
    assert ModelConfig(attention="elastic").uses_recency_bias
    assert not ModelConfig(attention="elastic", recency_bias=False).uses_recency_bias
    assert not ModelConfig(attention="linrec").validate().uses_recency_bias
    bad = tmp_path / "bad.json"
    bad.write_text('{"attention": "linrec",\n "max_lenn": 5}')
    with pytest.raises(ValueError, match="unknown configuration keys"):
        ModelConfig.load(bad)
    bad.write_text('{"attention": "linrec",\n "max_len": }')
    with pytest.raises(ValueError, match="line 2"):
        ModelConfig.load(bad)


@pytest.mark.parametrize("name", ["sasrec-ml100k", "linrec-ml100k", "linrec-paper-ml100k",
                                  "elastic-ml100k", "linrec-long"])
def test_reference_configs_load(name):
    root = os.path.dirname(os.path.dirname(__file__))
    config = ModelConfig.load(os.path.join(root, "models", f"{name}.json"))
    assert config.is_causal


def test_paper_form_elastic_config_loads_non_causal_without_recency():
    root = os.path.dirname(os.path.dirname(__file__))
    config = ModelConfig.load(os.path.join(root, "models", "elastic-paper-ml100k.json"))
    assert config.attention == "elastic" and not config.is_causal
    assert not config.uses_recency_bias and config.learning_rate == 3e-4


# ------------------------------------------------------------------------- training
def test_train_xla_resume_and_reload(tiny_data, tmp_path, capsys):
    out = tmp_path / "run"
    config = ModelConfig(attention="linrec", **{**TINY, "epochs": 1})
    first = train(config, tiny_data, out, verbose=0)
    assert set(first["valid"]) == {f"{m}@{k}" for m in ("hr", "ndcg", "mrr") for k in (5, 10, 20)}
    assert first["protocol"] == "full" and first["exclude_history"] is False
    state = json.loads((out / "checkpoints" / "state.json").read_text())
    assert state["epoch"] == 1
    # "Interrupted" after epoch 1: the same command with more epochs resumes at epoch 2.
    second = train(config.replace(epochs=2), tiny_data, out, verbose=0)
    assert "resuming" in capsys.readouterr().out
    state = json.loads((out / "checkpoints" / "state.json").read_text())
    assert [h["epoch"] for h in state["history"]] == [1, 2]
    assert second["epochs_run"] == 2
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test"] == second["test"]
    # The saved best weights reproduce the reported metrics.
    model, loaded_config, vocab = load_model_dir(out)
    assert vocab == list(tiny_data.vocab) and loaded_config == config.replace(epochs=2).resolved()
    from tfrs_linear.training import evaluate_model

    again = evaluate_model(model, tiny_data, "test", loaded_config)
    assert again["ndcg@10"] == pytest.approx(metrics["test"]["ndcg@10"], abs=1e-6)
    with pytest.raises(ValueError, match="different configuration"):
        train(config.replace(d_model=32), tiny_data, out, verbose=0)


@pytest.mark.parametrize("attention,regime,loss", [("softmax", "last", "sampled"),
                                                   ("elastic", "all", "full")])
def test_other_attentions_regimes_and_losses_train(tiny_data, tmp_path, attention, regime, loss):
    config = ModelConfig(attention=attention, regime=regime, loss=loss, **{**TINY, "epochs": 1})
    metrics = train(config, tiny_data, tmp_path / "run", verbose=0, steps_per_epoch=3)
    assert 0.0 <= metrics["test"]["ndcg@10"] <= 1.0
    history = json.loads((tmp_path / "run" / "checkpoints" / "state.json").read_text())["history"]
    assert np.isfinite(history[0]["loss"])


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


def test_mirrored_strategy_on_cpu_falls_back_from_xla(tmp_path):
    """Two logical CPU devices, MirroredStrategy: the train step runs without XLA (tf-keras
    cannot compile merge_call) and training still completes."""
    code = textwrap.dedent(f"""
        import tfrs_linear, tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        from tfrs_linear import data as data_lib, synthetic
        from tfrs_linear.config import ModelConfig
        from tfrs_linear.training import train
        data = data_lib.build_sequences(synthetic.generate(num_users=30, num_items=20, num_interests=4,
                                        median_length=15, min_length=6, max_length=30, seed=1))
        config = ModelConfig(attention="linrec", max_len=8, d_model=8, num_layers=1, num_heads=2,
                             ffn_dim=16, batch_size=8, epochs=1)
        m = train(config, data, r"{tmp_path / 'run'}", strategy="mirrored", verbose=0)
        print("NDCG", m["test"]["ndcg@10"])
    """)
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "XLA is off for the train step" in result.stdout
    assert "NDCG" in result.stdout


def test_model_dirs_saved_before_the_recency_option_load_without_it(tmp_path):
    """An ELASTIC model directory whose config.json predates `recency_bias` (no such key)
    was trained without the bias: it loads as such and serves the saved weights."""
    import json

    from tfrs_linear.models import save_model_dir

    config = ModelConfig(attention="elastic", recency_bias=False, max_len=8, d_model=8,
                         num_layers=1, num_heads=2, ffn_dim=16, num_interests=3)
    vocab = ["[PAD]", "[OOV]"] + [str(i) for i in range(10)]
    model = SequentialRetrievalModel(config, vocab_size=len(vocab)).build_all()
    save_model_dir(model, vocab, tmp_path)
    path = tmp_path / "config.json"
    values = json.loads(path.read_text())
    del values["recency_bias"]
    path.write_text(json.dumps(values))
    loaded, loaded_config, _ = load_model_dir(tmp_path)
    assert loaded_config.recency_bias is False
    ids = np.array([[0, 0, 3, 4, 5, 6, 7, 8]], np.int32)
    np.testing.assert_allclose(loaded.encode(ids).numpy(), model.encode(ids).numpy(), rtol=1e-6)
    # A configuration file without the key (a reference config) gets the default: on;
    # a model records the value it was built with.
    assert ModelConfig.load(path).uses_recency_bias
    built = SequentialRetrievalModel(ModelConfig.load(path), vocab_size=len(vocab))
    assert built.config.recency_bias is True
    save_model_dir(built.build_all(), vocab, tmp_path / "new")
    assert json.loads((tmp_path / "new" / "config.json").read_text())["recency_bias"] is True


def test_cli_reports_bad_input_as_one_error_line(tmp_path, capsys, monkeypatch):
    """Bad input through the CLI: exit status 2 and one line naming what is wrong, no
    traceback (TFRS_LINEAR_TRACEBACK=1 re-raises)."""
    monkeypatch.delenv("TFRS_LINEAR_TRACEBACK", raising=False)
    bad = tmp_path / "bad.json"
    bad.write_text('{"attention": "linrec",\n "max_len": }')
    assert main(["train", "--config", str(bad), "--output", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tfrs-linear train: error: ") and "line 2" in err
    assert "Traceback" not in err
    assert main(["evaluate", "--model", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert "tfrs-linear evaluate: error: " in err and "not a trained model directory" in err
    monkeypatch.setenv("TFRS_LINEAR_TRACEBACK", "1")
    with pytest.raises(ValueError, match="line 2"):
        main(["train", "--config", str(bad), "--output", str(tmp_path / "run")])
