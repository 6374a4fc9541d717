"""tfrs_linear.serving.signatures: the exported signatures, as TF Serving and a loaded
SavedModel see them, against the independent NumPy oracles of tests.serving.common."""

import numpy as np
import pytest
import tensorflow as tf

from tests.serving.common import (
    CATALOGUE,
    K,
    MAX_LEN,
    ROWS,
    left_pad,
    numpy_scores,
    numpy_topk,
    pad_rows,
    strs,
)


def test_signatures_as_tf_serving_sees_them(exports):
    graph = tf.Graph()
    with graph.as_default(), tf.compat.v1.Session(graph=graph) as sess:
        meta = tf.compat.v1.saved_model.loader.load(sess, ["serve"], str(exports["v1"]))
    sigs = {k: v for k, v in meta.signature_def.items() if not k.startswith("__")}
    assert set(sigs) == {"serving_default", "encode", "serving_tf_example"}

    def spec(info):
        return tf.dtypes.as_dtype(info.dtype), [d.size for d in info.tensor_shape.dim]

    for name in ("serving_default", "encode"):
        assert list(sigs[name].inputs) == ["item_ids"]
        assert spec(sigs[name].inputs["item_ids"]) == (tf.string, [-1, -1])
    assert list(sigs["serving_tf_example"].inputs) == ["examples"]
    assert spec(sigs["serving_tf_example"].inputs["examples"]) == (tf.string, [-1])
    for name in ("serving_default", "serving_tf_example"):
        assert spec(sigs[name].outputs["item_ids"]) == (tf.string, [-1, K])
        assert spec(sigs[name].outputs["scores"]) == (tf.float32, [-1, K])
    assert set(sigs["encode"].outputs) == {"user_embedding"}
    assert spec(sigs["encode"].outputs["user_embedding"]) == (tf.float32, [-1, 16])
    for node in meta.graph_def.node:
        assert node.op not in {"PyFunc", "EagerPyFunc", "PyFuncStateless"}
    for fn in meta.graph_def.library.function:
        assert not ("_XlaMustCompile" in fn.attr and fn.attr["_XlaMustCompile"].b)


def test_serving_default_equals_numpy_topk(trained, exports):
    _, model = trained
    out = exports["l1"].signatures["serving_default"](item_ids=tf.constant(pad_rows(ROWS)))
    ids, scores = numpy_topk(numpy_scores(model, ROWS), K)
    np.testing.assert_array_equal(strs(out["item_ids"].numpy()), ids)
    np.testing.assert_allclose(out["scores"].numpy(), scores, atol=1e-5, rtol=0)


def test_truncation_keeps_the_newest_max_len(exports):
    fn = exports["l1"].signatures["serving_default"]
    long = [f"item{i}" for i in range(15)]
    full = fn(item_ids=tf.constant([long]))
    newest = fn(item_ids=tf.constant([long[-MAX_LEN:]]))
    np.testing.assert_array_equal(full["item_ids"].numpy(), newest["item_ids"].numpy())
    np.testing.assert_allclose(full["scores"].numpy(), newest["scores"].numpy(), atol=1e-6)
    # Padding "" in the middle or at the end does not change anything.
    padded = fn(item_ids=tf.constant([long[-MAX_LEN:] + ["", ""]]))
    np.testing.assert_allclose(padded["scores"].numpy(), newest["scores"].numpy(), atol=1e-6)


def test_exclude_history_and_catalogue_only(trained, exports):
    _, model = trained
    out = exports["l2"].signatures["serving_default"](item_ids=tf.constant(pad_rows(ROWS)))
    ids, scores = strs(out["item_ids"].numpy()), out["scores"].numpy()
    assert ids.shape == (len(ROWS), len(CATALOGUE))  # k = min(100, catalogue)
    ref = numpy_scores(model, ROWS, exclude_history=True)
    ref_ids, ref_scores = numpy_topk(ref, len(CATALOGUE))
    for r, row in enumerate(ROWS):
        assert sorted(ids[r]) == sorted(CATALOGUE)  # never [PAD]/[OOV], no repeats
        history = {v for v in row if v in CATALOGUE}  # all of it, beyond max_len too
        n = len(CATALOGUE) - len(history)
        np.testing.assert_array_equal(ids[r, :n], ref_ids[r, :n])
        np.testing.assert_allclose(scores[r, :n], ref_scores[r, :n], atol=1e-5, rtol=0)
        assert set(ids[r, n:]) == history and np.all(np.isneginf(scores[r, n:]))


def test_encode_signature(trained, exports):
    _, model = trained
    out = exports["l1"].signatures["encode"](item_ids=tf.constant(pad_rows(ROWS)))
    ref = model.encode(tf.constant(left_pad(ROWS)), training=False).numpy()
    np.testing.assert_allclose(out["user_embedding"].numpy(), ref, atol=1e-5, rtol=0)


def test_a_request_of_short_histories_gives_the_max_len_embeddings(trained, exports):
    """The signature encodes at the request's longest history (here 4 of 8 positions),
    not at max_len: the same embeddings, a row of "" too."""
    _, model = trained
    short = [row for row in ROWS if len(row) < MAX_LEN]
    assert max(len(row) for row in short) == 4
    out = exports["l1"].signatures["encode"](item_ids=tf.constant(pad_rows(short)))
    ref = model.encode(tf.constant(left_pad(short)), training=False).numpy()
    np.testing.assert_allclose(out["user_embedding"].numpy(), ref, atol=1e-5, rtol=0)
    empty = exports["l1"].signatures["encode"](item_ids=tf.constant([["", ""]]))
    ref = model.encode(tf.zeros([1, MAX_LEN], tf.int32), training=False).numpy()
    np.testing.assert_allclose(empty["user_embedding"].numpy(), ref, atol=1e-6, rtol=0)


def test_tf_example_equals_serving_default(exports):
    examples = []
    for row in ROWS:
        ex = tf.train.Example()
        ex.features.feature["item_ids"].bytes_list.value.extend(v.encode() for v in row)
        examples.append(ex.SerializeToString())
    sigs = exports["l1"].signatures
    a = sigs["serving_tf_example"](examples=tf.constant(examples))
    b = sigs["serving_default"](item_ids=tf.constant(pad_rows(ROWS)))
    np.testing.assert_array_equal(a["item_ids"].numpy(), b["item_ids"].numpy())
    np.testing.assert_allclose(a["scores"].numpy(), b["scores"].numpy(), atol=1e-6)


def test_wrong_dtype_or_rank_errors_clearly(exports):
    sigs = exports["l1"].signatures
    with pytest.raises(tf.errors.InvalidArgumentError, match="expected to be a string tensor"):
        sigs["serving_default"](item_ids=tf.constant([[3, 4]]))
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"serving_default: input item_ids must be a string matrix \[batch, length\].*got a tensor of shape\] \[2\]"):
        sigs["serving_default"](item_ids=tf.constant(["item1", "item2"]))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"encode: input item_ids .*\(rank 2\)"):
        sigs["encode"](item_ids=tf.constant([[["item1"]]]))
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"serving_tf_example: input examples must be a string vector"):
        sigs["serving_tf_example"](examples=tf.constant([["x"]]))
    # The restored tf.function checks its input signature before running anything.
    with pytest.raises((TypeError, ValueError), match="item_ids"):
        exports["l1"].serving_default(tf.constant([3, 4]))
