"""scripts/native_timer.py + session_run_timer.c: the C timer feeds exactly the given
tensors (checked inside the timed signature), runs each point in its rounds, and names
what is wrong when a spec or a call is bad."""

import importlib.util
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

_PATH = Path(__file__).resolve().parents[2] / "scripts" / "native_timer.py"
_spec = importlib.util.spec_from_file_location("native_timer", _PATH)
native_timer = importlib.util.module_from_spec(_spec)
sys.modules["native_timer"] = native_timer
_spec.loader.exec_module(native_timer)

pytestmark = pytest.mark.skipif(
    shutil.which("cc") is None and shutil.which("gcc") is None,
    reason="the native timer needs a C compiler (cc or gcc)")

FLOATS = np.arange(6, dtype=np.float32).reshape([2, 3]) / 7
INTS = np.array([[3, -1]], np.int64)
WORDS = np.array([[b"a", b""], [b"\xc3\xa9t\xc3\xa9", b"x" * 300]], dtype=object)


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    """A SavedModel whose signature fails unless its feeds equal the arrays above."""
    root = tmp_path_factory.mktemp("native_timer")

    def checked(x, i, s):
        checks = [tf.debugging.assert_equal(x, tf.constant(FLOATS)),
                  tf.debugging.assert_equal(i, tf.constant(INTS)),
                  tf.debugging.assert_equal(s, tf.constant(WORDS.astype(bytes)))]
        with tf.control_dependencies(checks):
            return {"y": x * 2.0, "n": tf.strings.length(s)}

    module = tf.Module()
    module.f = tf.function(checked, input_signature=[
        tf.TensorSpec([None, 3], tf.float32, name="x"),
        tf.TensorSpec([None, 2], tf.int64, name="i"),
        tf.TensorSpec([None, 2], tf.string, name="s")])
    tf.saved_model.save(module, str(root / "m"), signatures=module.f.get_concrete_function())
    timer = native_timer.compile_timer(root)
    return root, timer


def _names(root):
    loaded = tf.compat.v1.saved_model.loader
    with tf.Graph().as_default(), tf.compat.v1.Session() as sess:
        sig = loaded.load(sess, ["serve"], str(root / "m")).signature_def["serving_default"]
        return ({k: v.name for k, v in sig.inputs.items()},
                [v.name for v in sig.outputs.values()])


def test_times_each_point_in_its_rounds_with_the_exact_feeds(export, tmp_path):
    root, timer = export
    inputs, outputs = _names(root)
    feeds = {inputs["x"]: FLOATS, inputs["i"]: INTS, inputs["s"]: WORDS}
    points = {"all-rounds": (0, feeds, outputs, range(5)), "two": (0, feeds, outputs[:1], [1, 4]),
              "bursts": (1, feeds, outputs, [0, 3], 4)}
    times = native_timer.time_points(timer, [root / "m", root / "m"], points, 5, tmp_path,
                                     inter_op=1, intra_op=2)
    assert sorted(times) == ["all-rounds", "bursts", "two"]
    assert len(times["all-rounds"]) == 5 and len(times["two"]) == 2
    assert len(times["bursts"]) == 8  # 4 calls in a row in each of its 2 rounds
    assert all(0 < t < 10 for t in times["all-rounds"] + times["two"] + times["bursts"])
    with pytest.raises(ValueError, match="burst must be >= 1"):
        native_timer.time_points(timer, [root / "m"], {"p": (0, feeds, outputs, [0], 0)}, 1,
                                 tmp_path)


def test_the_calling_thread_config_is_taken_and_other_negatives_refused(export, tmp_path):
    # inter_op -1 (every op in the calling thread) is a ten-byte varint in the session's
    # ConfigProto: a malformed one fails TF_SetConfig ("session config").
    root, timer = export
    inputs, outputs = _names(root)
    feeds = {inputs["x"]: FLOATS, inputs["i"]: INTS, inputs["s"]: WORDS}
    times = native_timer.time_points(timer, [root / "m"], {"p": (0, feeds, outputs, [0, 1])},
                                     2, tmp_path, inter_op=-1, intra_op=1)
    assert len(times["p"]) == 2
    with pytest.raises(RuntimeError, match="threads"):
        native_timer.time_points(timer, [root / "m"], {"p": (0, feeds, outputs, [0])}, 1,
                                 tmp_path, inter_op=-2)


def test_a_wrong_feed_fails_the_call_and_says_so(export, tmp_path):
    root, timer = export
    inputs, outputs = _names(root)
    feeds = {inputs["x"]: FLOATS + 1, inputs["i"]: INTS, inputs["s"]: WORDS}
    with pytest.raises(RuntimeError, match="assert|Assert|Condition"):
        native_timer.time_points(timer, [root / "m"], {"p": (0, feeds, outputs, [0])}, 1,
                                 tmp_path)


def test_an_unknown_tensor_is_named(export, tmp_path):
    root, timer = export
    _, outputs = _names(root)
    feeds = {"no_such_op:0": FLOATS}
    with pytest.raises(RuntimeError, match="no such operation in the graph: no_such_op:0"):
        native_timer.time_points(timer, [root / "m"], {"p": (0, feeds, outputs, [0])}, 1,
                                 tmp_path)


def test_bad_labels_and_dtypes_are_refused_before_running(export, tmp_path):
    root, timer = export
    with pytest.raises(ValueError, match="one word"):
        native_timer.time_points(timer, [root / "m"], {"a b": (0, {}, [], [0])}, 1, tmp_path)
    with pytest.raises(TypeError, match="float16"):
        native_timer.time_points(timer, [root / "m"],
                                 {"p": (0, {"x:0": np.zeros(2, np.float16)}, [], [0])}, 1,
                                 tmp_path)
