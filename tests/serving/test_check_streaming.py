"""``tfrs-linear check-serving`` on streamable exports: the encode_state and step warmup
records replayed through the TF1 session and compared with the Python model
(tfrs_linear.serving.check_streaming); and ``tfrs-linear export --stream-history``."""

import json

import numpy as np
import pytest
import tensorflow as tf

from tests.serving.common import MAX_LEN, VOCAB
from tests.serving.conftest import STREAM_R
from tfrs_linear.cli import export as export_cli
from tfrs_linear.cli import main
from tfrs_linear.config import ModelConfig
from tfrs_linear.models import SequentialRetrievalModel, load_model_dir, save_model_dir
from tfrs_linear.serving.check_streaming import newest_items, streaming_cases
from tfrs_linear.serving.streaming import DEFAULT_STREAM_HISTORY
from tfrs_linear.serving.warmup import read_warmup
from tfrs_linear.serving.wire import EXPORT_INFO_FILE, WARMUP_FILE


@pytest.mark.parametrize("attention", ["linrec", "elastic"])
def test_check_serving_replays_and_compares_the_streaming_signatures(stream_exports, capsys,
                                                                     attention):
    assert main(["check-serving", str(stream_exports[attention]["version"])]) == 0
    out = capsys.readouterr().out
    assert "replayed 15 of 15" in out and "15 request(s) compared" in out and "OK" in out
    # The report lists the new signatures with their tensors.
    assert "  encode_state(item_ids: string [-1, -1] (encode_state_item_ids:0)) -> " in out
    assert "fingerprint: int64 [-1] (step_fingerprint:0)" in out
    r = STREAM_R if attention == "linrec" else 0
    assert f"recent_items: int32 [-1, {r}] (step_recent_items:0)" in out
    assert (f"streaming: 3 encode_state and 3 step request(s) compared (R = {r}, "
            "fingerprint ") in out
    assert "3 of the 3 step(s) against a re-encode of history + new events" in out


def test_check_serving_of_a_streaming_export_fails_with_other_weights(stream_exports,
                                                                       tmp_path, capsys):
    model = stream_exports["linrec"]["model"]
    other = SequentialRetrievalModel(model.config, vocab_size=len(VOCAB)).build_all()
    save_model_dir(other, VOCAB, tmp_path / "other")
    version = stream_exports["linrec"]["version"]
    assert main(["check-serving", str(version), "--model", str(tmp_path / "other")]) == 1
    err = capsys.readouterr().err
    assert "(encode_state) against the Python model's encode_state: user_embedding differs" in err
    assert "(step) against a dense re-encode of history + new events: user_embedding differs" in err
    assert "state tensor block_0.kv_sum differs" in err


def _replayed(version):
    """The streaming warmup records through a TF1 session: [(label, signature, inputs,
    outputs)], as check-serving replays them."""
    results = []
    logs = read_warmup(version / "assets.extra" / WARMUP_FILE)  # eagerly, before the graph
    graph = tf.Graph()
    with graph.as_default(), tf.compat.v1.Session(graph=graph) as sess:
        meta = tf.compat.v1.saved_model.loader.load(sess, ["serve"], str(version))
        for n, log in enumerate(logs):
            request = log.predict_log.request
            name = request.model_spec.signature_name
            if name not in ("encode_state", "step"):
                continue
            sig = meta.signature_def[name]
            inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
            keys = sorted(sig.outputs)
            values = sess.run([sig.outputs[k].name for k in keys],
                              {sig.inputs[k].name: v for k, v in inputs.items()})
            results.append((f"#{n}", name, inputs, dict(zip(keys, values))))
    return results


def test_streaming_cases_find_wrong_integers_and_unknown_histories(stream_exports):
    entry = stream_exports["linrec"]
    model, _, vocab = load_model_dir(entry["model_dir"])
    info = json.loads((entry["version"] / "assets.extra" / EXPORT_INFO_FILE).read_text())
    results = _replayed(entry["version"])
    cases, problems, _ = streaming_cases(model, vocab, results, info, 1e-4)
    assert problems == [] and [c.signature for c in cases] == ["encode_state"] * 3 + ["step"] * 3
    # A served recent_items or fingerprint that is off is reported.
    label, name, inputs, outputs = results[3]
    bad = dict(outputs, recent_items=outputs["recent_items"] + 1)
    _, problems, _ = streaming_cases(model, vocab, [(label, name, inputs, bad)], info, 1e-4)
    assert len(problems) == 1 and "recent_items is" in problems[0]
    bad = dict(outputs, fingerprint=outputs["fingerprint"] + 1)
    _, problems, _ = streaming_cases(model, vocab, [(label, name, inputs, bad)], info, 1e-4)
    assert len(problems) == 1 and "fingerprint is" in problems[0]
    # A step whose state no encode_state request made: compared with the model's step.
    cases, problems, summary = streaming_cases(model, vocab, results[3:], info, 1e-4)
    assert problems == [] and "0 of the 3 step(s)" in summary
    for case in cases:
        (what, rows, user), = case.embeddings
        assert what.startswith("the Python model's step")
        np.testing.assert_allclose(case.outputs["user_embedding"][rows], user[rows], atol=1e-5)


def test_newest_items():
    assert newest_items([[5, 6], [2, 3, 4, 7], []], 3).tolist() == [[0, 5, 6], [3, 4, 7],
                                                                    [0, 0, 0]]
    assert newest_items([[5]], 0).shape == (1, 0)


# ---------------------------------------------------------------- export --stream-history


def test_stream_history_flag_help_says_the_default():
    assert export_cli.STREAM_HISTORY_DEFAULT_TEXT == str(DEFAULT_STREAM_HISTORY)


@pytest.fixture(scope="module")
def softmax_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("softmax") / "model"
    config = ModelConfig(attention="softmax", max_len=MAX_LEN, d_model=16, num_heads=2,
                         ffn_dim=32, num_layers=1, positions="from_start")
    save_model_dir(SequentialRetrievalModel(config, vocab_size=len(VOCAB)).build_all(),
                   VOCAB, path)
    return path


@pytest.mark.parametrize("flags, message", [
    (["--stream-history", "-1"], "--stream-history must be an integer >= 0, got -1"),
    (["--stream-history", "3", "--keep-history"],
     "--stream-history 3 keeps items for history exclusion, which --keep-history turns off"),
    (["--stream-history", "3", "--softmax"], "cannot stream (attention 'softmax'"),
])
def test_bad_stream_history_is_refused_before_anything_is_written(
        stream_exports, softmax_dir, tmp_path, capsys, flags, message):
    model_dir = stream_exports["linrec"]["model_dir"]
    if "--softmax" in flags:
        flags, model_dir = [f for f in flags if f != "--softmax"], softmax_dir
    base = tmp_path / "saved" / "recs"
    rc = main(["export", "--model", str(model_dir), "--base-path", str(base)] + flags)
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("tfrs-linear export: error: ") and message in err
    assert err.count("\n") == 1 and not (tmp_path / "saved").exists()


def test_a_stream_history_that_is_not_an_integer_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["export", "--model", "m", "--base-path", str(tmp_path / "b"),
              "--stream-history", "many"])
    assert exit_.value.code == 2
    assert "argument --stream-history: invalid int value: 'many'" in capsys.readouterr().err
