"""Streaming latency: the exported ``step`` signature against re-encoding the history.

For each streamable attention (LinRec, causal ELASTIC; ``positions="from_start"``, the
other fields at ``ModelConfig``'s defaults: d_model 64, 2 layers, 2 heads) and each
history length L (200, 2,000, 20,000) this builds a model with ``max_len = L``
(untrained weights: latency does not depend on them, see the report), exports it with
``tfrs_linear.serving.export_model`` into a temporary folder (or ``--export-dir``, where
later runs reuse it: exporting takes minutes), loads the SavedModel in a
TF1 ``Session`` on the ``serve`` tag (as TF Serving's SavedModelBundle does) and times
three signatures, each through a ``Session.make_callable`` on its tensor names (one C++
``Session::Run`` per call, as TF Serving makes it, without ``feed_dict``'s Python work):

* ``step``: the state ``encode_state`` made of an L-event history plus ONE new event
  per user (``item_ids`` ``[B, 1]``): the streaming request;
* ``serving_default``: the L-event history (``[B, L]``), re-encoded as a whole: the
  request a service without a state sends on every event;
* ``encode_state``: the same history (``[B, L]``): the first call of a user (batch 1
  only by default, ``--encode-batches``: at batch 64 and 20,000 events one call takes
  minutes).

Batch sizes 1 and 64. The points are interleaved round-robin over repeated rounds so
that load changes of the shared machine hit all of them alike; a slow point runs in
fewer rounds (at least ``--min-reps``, at most ``--seconds-per-point`` of measured time),
spread evenly over the rounds. The 1-minute load average is recorded every round.
Also reported: the state's bytes per user (from ``encode_state``'s outputs) against a
softmax KV cache of the same length (layers x 2 (K, V) x L x d_model x 4 bytes).
Writes ``streaming.md``, ``streaming.json`` and ``streaming.png`` into ``--out``.

``--timer native`` times the same points from C instead (``scripts/native_timer.py``,
``scripts/session_run_timer.c``: TensorFlow's C API, one ``TF_SessionRun`` per call, no
Python in the timed call; the Python timer's per-call conversions of the feeds and
fetches cost about as much as a whole batch-1 ``step``) and writes
``streaming-native.*``. It compiles the timer with the system's C compiler.

    .venv/bin/python scripts/streaming_latency.py                  # docs/serving/streaming.*
    .venv/bin/python scripts/streaming_latency.py --timer native   # streaming-native.*
    .venv/bin/python scripts/streaming_latency.py --lengths 50,200 --items 500 --out runs/s
    .venv/bin/python scripts/streaming_latency.py --from-json docs/serving/streaming.json
"""

import argparse
import datetime
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import tfrs_linear  # noqa: F401  (Keras 2 before TensorFlow is used)
import tensorflow as tf

from tfrs_linear import serving
from tfrs_linear.config import ModelConfig
from tfrs_linear.constants import NUM_RESERVED, OOV, PAD
from tfrs_linear.models import SequentialRetrievalModel
from tfrs_linear.serving.streaming import STATE_FINGERPRINT, STATE_RECENT
from native_timer import compile_or_exit, time_points
from streaming_report import write_outputs

SIGNATURES = ("step", "serving_default", "encode_state")
# Environment variables of a server that change its latency (recorded with each run):
# the allocator preloaded in place of glibc's malloc, TensorFlow's oneDNN kernels.
SERVER_ENVIRONMENT = ("LD_PRELOAD", "TF_ENABLE_ONEDNN_OPTS")


def server_environment(environ):
    """The :data:`SERVER_ENVIRONMENT` variables set (non-empty) in ``environ``."""
    return {k: environ[k] for k in SERVER_ENVIRONMENT if environ.get(k)}
TIMERS = ("python", "native")  # how each call is made (main's --timer)
USER = "user_embedding"


