"""The keras-rs example (tfrs_linear/keras3/example.py) on one backend.

Trains the sequential retrieval model briefly, checks the keras-rs top-k against a
brute-force NumPy search, and on TensorFlow exports it for TF Serving and runs
``tfrs-linear check-serving --no-compare`` on the export (other backends must refuse to
export with a clear error); a streaming encoder's export also serves ``encode_state`` and
``step``, whose top-k equals ``serving_default``'s on the same history.
"""

import math
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from tests.keras3._harness import BACKEND, run, to_numpy
from tfrs_linear.constants import NUM_RESERVED
from tfrs_linear.keras3 import example

# Uncompiled on TensorFlow (XLA training is tested in backend_models.py; compiling it
# again here would only cost time), compiled on JAX (eager JAX runs op by op), eager on
# PyTorch ("auto" is eager there).
SMALL = dict(epochs=2, num_users=48, num_items=20, max_len=10, k=5, batch_size=32,
             d_model=16, num_layers=1, ffn_dim=32,
             jit_compile=False if BACKEND == "tensorflow" else "auto")


def test_prefix_examples_hold_out_the_newest_item():
    histories = np.array([[0, 0, 5, 6, 7, 8], [0, 3, 4, 2, 9, 6]], np.int32)
    x, y = example.prefix_examples(histories, max_len=3)
    assert y.tolist() == [6, 7, 4, 2, 9]  # the newest item of each row is never a target
    assert x.tolist() == [[0, 0, 5], [0, 5, 6], [0, 0, 3], [0, 3, 4], [3, 4, 2]]


@pytest.mark.parametrize("attention", ["linrec", "elastic"])
def test_example_trains_retrieves_and_exports(tmp_path, attention):
    """LinRec with positions from_end (no streaming), ELASTIC with none (streams)."""
    export = BACKEND == "tensorflow"
    if not export and attention == "elastic":
        return  # the export is what the second case adds
    metrics = example.run(tmp_path, export=export, attention=attention,
                          **dict(SMALL, epochs=1 if attention == "elastic" else 2))
    assert all(math.isfinite(v) for v in metrics["train_loss"])
    assert set(metrics["test"]) == {"loss", "recall", "ndcg"}
    assert 0.0 <= metrics["test"]["ndcg"] <= metrics["test"]["recall"] <= 1.0
    assert (tmp_path / "metrics.json").exists()
    if export:
        _check_export(metrics)
    else:
        model = example.build_model(22, 10, **dict(d_model=16, num_layers=1))
        model(np.zeros((1, 10), np.int32))
        with pytest.raises(ValueError, match="KERAS_BACKEND=tensorflow"):
            example.export_for_serving(example.serving_model(model, 5), tmp_path / "x",
                                       np.zeros((1, 10), np.int32))


def test_export_elsewhere_is_refused_before_training(tmp_path, capsys):
    """On JAX and PyTorch, asking for the export stops before any training or file (the
    TensorFlow backend exports: test_example_trains_retrieves_and_exports)."""
    if BACKEND == "tensorflow":
        assert example.check_export_backend() is None
        return
    with pytest.raises(ValueError, match="KERAS_BACKEND=tensorflow.*--no-export"):
        example.run(tmp_path / "run", **SMALL)
    with pytest.raises(SystemExit) as stop:
        example.main(["--output", str(tmp_path / "cli")])
    assert stop.value.code == 2 and "--no-export" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_serving_model_is_brute_force_top_k():
    keras.utils.set_random_seed(1)
    model = example.build_model(22, 10, k=5, d_model=16, num_layers=1, ffn_dim=32,
                                attention="elastic", causal=True, num_interests=3)
    ids = example.synthetic_histories(4, 20, 10, seed=1)[:, 1:]
    serving = example.serving_model(model, k=5)
    got = run(serving, ids)
    query = run(model.query, ids)
    table = to_numpy(model.encoder.item_embedding.embeddings)
    scores = query @ table[NUM_RESERVED:].T
    best = np.argsort(-scores, axis=-1, kind="stable")[:, :5]
    np.testing.assert_array_equal(got["item_ids"], best + NUM_RESERVED)
    np.testing.assert_allclose(got["scores"], np.take_along_axis(scores, best, -1),
                               rtol=1e-5, atol=1e-5)
    logits = run(model, ids)
    assert np.all(logits[:, :NUM_RESERVED] < -1e8)


def _check_export(metrics):
    import tensorflow as tf

    export_dir = metrics["export_dir"]
    assert metrics["serving_input"] == "item_ids"
    loaded = tf.saved_model.load(export_dir).signatures["serving_default"]
    ids = example.synthetic_histories(3, 20, 10, seed=3)[:, 1:]
    served = loaded(item_ids=tf.constant(ids))
    assert served["item_ids"].shape == (3, 5) and served["item_ids"].dtype == tf.int32
    assert np.all(np.diff(served["scores"].numpy(), axis=-1) <= 0)  # sorted, best first
    streams = metrics["streaming"]
    assert streams == (metrics["attention"] == "elastic")
    if not streams:  # the same export, one signature less: check-serving runs on the other
        assert set(tf.saved_model.load(export_dir).signatures) == {"serve",
                                                                   "serving_default"}
        return
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    result = subprocess.run(
        [sys.executable, "-m", "tfrs_linear", "check-serving", export_dir, "--no-compare"],
        env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "warmup: replayed 3 of 3" in result.stdout and "OK:" in result.stdout
    _check_streaming_signatures(tf.saved_model.load(export_dir).signatures, ids)


def _check_streaming_signatures(signatures, ids):
    """``encode_state`` on all but each history's newest item, then ``step`` with it, give
    ``serving_default``'s top-k on the whole history; a second ``step`` of padding
    changes nothing."""
    import tensorflow as tf

    state = signatures["encode_state"](item_ids=tf.constant(ids[:, :-1]))
    state.pop("user_embedding")
    out = signatures["step"](item_ids=tf.constant(ids[:, -1:]), **state)
    served = signatures["serving_default"](item_ids=tf.constant(ids))
    np.testing.assert_array_equal(out["item_ids"], served["item_ids"])
    np.testing.assert_allclose(out["scores"], served["scores"], rtol=1e-5, atol=1e-5)
    assert out["count"].numpy().tolist() == np.sum(ids != 0, axis=1).tolist()
    new_state = {k: v for k, v in out.items() if k not in ("user_embedding", "item_ids",
                                                            "scores")}
    again = signatures["step"](item_ids=tf.zeros((len(ids), 2), tf.int32), **new_state)
    np.testing.assert_array_equal(again["user_embedding"], out["user_embedding"])
