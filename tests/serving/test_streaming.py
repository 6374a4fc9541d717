"""The streaming signatures ``encode_state`` and ``step`` as TF Serving runs them (a TF1
session on the ``serve`` tag, tensors by name), against the export's own
``serving_default`` and the independent NumPy oracles of tests.serving.common."""

import json

import numpy as np
import pytest
import tensorflow as tf

from tests.serving.common import CATALOGUE, INDEX, K, VOCAB, numpy_scores, numpy_topk, strs
from tests.serving.conftest import STREAM_R
from tfrs_linear import serving
from tfrs_linear.serving.streaming import DEFAULT_STREAM_HISTORY, STREAM_SIGNATURES
from tfrs_linear.serving.wire import EXPORT_INFO_FILE, SIGNATURES


class Served:
    """One export loaded as TF Serving's SavedModelBundle does; :meth:`run` feeds a
    signature's inputs by tensor name and returns its outputs by name."""

    def __init__(self, version):
        self.graph = tf.Graph()
        with self.graph.as_default():
            self.session = tf.compat.v1.Session(graph=self.graph)
            self.meta = tf.compat.v1.saved_model.loader.load(self.session, ["serve"],
                                                             str(version))
        self.signatures = {k: v for k, v in self.meta.signature_def.items()
                           if not k.startswith("__")}
        self.info = json.loads((version / "assets.extra" / EXPORT_INFO_FILE).read_text())

    def run(self, name, **inputs):
        """``item_ids``: rows of raw ids of any lengths (right-padded with "" here)."""
        sig = self.signatures[name]
        feed = {sig.inputs[k].name: np.asarray(_padded(v), object) if k == "item_ids" else v
                for k, v in inputs.items()}
        keys = sorted(sig.outputs)
        with self.graph.as_default():
            values = self.session.run([sig.outputs[k].name for k in keys], feed_dict=feed)
        return dict(zip(keys, values))


@pytest.fixture(scope="module")
def served(stream_exports):
    out = {name: Served(e["version"]) for name, e in stream_exports.items()}
    yield out
    for s in out.values():
        s.session.close()


def _state(outputs):
    return {k: v for k, v in outputs.items() if k not in ("user_embedding", "item_ids", "scores")}


def _padded(rows):
    width = max(1, max(len(r) for r in rows))
    return [list(r) + [""] * (width - len(r)) for r in rows]


def test_signatures_as_tf_serving_sees_them(served):
    def spec(info):
        return tf.dtypes.as_dtype(info.dtype), [d.size for d in info.tensor_shape.dim]

    for name, r in (("linrec", STREAM_R), ("elastic", 0)):
        sigs = served[name].signatures
        assert set(sigs) == set(SIGNATURES) | set(STREAM_SIGNATURES)
        encode_state, step = sigs["encode_state"], sigs["step"]
        assert list(encode_state.inputs) == ["item_ids"]
        assert spec(encode_state.inputs["item_ids"]) == (tf.string, [-1, -1])
        state = set(encode_state.outputs) - {"user_embedding"}
        assert {"fingerprint", "recent_items", "count", "newest_output"} <= state
        # step takes exactly encode_state's outputs but user_embedding, plus item_ids.
        assert set(step.inputs) == state | {"item_ids"}
        assert set(step.outputs) == state | {"user_embedding", "item_ids", "scores"}
        for key in state:
            assert spec(step.inputs[key])[0] == tf.dtypes.as_dtype(encode_state.outputs[key].dtype)
        assert spec(step.inputs["fingerprint"]) == (tf.int64, [-1])
        assert spec(step.inputs["recent_items"]) == (tf.int32, [-1, r])
        assert spec(step.inputs["newest_output"]) == (tf.float32, [-1, 16])
        assert spec(step.outputs["item_ids"]) == (tf.string, [-1, K])
        assert spec(step.outputs["scores"]) == (tf.float32, [-1, K])


def _random_rows(rng, lengths):
    return [list(rng.choice(CATALOGUE, size=n, replace=True)) for n in lengths]