def build_export(attention, max_len, items, positions, k, root):
    """Exports an untrained streamable model under ``root`` (or reuses the export a
    previous run left there); returns (export dir, vocabulary)."""
    config = ModelConfig(attention=attention, max_len=max_len, positions=positions)
    if not config.is_streamable:
        raise ValueError(f"{attention} with positions={positions} is not streamable")
    vocab = [PAD, OOV] + [str(i) for i in range(1, items + 1)]
    path = Path(root) / f"{attention}-{positions}-items{items}-k{k}-len{max_len}"
    versions = serving.numeric_versions(path)
    if versions:
        return path / str(versions[-1]), vocab
    model = SequentialRetrievalModel(config, len(vocab)).build_all()
    return serving.export_model(model, vocab, path, k=k), vocab


class Session:
    """A SavedModel loaded as TF Serving loads it; runs a signature fed by name."""

    def __init__(self, export_dir):
        self.graph = tf.Graph()
        self.sess = tf.compat.v1.Session(graph=self.graph)
        self.export_dir = Path(export_dir)
        meta = tf.compat.v1.saved_model.loader.load(self.sess, ["serve"], str(export_dir))
        self.meta = meta
        self.inputs, self.outputs, self.callables = {}, {}, {}
        for name in SIGNATURES:
            if name not in meta.signature_def:
                continue  # the floor export has `step` only
            sig = meta.signature_def[name]
            self.inputs[name] = {k: v.name for k, v in sig.inputs.items()}
            self.outputs[name] = {k: v.name for k, v in sig.outputs.items()}

    def run(self, signature, feeds):
        """Runs ``signature`` through a callable made once per (signature, feed names):
        one C++ ``Session::Run`` on tensor names, as TF Serving's SavedModelBundle calls
        it, without ``feed_dict``'s per-call Python work (about 2 ms at 17 state tensors)."""
        keys = tuple(sorted(feeds))
        if (signature, keys) not in self.callables:
            self.callables[signature, keys] = self.sess.make_callable(
                list(self.outputs[signature].values()),
                feed_list=[self.inputs[signature][k] for k in keys])
        values = self.callables[signature, keys](*[feeds[k] for k in keys])
        return dict(zip(self.outputs[signature], values))


FLOOR = "floor"  # the pass-through export's key in the sessions and points


def passthrough_source(specs):
    """The input the floor export slices its other outputs from: the first float input
    of rank >= 2 by name (the slices are ``[batch, 1]``). A signature lists its inputs
    in no fixed order, and some state tensors are ``[batch]`` only."""
    return next(k for k, v in sorted(specs.items())
                if v.dtype == tf.float32 and v.shape.rank >= 2)


def build_floor_export(session, root):
    """The per-call floor: a SavedModel whose ``step`` signature has the same inputs and
    outputs (names, dtypes, shapes) as ``session``'s ``step`` and only passes the state
    through (an output that is no input is a slice of the first float input): what one
    ``Session::Run`` with that many tensors costs on this machine, before any model op."""
    inputs = session.meta.signature_def["step"].inputs
    outputs = session.meta.signature_def["step"].outputs
    specs = {k: tf.TensorSpec([None] + [d.size if d.size >= 0 else None
                                        for d in v.tensor_shape.dim][1:],
                              tf.as_dtype(v.dtype), name=k) for k, v in inputs.items()}
    first = passthrough_source(specs)

    def passthrough(feeds):
        out = {}
        for name, info in outputs.items():
            if name in feeds:
                out[name] = tf.identity(feeds[name])
            elif tf.as_dtype(info.dtype) == tf.string:
                out[name] = tf.identity(feeds["item_ids"])
            else:
                out[name] = feeds[first][:, :1]
        return out

    module = tf.Module()
    module.step = tf.function(passthrough, input_signature=[specs])
    path = Path(root) / "floor"
    tf.saved_model.save(module, str(path),
                        signatures={"step": module.step.get_concrete_function()})
    return path


