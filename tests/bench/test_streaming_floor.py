"""scripts/streaming_latency.py: the pass-through "floor" export takes and returns exactly
the tensors of a real export's `step` (whatever order the signature lists them in)."""

import importlib.util
import sys
from pathlib import Path

import numpy as np

_SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
sys.path.insert(0, str(_SCRIPTS))
_spec = importlib.util.spec_from_file_location("streaming_latency",
                                               _SCRIPTS / "streaming_latency.py")
streaming_latency = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(streaming_latency)


def test_floor_export_passes_the_step_tensors_through(tmp_path):
    sl = streaming_latency
    export, vocab = sl.build_export("linrec", 8, 20, "from_start", 5, tmp_path)
    real = sl.Session(export)
    history = np.array([[b"3", b"7", b"9"]], dtype=object)
    state = {k: v for k, v in real.run("encode_state", {"item_ids": history}).items()
             if k != sl.USER}
    feeds = {**state, "item_ids": np.array([[b"4"]], dtype=object)}
    floor = sl.Session(sl.build_floor_export(real, tmp_path))
    assert floor.inputs["step"].keys() == real.inputs["step"].keys()
    assert floor.outputs["step"].keys() == real.outputs["step"].keys()
    out = floor.run("step", feeds)
    for name, value in state.items():  # every state tensor comes back unchanged
        np.testing.assert_array_equal(out[name], value)
    assert out[sl.USER].shape[0] == 1 and out["scores"].shape[0] == 1


def test_the_sliced_source_is_a_float_input_of_rank_two():
    import tensorflow as tf

    specs = {"block_0.count": tf.TensorSpec([None], tf.float32),
             "fingerprint": tf.TensorSpec([None], tf.int64),
             "newest_output": tf.TensorSpec([None, 4], tf.float32),
             "block_0.kv_sum": tf.TensorSpec([None, 2, 3, 3], tf.float32)}
    assert streaming_latency.passthrough_source(specs) == "block_0.kv_sum"
    del specs["block_0.kv_sum"]
    assert streaming_latency.passthrough_source(specs) == "newest_output"
