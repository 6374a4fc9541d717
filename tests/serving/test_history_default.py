"""The export's history default (issue 14): an export removes the request's history items
unless ``--keep-history`` is given, whatever the run's evaluation ``exclude_history``.
Checked through a TF1 session on the ``serve`` tag, the way TF Serving (and
``check-serving``) loads a version, against the NumPy oracle of tests.serving.common."""

import json

import numpy as np
import tensorflow as tf

from tests.serving.common import K, VOCAB, numpy_scores, numpy_topk, pad_rows, strs
from tfrs_linear import serving
from tfrs_linear.cli import main
from tfrs_linear.config import TrainConfig
from tfrs_linear.models import save_model_dir


def _serve(version, rows):
    """``serving_default`` of ``version`` in a TF1 session: (ids [B, k] str, scores)."""
    graph = tf.Graph()
    with graph.as_default(), tf.compat.v1.Session(graph=graph) as sess:
        meta = tf.compat.v1.saved_model.loader.load(sess, ["serve"], str(version))
        sig = meta.signature_def["serving_default"]
        ids, scores = sess.run(
            [sig.outputs["item_ids"].name, sig.outputs["scores"].name],
            feed_dict={sig.inputs["item_ids"].name: np.array(pad_rows(rows), dtype=object)},
        )
    return strs(ids), scores


def _history_holding_its_top_item(model):
    """A history whose unfiltered top-1 item is one of its own items (built by appending
    the top item until it is already there)."""
    history = ["item3"]
    while True:
        top = numpy_topk(numpy_scores(model, [history]), 1)[0][0, 0]
        if top in history:
            return history, top
        history.append(top)


def _info(version):
    return json.loads((version / "assets.extra" / serving.EXPORT_INFO_FILE).read_text())


def test_export_removes_history_items_by_default(trained, tmp_path):
    root, model = trained
    # The run was evaluated without exclusion (the evaluation protocol's default) ...
    run = tmp_path / "run"
    save_model_dir(model, VOCAB, run, TrainConfig(exclude_history=False))
    history, top = _history_holding_its_top_item(model)
    rows = [history, ["item1", "item7"]]

    # ... yet its export, with no flag, never returns an item of the request's history.
    version = serving.export_model_dir(run, tmp_path / "saved" / "recs", k=K)
    assert _info(version)["exclude_history"] is True
    ids, scores = _serve(version, rows)
    assert top not in ids[0] and not set(ids[0]) & set(history)
    want_ids, want_scores = numpy_topk(numpy_scores(model, rows, exclude_history=True), K)
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_allclose(scores, want_scores, atol=1e-5, rtol=0)

    # The Python API's default is the same.
    version = serving.export_model(model, VOCAB, tmp_path / "saved" / "api", k=K)
    assert _info(version)["exclude_history"] is True
    assert top not in _serve(version, rows)[0][0]


def test_cli_default_and_keep_history(trained, tmp_path):
    root, model = trained
    history, top = _history_holding_its_top_item(model)
    base = tmp_path / "saved" / "recs"
    assert main(["export", "--model", str(root / "model"), "--base-path", str(base),
                 "--k", str(K)]) == 0
    assert main(["export", "--model", str(root / "model"), "--base-path", str(base),
                 "--k", str(K), "--keep-history"]) == 0
    assert _info(base / "1")["exclude_history"] is True
    assert top not in _serve(base / "1", [history])[0][0]
    assert _info(base / "2")["exclude_history"] is False
    ids, _ = _serve(base / "2", [history])
    assert ids[0, 0] == top  # kept: the history's own top item comes back first
    # check-serving compares each with its recorded setting.
    assert main(["check-serving", str(base / "1")]) == 0
    assert main(["check-serving", str(base / "2")]) == 0