def make_points(sessions, vocabs, batches, encode_batches, rng):
    """Every timed point: ``{(attention, L, B, signature): feeds}``, plus the states.

    ``serving_default`` gets ``B`` different random histories. ``step`` gets the state
    ``encode_state`` made of the first one, repeated ``B`` times: ``step`` runs the same
    dense ops whatever the state's values, and encoding 64 histories of 20,000 events
    would take longer than the whole measurement."""
    points, states = {}, {}
    for (attention, length), session in sessions.items():
        catalogue = np.array(vocabs[attention, length][NUM_RESERVED:], dtype=object)
        histories = rng.choice(catalogue, size=(max(batches), length)).astype(bytes)
        encoded = session.run("encode_state", {"item_ids": histories[:1]})
        state = {k: v for k, v in encoded.items() if k != USER}
        states[attention, length] = state
        for batch in batches:
            new = rng.choice(catalogue, size=(batch, 1)).astype(bytes)
            tiled = {k: np.repeat(v, batch, axis=0) for k, v in state.items()}
            points[attention, length, batch, "step"] = {**tiled, "item_ids": new}
            points[attention, length, batch, "serving_default"] = {
                "item_ids": histories[:batch]}
            if batch in encode_batches:
                points[attention, length, batch, "encode_state"] = {
                    "item_ids": histories[:batch]}
    return points, states


def warm_up(sessions, points):
    """Runs every point once or twice; returns its last time (seconds)."""
    last = {}
    for key, feeds in points.items():
        session = sessions[key[0], key[1]]
        for _ in range(2):
            t0 = time.perf_counter()
            session.run(key[3], feeds)
            last[key] = time.perf_counter() - t0
            if last[key] > 5.0:  # one-time costs are paid; the second call would cost minutes
                break
    return last


def schedule(warm, rounds, min_reps, seconds, burst=1):
    """``({point: set of rounds}, {point: calls per round})``: up to ``rounds`` rounds of
    up to ``burst`` calls in a row, fewer for a slow point (at most ``seconds`` of
    expected time: first fewer calls per round, then fewer rounds, never below
    ``min_reps`` rounds of one call), the rounds spread over the whole run."""
    plan, bursts = {}, {}
    for key, t in warm.items():
        t = max(t, 1e-9)
        calls = int(max(1, min(burst, math.floor(seconds / (t * rounds)))))
        reps = int(max(min_reps, min(rounds, math.floor(seconds / (t * calls)))))
        reps = min(reps, rounds)
        plan[key] = set(np.linspace(0, rounds - 1, reps).round().astype(int).tolist())
        bursts[key] = calls
    return plan, bursts


def measure(sessions, points, plan, rounds, bursts=None):
    """Round-robin timing; returns ``({point: [seconds]}, [1-min load per round])``.
    ``bursts``: calls in a row per round of each point (default 1), each timed."""
    times = {key: [] for key in points}
    loads = []
    for r in range(rounds):
        loads.append(os.getloadavg()[0])
        for key, feeds in points.items():
            if r not in plan[key]:
                continue
            session = sessions[key[0], key[1]]
            for _ in range((bursts or {}).get(key, 1)):
                t0 = time.perf_counter()
                session.run(key[3], feeds)
                times[key].append(time.perf_counter() - t0)
        if r % 5 == 4 or r == rounds - 1:
            print(f"round {r + 1}/{rounds} done, load {loads[-1]:.2f}", flush=True)
    return times, loads


def measure_native(timer, sessions, points, plan, rounds, scratch, threads=(0, 0),
                   bursts=None):
    """:func:`measure` through the C timer (``native_timer``): every export loaded once
    in one C process, the same points, rounds and interleaving, each call one
    ``TF_SessionRun``; returns ``({point: [seconds]}, [1-min load before, after])``.
    ``threads``: the sessions' (inter-op, intra-op) thread pools, 0 = TensorFlow's
    default, inter-op -1 = every op in the calling thread (TF Serving's
    ``--tensorflow_inter_op_parallelism`` and ``--tensorflow_intra_op_parallelism``).
    ``bursts``: calls in a row per round of each point (default 1)."""
    keys = list(dict.fromkeys((k[0], k[1]) for k in points))
    native, labels = {}, {}
    for key, feeds in points.items():
        session = sessions[key[:2]]
        signature = key[3]
        label = ".".join(str(part) for part in key)
        labels[key] = label
        native[label] = (keys.index(key[:2]),
                         {session.inputs[signature][k]: v for k, v in feeds.items()},
                         list(session.outputs[signature].values()), plan[key],
                         (bursts or {}).get(key, 1))
    loads = [os.getloadavg()[0]]
    print(f"native timer: {len(points)} points over {len(keys)} exports", flush=True)
    got = time_points(timer, [sessions[k].export_dir for k in keys], native, rounds, scratch,
                      *threads)
    loads.append(os.getloadavg()[0])
    return {key: got[label] for key, label in labels.items()}, loads