@pytest.mark.parametrize("attention", ["linrec", "elastic"])
def test_steps_equal_serving_default_on_the_whole_history(stream_exports, served, attention):
    """encode_state, then one event per step: every step's top-k is serving_default's on
    the concatenated history, and both are the NumPy oracle's (histories within max_len
    and within R, so both exclude the same items)."""
    s, model = served[attention], stream_exports[attention]["model"]
    exclude = s.info["exclude_history"]
    rng = np.random.default_rng(3)
    history = _random_rows(rng, [1, 2, 1]) + [["nope", "item4"]]  # an unknown id
    state = _state(s.run("encode_state", item_ids=history))
    for _ in range(3):
        new = _random_rows(rng, [1, 1, 1, 1])
        history = [h + n for h, n in zip(history, new)]
        out = s.run("step", item_ids=new, **state)
        state = _state(out)
        full = s.run("serving_default", item_ids=history)
        np.testing.assert_array_equal(out["item_ids"], full["item_ids"])
        np.testing.assert_allclose(out["scores"], full["scores"], atol=1e-5, rtol=0)
        ids, scores = numpy_topk(numpy_scores(model, history, exclude_history=exclude), K)
        np.testing.assert_array_equal(strs(out["item_ids"]), ids)
        np.testing.assert_allclose(out["scores"], scores, atol=1e-5, rtol=0)
        encoded = s.run("encode", item_ids=history)["user_embedding"]
        np.testing.assert_allclose(out["user_embedding"], encoded, atol=1e-5, rtol=0)
    assert np.array_equal(state["count"], [4, 5, 4, 5])  # at most R = 5 events


@pytest.mark.parametrize("attention", ["linrec", "elastic"])
def test_one_event_and_several_events_per_call_give_the_same_state(served, attention):
    """``step`` has two routes: one event per row (traced with m = 1: broadcast products,
    no sort) and several (the general form, a separate function). Two events per call
    give what one event per call twice gives, and serving_default's top-k."""
    s = served[attention]
    history = [["item1", "item2"], ["item3", "item9", "item5"], ["item4"]]
    state = _state(s.run("encode_state", item_ids=history))
    new = [["item7", "item8"], ["item6", ""], ["", ""]]
    both = s.run("step", item_ids=new, **state)
    one = s.run("step", item_ids=[r[:1] for r in new], **state)
    one = s.run("step", item_ids=[r[1:] for r in new], **_state(one))
    for name in sorted(_state(both)):
        np.testing.assert_allclose(both[name], one[name], atol=1e-5, rtol=1e-5, err_msg=name)
    np.testing.assert_allclose(both["user_embedding"], one["user_embedding"], atol=1e-5)
    np.testing.assert_array_equal(both["item_ids"], one["item_ids"])
    full = s.run("serving_default", item_ids=[h + [x for x in n if x]
                                              for h, n in zip(history, new)])
    np.testing.assert_array_equal(both["item_ids"], full["item_ids"])
    assert both["count"].tolist() == [4, 4, 1]


def test_a_row_without_new_events_keeps_its_state(served):
    s = served["linrec"]
    history = [["item1", "item2"], ["item3", "item9", "item5"]]
    first = s.run("encode_state", item_ids=history)
    out = s.run("step", item_ids=[["item7"], [""]], **_state(first))
    for name, value in _state(first).items():
        np.testing.assert_array_equal(out[name][1], value[1], err_msg=name)
    assert out["count"].tolist() == [3, 3]
    assert not np.array_equal(out["newest_output"][0], first["newest_output"][0])
    np.testing.assert_array_equal(out["user_embedding"][1], first["user_embedding"][1])
    full = s.run("serving_default", item_ids=[history[0] + ["item7"], history[1]])
    np.testing.assert_array_equal(out["item_ids"], full["item_ids"])


def test_a_state_of_another_export_is_refused(served):
    s, other = served["linrec"], served["elastic"]
    assert s.info["fingerprint"] != other.info["fingerprint"]
    state = _state(s.run("encode_state", item_ids=[["item1"], ["item2"]]))
    state["fingerprint"] = np.full([2], other.info["fingerprint"], np.int64)
    with pytest.raises(tf.errors.InvalidArgumentError, match="made by another export") as err:
        s.run("step", item_ids=[["item3"], ["item4"]], **state)
    assert "Call encode_state" in str(err.value)


def test_a_state_tensor_of_a_wrong_shape_is_refused_naming_it(served):
    s = served["linrec"]
    state = _state(s.run("encode_state", item_ids=[["item1"], ["item2"]]))
    # Another batch size in one tensor: refused at run time (what TF Serving runs).
    bad = dict(state, count=np.zeros([3], np.float32))
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"each state tensor must be .*\(count \[batch\] \+ \[\], ") as err:
        s.run("step", item_ids=[["item3"], ["item4"]], **bad)
    # The tensors are flagged in the message's order: count, the first, is the wrong one.
    flags = str(err.value).split("in that order:]")[1].split("[got")[0]
    flags = flags.replace("[", " ").replace("]", " ").split()
    assert flags == ["0"] + ["1"] * (len(state) - 1)
    # recent_items of an export with another R: refused naming the tensor.
    bad = dict(state, recent_items=np.zeros([2, STREAM_R + 1], np.int32))
    with pytest.raises(ValueError, match="step_recent_items"):
        s.run("step", item_ids=[["item3"], ["item4"]], **bad)


