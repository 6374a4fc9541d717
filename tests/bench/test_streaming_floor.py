"""scripts/streaming_latency.py: the pass-through "floor" export slices its extra outputs
from a float input of rank >= 2, whatever order the `step` signature lists its inputs in
(a real export's whole floor round trip was checked by hand; as a test it took half a
minute of the suite's budget)."""

import importlib.util
import sys
from pathlib import Path

_SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
sys.path.insert(0, str(_SCRIPTS))
_spec = importlib.util.spec_from_file_location("streaming_latency",
                                               _SCRIPTS / "streaming_latency.py")
streaming_latency = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(streaming_latency)


def test_the_sliced_source_is_a_float_input_of_rank_two():
    import tensorflow as tf

    specs = {"block_0.count": tf.TensorSpec([None], tf.float32),
             "fingerprint": tf.TensorSpec([None], tf.int64),
             "newest_output": tf.TensorSpec([None, 4], tf.float32),
             "block_0.kv_sum": tf.TensorSpec([None, 2, 3, 3], tf.float32)}
    assert streaming_latency.passthrough_source(specs) == "block_0.kv_sum"
    del specs["block_0.kv_sum"]
    assert streaming_latency.passthrough_source(specs) == "newest_output"


def test_the_report_names_the_server_environment_of_a_run():
    # A run records LD_PRELOAD / TF_ENABLE_ONEDNN_OPTS when set (they change the times,
    # not the exports); its page says so, and a run without them says nothing.
    import json

    import streaming_report

    result = json.loads((_SCRIPTS.parent / "docs/serving/streaming-native.json").read_text())
    assert "Environment:" not in streaming_report.report(result)
    result["environment"] = {"LD_PRELOAD": "/lib/libtcmalloc_minimal.so.4",
                             "TF_ENABLE_ONEDNN_OPTS": "0"}
    page = streaming_report.report(result)
    assert ("Environment: `LD_PRELOAD=/lib/libtcmalloc_minimal.so.4`, "
            "`TF_ENABLE_ONEDNN_OPTS=0`.") in page
    assert streaming_latency.server_environment(
        {"LD_PRELOAD": "/lib/libjemalloc.so.2", "TF_ENABLE_ONEDNN_OPTS": "", "PATH": "/bin"}
    ) == {"LD_PRELOAD": "/lib/libjemalloc.so.2"}


def test_the_schedule_keeps_each_point_within_its_seconds():
    """Bursts of up to 20 calls, fewer for a slower point, then fewer rounds (hand-worked:
    a 46 ms call gets floor(30 / (0.046 * 40)) = 16 calls in each of 40 rounds)."""
    warm = {"fast": 0.001, "mid": 0.046, "slow": 3.6}
    plan, bursts = streaming_latency.schedule(warm, rounds=40, min_reps=2, seconds=30, burst=20)
    assert bursts == {"fast": 20, "mid": 16, "slow": 1}
    assert len(plan["fast"]) == len(plan["mid"]) == 40
    assert sorted(plan["slow"]) == [0, 6, 11, 17, 22, 28, 33, 39]  # 8 rounds, spread out
    assert streaming_latency.schedule(warm, 40, 2, 30)[1] == {"fast": 1, "mid": 1, "slow": 1}


def test_the_latency_table_gives_the_first_calls_of_bursts():
    import streaming_report

    rows = [{"attention": "linrec", "history": 200, "batch": 1, "signature": sig, "n": 800,
             "p50_ms": p50, "p99_ms": 2 * p50, "first_p50_ms": 3 * p50}
            for sig, p50 in (("step", 0.5), ("serving_default", 50.0))]
    table = streaming_report.latency_table({"rows": rows, "burst": 20})
    assert "first call" in table[0]
    assert table[2] == "| LinRec | 200 | 1 | 0.50 / 1.00 | 50.0 / 100 | 100× / 100× | 1.50 | 800 / 800 |"
    old = streaming_report.latency_table({"rows": rows})  # a run from before bursts
    assert "first call" not in old[0] and old[2].endswith("| 100× / 100× | 800 / 800 |")