def state_bytes(state):
    """Bytes per user of a state batch: (model float tensors, fingerprint + recent items)."""
    model = sum(v.nbytes for k, v in state.items() if k not in (STATE_FINGERPRINT, STATE_RECENT))
    extra = sum(state[k].nbytes for k in (STATE_FINGERPRINT, STATE_RECENT))
    batch = len(state[STATE_FINGERPRINT])
    return model // batch, extra // batch


def summarise(times, states, config, loads, args, started, wall, setup, bursts=None):
    """The JSON record of a run (``bursts``: each point's calls in a row per round)."""
    rows, floor = [], None
    for key, t in times.items():
        attention, length, batch, signature = key
        ms = np.array(t) * 1e3
        burst = (bursts or {}).get(key, 1)
        if attention == FLOOR:
            floor = {"p50_ms": float(np.percentile(ms, 50)),
                     "p99_ms": float(np.percentile(ms, 99)), "n": len(ms), "batch": batch}
            continue
        rows.append({"attention": attention, "history": length, "batch": batch,
                     "signature": signature, "n": len(ms), "burst": burst,
                     "p50_ms": float(np.percentile(ms, 50)),
                     "p99_ms": float(np.percentile(ms, 99)), "mean_ms": float(ms.mean()),
                     # The first call of each burst: right after other exports' calls.
                     "first_p50_ms": float(np.percentile(ms[::burst], 50))})
    state = {}
    for (attention, length), s in states.items():
        model, extra = state_bytes(s)
        state.setdefault(attention, {})[str(length)] = {
            "model_bytes": model, "fingerprint_and_recent_bytes": extra,
            "tensors": {k: list(v.shape[1:]) for k, v in sorted(s.items())}}
    return {
        "started_utc": started, "wall_s": round(wall, 1), "setup_s": round(setup, 1),
        "timer": args.timer,
        "threads": [args.inter_op_threads, args.intra_op_threads],
        "cpus": os.cpu_count(), "tensorflow": tf.__version__, "items": args.items, "k": args.k,
        "positions": args.positions, "rounds": args.rounds, "burst": args.burst,
        "seconds_per_point": args.seconds_per_point, "min_reps": args.min_reps,
        "d_model": config.d_model, "num_layers": config.num_layers,
        "num_heads": config.num_heads,
        "load_1min": {"min": min(loads), "max": max(loads), "mean": float(np.mean(loads)),
                      "per_round": [round(x, 2) for x in loads]},
        "rows": rows, "state_bytes": state, "floor": floor,
        # The process settings that change these times without changing the exports.
        "environment": server_environment(os.environ),
    }