def test_history_exclusion_keeps_the_newest_r_items(stream_exports, served):
    """With R = 5 an item among the user's newest 5 never comes back; an older one can
    (the state does not grow with the history): served top-k = the oracle's with only
    the newest R items excluded."""
    s, model = served["linrec"], stream_exports["linrec"]["model"]
    middle = ["item1", "item2", "item3", "item4", "item5"]
    firsts = [c for c in CATALOGUE if c not in middle + ["item6"]]
    history = [[first] + middle for first in firsts]  # 6 events, then 7 (R = 5)
    state = _state(s.run("encode_state", item_ids=history))
    out = s.run("step", item_ids=[["item6"]] * len(firsts), **state)
    full = [h + ["item6"] for h in history]
    np.testing.assert_array_equal(out["recent_items"],
                                  [[INDEX[v] for v in f[-STREAM_R:]] for f in full])
    scores = numpy_scores(model, full)
    scores[:, [INDEX[v] for v in full[0][-STREAM_R:]]] = -np.inf  # the newest R only
    ids, ref = numpy_topk(scores, K)
    np.testing.assert_array_equal(strs(out["item_ids"]), ids)
    np.testing.assert_allclose(out["scores"], ref, atol=1e-5, rtol=0)
    served_ids = strs(out["item_ids"])
    assert not set(served_ids.ravel()) & set(full[0][-STREAM_R:])
    back = [r for r, f in enumerate(full) if set(f[:-STREAM_R]) & set(served_ids[r])]
    assert back, "no older item came back in any row"
    # serving_default gets the whole history, so it never returns any of it.
    dense = strs(s.run("serving_default", item_ids=full)["item_ids"])
    assert all(not set(full[r]) & set(dense[r]) for r in back)


def test_export_info_records_stream_history_and_fingerprint(stream_exports, served, exports):
    linrec, elastic = served["linrec"].info, served["elastic"].info
    assert linrec["stream_history"] == STREAM_R and elastic["stream_history"] == 0
    assert not elastic["exclude_history"]
    for name, s in served.items():
        out = s.run("encode_state", item_ids=[["item1"], []])
        np.testing.assert_array_equal(out["fingerprint"], [s.info["fingerprint"]] * 2)
        assert out["recent_items"].shape == (2, s.info["stream_history"])
        assert s.info["signatures"] == list(SIGNATURES) + list(STREAM_SIGNATURES)
    # Not streamable (positions from_end): no streaming part.
    plain = json.loads((exports["v1"] / "assets.extra" / EXPORT_INFO_FILE).read_text())
    assert plain["signatures"] == list(SIGNATURES)
    assert "stream_history" not in plain and "fingerprint" not in plain
    assert DEFAULT_STREAM_HISTORY == 100


def test_a_from_end_export_has_no_streaming_signature(exports):
    graph = tf.Graph()
    with graph.as_default(), tf.compat.v1.Session(graph=graph) as sess:
        meta = tf.compat.v1.saved_model.loader.load(sess, ["serve"], str(exports["v1"]))
    assert not set(meta.signature_def) & set(STREAM_SIGNATURES)


def test_every_encode_state_route_of_an_export_gives_the_same_state(stream_exports, served,
                                                                     tmp_path):
    """The encoder's one-pass budget is baked into an export. Lowered to 6 events before
    exporting, the export's encode_state (a TF1 session, as TF Serving runs it) takes its
    run-time routes: 2 rows x 5 events go in groups of one row, a row of 8 events takes
    the step loop. Each gives the default export's one-pass state (every running sum as
    sum + compensation), embedding and fingerprint."""
    model = stream_exports["elastic"]["model"]
    encoder = model.encoder
    encoder.max_parallel_events = 6
    try:
        version = serving.export_model(model, VOCAB, tmp_path / "small", k=K,
                                       exclude_history=False)
    finally:
        encoder.max_parallel_events = type(encoder).max_parallel_events
    small, default = Served(version), served["elastic"]
    rng = np.random.default_rng(9)
    for lengths in ([5, 5], [8, 3]):
        history = _random_rows(rng, lengths)
        got, want = (s.run("encode_state", item_ids=history) for s in (small, default))
        assert set(got) == set(want)
        for name in want:
            if name.endswith("_comp"):
                continue
            comp = name + "_comp"
            np.testing.assert_allclose(got[name] + got.get(comp, 0),
                                       want[name] + want.get(comp, 0),
                                       rtol=1e-4, atol=1e-5, err_msg=f"{name}, {lengths}")
    small.session.close()