def parse_args(argv=None):
    """The command line, checked: ``(parser, args)``."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--attentions", default="linrec,elastic")
    p.add_argument("--lengths", default="200,2000,20000")
    p.add_argument("--batches", default="1,64")
    p.add_argument("--encode-batches", default="1",
                   help="batch sizes of the timed encode_state (the first call of a user)")
    p.add_argument("--items", type=int, default=10000, help="catalogue size")
    p.add_argument("--k", type=int, default=100)
    p.add_argument("--positions", default="from_start", choices=["from_start", "none"])
    p.add_argument("--rounds", type=int, default=40, help="timed requests of a fast point")
    p.add_argument("--min-reps", type=int, default=2, help="timed requests of a slow point")
    p.add_argument("--burst", type=int, default=20,
                   help="calls in a row of a point in each round, each timed (fewer for a "
                   "slow point): a server answering a stream of one signature's requests; "
                   "1 = every call right after other exports' calls")
    p.add_argument("--seconds-per-point", type=float, default=30.0,
                   help="cap on the expected measured time of one point")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="docs/serving")
    p.add_argument("--export-dir", help="keep the exports here and reuse them in later runs "
                   "(default: a temporary folder)")
    p.add_argument("--export-only", action="store_true",
                   help="only make the exports (with --export-dir), measure nothing")
    p.add_argument("--from-json", help="rewrite the report and plot from a saved run")
    p.add_argument("--inter-op-threads", type=int, default=0, metavar="N",
                   help="--timer native: the sessions' inter-op thread pool (TF Serving's "
                   "--tensorflow_inter_op_parallelism; 0 = TensorFlow's default, -1 = "
                   "every op in the calling thread)")
    p.add_argument("--intra-op-threads", type=int, default=0, metavar="N",
                   help="--timer native: the intra-op pool (0 = TensorFlow's default)")
    p.add_argument("--timer", choices=TIMERS, default="python",
                   help="python: Session.make_callable per call (streaming.*); native: "
                   "TensorFlow's C API from a compiled C timer, no Python per call "
                   "(streaming-native.*; needs a C compiler)")
    args = p.parse_args(argv)
    if args.export_only and not args.export_dir:
        p.error("--export-only needs --export-dir")
    if (args.inter_op_threads or args.intra_op_threads) and args.timer != "native":
        p.error("--inter-op-threads/--intra-op-threads need --timer native")
    if args.burst < 1:
        p.error(f"--burst must be >= 1, got {args.burst}")
    if not -1 <= args.inter_op_threads <= 127 or not 0 <= args.intra_op_threads <= 127:
        p.error("--inter-op-threads must be in -1..127 and --intra-op-threads in 0..127")
    return p, args


def main(argv=None):
    p, args = parse_args(argv)
    out = Path(args.out)
    if args.from_json:
        write_outputs(json.loads(Path(args.from_json).read_text()), out)
        return 0
    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    t_start = time.perf_counter()
    attentions = args.attentions.split(",")
    lengths = [int(x) for x in args.lengths.split(",")]
    batches = [int(x) for x in args.batches.split(",")]
    tf.keras.utils.set_random_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    sessions, vocabs = {}, {}
    with tempfile.TemporaryDirectory() as scratch:
        timer = compile_or_exit(p, scratch) if args.timer == "native" else None
        root = args.export_dir or scratch
        for length in lengths:
            for attention in attentions:
                t0 = time.perf_counter()
                export_dir, vocab = build_export(attention, length, args.items,
                                                 args.positions, args.k, root)
                if not args.export_only:
                    sessions[attention, length] = Session(export_dir)
                vocabs[attention, length] = vocab
                print(f"{attention} max_len {length}: {export_dir} ready in "
                      f"{time.perf_counter() - t0:.0f} s", flush=True)
        if args.export_only:
            return 0
        setup = time.perf_counter() - t_start
        encode_batches = [int(x) for x in args.encode_batches.split(",")]
        points, states = make_points(sessions, vocabs, batches, encode_batches, rng)
        # The per-call floor, measured in the same rounds at batch 1, with the first
        # attention's step tensors at the shortest history.
        key = attentions[0], lengths[0], 1, "step"
        if key in points:
            floor_dir = build_floor_export(sessions[key[:2]], scratch)
            sessions[FLOOR, lengths[0]] = Session(floor_dir)
            points[FLOOR, lengths[0], 1, "step"] = points[key]
        warm = warm_up(sessions, points)
        plan, bursts = schedule(warm, args.rounds, args.min_reps, args.seconds_per_point,
                                args.burst)
        expected = sum(warm[key] * len(plan[key]) * bursts[key] for key in points)
        print(f"warm-up done; the rounds should take about {expected:.0f} s", flush=True)
        if args.timer == "native":
            times, loads = measure_native(timer, sessions, points, plan, args.rounds, scratch,
                                          (args.inter_op_threads, args.intra_op_threads),
                                          bursts)
        else:
            times, loads = measure(sessions, points, plan, args.rounds, bursts)
    wall = time.perf_counter() - t_start
    config = ModelConfig(attention=attentions[0], positions=args.positions)
    result = summarise(times, states, config, loads, args, started, wall, setup, bursts)
    write_outputs(result, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
