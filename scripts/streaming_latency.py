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

SIGNATURES = ("step", "serving_default", "encode_state")
TIMERS = ("python", "native")  # how each call is made (main's --timer)
LABELS = {"linrec": "LinRec", "elastic": "ELASTIC (causal, k=16)"}
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
    first = next(k for k, v in specs.items() if v.dtype == tf.float32)

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


def schedule(warm, rounds, min_reps, seconds):
    """``{point: set of rounds}``: up to ``rounds`` reps, fewer for a slow point (at most
    ``seconds`` of expected time, never below ``min_reps``), spread over all rounds."""
    plan = {}
    for key, t in warm.items():
        reps = int(max(min_reps, min(rounds, math.floor(seconds / max(t, 1e-9)))))
        reps = min(reps, rounds)
        plan[key] = set(np.linspace(0, rounds - 1, reps).round().astype(int).tolist())
    return plan


def measure(sessions, points, plan, rounds):
    """Round-robin timing; returns ``({point: [seconds]}, [1-min load per round])``."""
    times = {key: [] for key in points}
    loads = []
    for r in range(rounds):
        loads.append(os.getloadavg()[0])
        for key, feeds in points.items():
            if r not in plan[key]:
                continue
            session = sessions[key[0], key[1]]
            t0 = time.perf_counter()
            session.run(key[3], feeds)
            times[key].append(time.perf_counter() - t0)
        if r % 5 == 4 or r == rounds - 1:
            print(f"round {r + 1}/{rounds} done, load {loads[-1]:.2f}", flush=True)
    return times, loads


def measure_native(sessions, points, plan, rounds, scratch, threads=(0, 0)):
    """:func:`measure` through the C timer (``native_timer``): every export loaded once
    in one C process, the same points, rounds and interleaving, each call one
    ``TF_SessionRun``; returns ``({point: [seconds]}, [1-min load before, after])``.
    ``threads``: the sessions' (inter-op, intra-op) thread pools, 0 = TensorFlow's
    default (TF Serving's ``--tensorflow_inter_op_parallelism`` and
    ``--tensorflow_intra_op_parallelism``)."""
    from native_timer import compile_timer, time_points

    timer = compile_timer(scratch)
    keys = list(dict.fromkeys((k[0], k[1]) for k in points))
    native, labels = {}, {}
    for key, feeds in points.items():
        session = sessions[key[:2]]
        signature = key[3]
        label = ".".join(str(part) for part in key)
        labels[key] = label
        native[label] = (keys.index(key[:2]),
                         {session.inputs[signature][k]: v for k, v in feeds.items()},
                         list(session.outputs[signature].values()), plan[key])
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


def summarise(times, states, config, loads, args, started, wall, setup):
    """The JSON record of a run."""
    rows, floor = [], None
    for (attention, length, batch, signature), t in times.items():
        ms = np.array(t) * 1e3
        if attention == FLOOR:
            floor = {"p50_ms": float(np.percentile(ms, 50)),
                     "p99_ms": float(np.percentile(ms, 99)), "n": len(ms), "batch": batch}
            continue
        rows.append({"attention": attention, "history": length, "batch": batch,
                     "signature": signature, "n": len(ms),
                     "p50_ms": float(np.percentile(ms, 50)),
                     "p99_ms": float(np.percentile(ms, 99)), "mean_ms": float(ms.mean())})
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
        "positions": args.positions, "rounds": args.rounds,
        "seconds_per_point": args.seconds_per_point, "min_reps": args.min_reps,
        "d_model": config.d_model, "num_layers": config.num_layers,
        "num_heads": config.num_heads,
        "load_1min": {"min": min(loads), "max": max(loads), "mean": float(np.mean(loads)),
                      "per_round": [round(x, 2) for x in loads]},
        "rows": rows, "state_bytes": state, "floor": floor,
    }


def _row(result, attention, length, batch, signature):
    for r in result["rows"]:
        if (r["attention"], r["history"], r["batch"], r["signature"]) == (
                attention, length, batch, signature):
            return r
    return None


def _dims(result):
    rows = result["rows"]
    attentions = list(dict.fromkeys(r["attention"] for r in rows))
    lengths = sorted({r["history"] for r in rows})
    batches = sorted({r["batch"] for r in rows})
    return attentions, lengths, batches


def _ms(x):
    return f"{x:,.0f}" if x >= 100 else f"{x:.1f}" if x >= 10 else f"{x:.2f}"


def _times(x):
    return f"{x:,.0f}×" if x >= 10 else f"{x:.1f}×"


def latency_table(result):
    attentions, lengths, batches = _dims(result)
    lines = ["| model | history | batch | `step` p50 / p99 ms | `serving_default` p50 / p99 ms "
             "| speed-up p50 / p99 | n (step / default) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for attention in attentions:
        for batch in batches:
            for length in lengths:
                s = _row(result, attention, length, batch, "step")
                d = _row(result, attention, length, batch, "serving_default")
                lines.append(
                    f"| {LABELS.get(attention, attention)} | {length:,} | {batch} | "
                    f"{_ms(s['p50_ms'])} / {_ms(s['p99_ms'])} | "
                    f"{_ms(d['p50_ms'])} / {_ms(d['p99_ms'])} | "
                    f"{_times(d['p50_ms'] / s['p50_ms'])} / {_times(d['p99_ms'] / s['p99_ms'])} | "
                    f"{s['n']} / {d['n']} |")
    return lines


def flatness_table(result):
    attentions, lengths, batches = _dims(result)
    lo, hi = lengths[0], lengths[-1]
    lines = [f"| model | batch | `step` p50 at {lo:,} / {hi:,} ms | ratio {hi:,} / {lo:,} "
             "| target |", "|---|---:|---:|---:|---|"]
    for attention in attentions:
        for batch in batches:
            a = _row(result, attention, lo, batch, "step")["p50_ms"]
            b = _row(result, attention, hi, batch, "step")["p50_ms"]
            lines.append(f"| {LABELS.get(attention, attention)} | {batch} | {_ms(a)} / {_ms(b)} "
                         f"| {b / a:.2f} | {'met' if b / a <= 1.2 else 'MISSED'} (≤ 1.2) |")
    return lines


def encode_table(result):
    attentions, lengths, batches = _dims(result)
    lines = ["| model | history | batch | `encode_state` p50 / p99 ms | / `serving_default` p50 "
             "| / `step` p50 |", "|---|---:|---:|---:|---:|---:|"]
    for attention in attentions:
        for batch in batches:
            for length in lengths:
                e = _row(result, attention, length, batch, "encode_state")
                if e is None:
                    continue
                d = _row(result, attention, length, batch, "serving_default")
                s = _row(result, attention, length, batch, "step")
                lines.append(f"| {LABELS.get(attention, attention)} | {length:,} | {batch} | "
                             f"{_ms(e['p50_ms'])} / {_ms(e['p99_ms'])} | "
                             f"{e['p50_ms'] / d['p50_ms']:.2f}× | "
                             f"{_times(e['p50_ms'] / s['p50_ms'])} |")
    return lines


def state_table(result):
    attentions, lengths, _ = _dims(result)
    layers, d = result["num_layers"], result["d_model"]
    head = "| history | softmax KV cache |"
    rule = "|---:|---:|"
    for attention in attentions:
        head += f" {LABELS.get(attention, attention)} state | KV / it |"
        rule += "---:|---:|"
    lines = [head, rule]
    for length in lengths:
        kv = layers * 2 * length * d * 4
        line = f"| {length:,} | {kv:,} B |"
        for attention in attentions:
            s = result["state_bytes"][attention][str(length)]
            total = s["model_bytes"] + s["fingerprint_and_recent_bytes"]
            line += f" {total:,} B | {kv / total:.1f}× |"
        lines.append(line)
    return lines


def tensors_table(result):
    """The state tensors per user: one row per name (the blocks' folded into
    ``block_<i>.``), its shape per model."""
    attentions, lengths, _ = _dims(result)
    shapes = {}
    for attention in attentions:
        for name, shape in result["state_bytes"][attention][str(lengths[-1])]["tensors"].items():
            if name.startswith("block_"):
                name = "block_<i>." + name.split(".", 1)[1]
            shapes.setdefault(name, {})[attention] = shape
    head = "| state tensor (per user) |" + "".join(
        f" {LABELS.get(a, a)} |" for a in attentions)
    lines = [head, "|---|" + "---|" * len(attentions)]
    for name in sorted(shapes):
        cells = "".join(f" {shapes[name].get(a, '–')} |" for a in attentions)
        lines.append(f"| `{name}` |{cells}")
    return lines


def _setting(result):
    """The page's paragraph on what was measured and how."""
    load = result["load_1min"]
    return f"""Setting: LinRec and causal ELASTIC at `ModelConfig`'s default widths (d_model
{result['d_model']}, {result['num_layers']} layers, {result['num_heads']} heads; ELASTIC with
k = 16 interests and the recency bias), `positions="{result['positions']}"`, **untrained
weights**: latency does not depend on their values, with one caveat: ELASTIC's full encode
falls back to its slower exact path on a batch whose logits jump by more than 60 inside a
chunk, which random weights are unlikely to produce and trained ones may (that would only
slow `serving_default`). One export per history length, with `max_len` = the history
(`serving_default` always encodes the full `max_len` window, so a longer `max_len` would
only slow it); a catalogue of {result['items']:,} items, k = {result['k']}, history exclusion
on (the export's default; `step` excludes the newest 100 items its state keeps). Histories
are random catalogue ids; `step` is fed the state `encode_state` made of the first of them
(at batch 64 repeated 64 times: `step` runs the same dense ops whatever the state's values).

The points were interleaved round-robin over {result['rounds']} rounds after one or two
warm-up calls each; a slow point ran in fewer rounds, spread evenly over the run (at most
about {result['seconds_per_point']:.0f} s of measured time, at least {result['min_reps']}
runs; `n` says how many). With at most {result['rounds']} runs, a point's p99 is about its
slowest run. {result['cpus']} CPU cores shared with other jobs: 1-minute load average
{load['min']:.1f}–{load['max']:.1f} (mean {load['mean']:.1f}) {_when(result)} the rounds. Run started
{result['started_utc']} and took {result['wall_s']:.0f} s ({result['setup_s']:.0f} s of it
exporting, or reusing exports, and loading them); TensorFlow {result['tensorflow']}.
Absolute times depend on the load; the ratios are within one run."""


def _floor_text(result):
    """The per-call floor's sentence (runs made before it was measured have none)."""
    floor = result.get("floor")
    if not floor:
        return ""
    step = _row(result, _dims(result)[0][0], _dims(result)[1][0], 1, "step")
    return (f"\nThe floor of one call on this machine: a SavedModel whose `step` signature "
            f"takes and returns the same tensors and only passes them through (batch 1) "
            f"runs in {_ms(floor['p50_ms'])} / {_ms(floor['p99_ms'])} ms (p50 / p99, "
            f"n {floor['n']}), {floor['p50_ms'] / step['p50_ms']:.0%} of "
            f"{LABELS.get(_dims(result)[0][0])}'s batch-1 `step` at {_dims(result)[1][0]:,} "
            f"events ({_ms(step['p50_ms'])} ms): feeding and fetching the state costs that "
            "much before any model op runs. 100× over re-encoding needs a `step` under 1% of "
            "`serving_default`.\n")


def report(result):
    """The Markdown page of a run."""
    attentions, lengths, batches = _dims(result)
    hi = lengths[-1]
    targets = []
    for attention in attentions:
        for batch in batches:
            s = _row(result, attention, hi, batch, "step")["p50_ms"]
            d = _row(result, attention, hi, batch, "serving_default")["p50_ms"]
            targets.append(f"{LABELS.get(attention, attention)} batch {batch}: {_times(d / s)}"
                           f" ({'met' if d / s >= 100 else 'MISSED'})")
    breakdown = []
    for attention in attentions:
        s = result["state_bytes"][attention][str(hi)]
        breakdown.append(f"{LABELS.get(attention, attention)}: {s['model_bytes']:,} B of model "
                         f"state + {s['fingerprint_and_recent_bytes']:,} B of fingerprint and "
                         "recent items")
    stem = _stem(result)
    return f"""# Streaming serving latency{' (C timer)' if stem != 'streaming' else ''}

`step` (one new event on a user's stored state) against `serving_default` (the whole
history re-encoded on every request), measured as TF Serving runs them: {_how(result)}
(no XLA; no network or protobuf serialization: the state's size on the wire is in the
state table below). Made by `scripts/streaming_latency.py{_flag(result)}` (this page,
`{stem}.json` and `{stem}.png`; redraw without measuring: `--from-json
docs/serving/{stem}.json`).

{_setting(result)}

## `step` against re-encoding

{chr(10).join(latency_table(result))}

Speed-up of `step` over `serving_default` at {hi:,} events (p50; target ≥ 100×):
{'; '.join(targets)}.
{_floor_text(result)}

![p50 latency against history length]({stem}.png)

## `step` does not grow with the history

{chr(10).join(flatness_table(result))}

The state has the same shapes whatever the history's length and `step` runs the same ops
on it; only the numbers in the state differ (and the size of the position table, of which
`step` reads one row). Differences between lengths come from the machine's load.

## The first call: `encode_state`

A user without a stored state (a first event, or a state lost or made by another export)
is encoded once from the whole history. `encode_state` runs the recurrent step over the
history 64 events at a time (one `tf.while_loop`), so its cost grows linearly with the
history, like `serving_default`'s.

{chr(10).join(encode_table(result))}

## State bytes per user

What a service stores per user, summed over `encode_state`'s outputs except
`user_embedding` (the float32 model state, the int64 export fingerprint and the int32
newest 100 item indices for history exclusion), against the key/value cache a softmax
model would keep to serve the same history incrementally ({result['num_layers']} layers × 2
(K and V) × length × d_model {result['d_model']} × 4 bytes, float32):

{chr(10).join(state_table(result))}

The streaming state does not depend on the history's length ({'; '.join(breakdown)}).
Half of each running sum is its Kahan compensation term (exactness over long streams).
`block_<i>.` stands for each of the {result['num_layers']} blocks; `fingerprint` is int64,
`recent_items` int32, the rest float32 (shape `[]`: one number per user):

{chr(10).join(tensors_table(result))}
"""


def plot(result, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    attentions, lengths, batches = _dims(result)
    fig, axes = plt.subplots(1, len(batches), figsize=(5.5 * len(batches), 4.2), squeeze=False)
    styles = {"serving_default": "-", "encode_state": ":", "step": "--"}
    colors = {"linrec": "tab:blue", "elastic": "tab:orange"}
    for ax, batch in zip(axes[0], batches):
        for attention in attentions:
            for signature, style in styles.items():
                rows = [_row(result, attention, n, batch, signature) for n in lengths]
                if None in rows:
                    continue
                y = [r["p50_ms"] for r in rows]
                ax.plot(lengths, y, style, marker="o", color=colors.get(attention),
                        label=f"{LABELS.get(attention, attention)} {signature}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(lengths)
        ax.set_xticklabels([f"{n:,}" for n in lengths])
        ax.minorticks_off()
        ax.set_xlabel("history length (events)")
        ax.set_ylabel("p50 latency (ms)")
        ax.set_title(f"batch {batch}")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=7)
    how = ("C API, one TF_SessionRun per call" if result.get("timer") == "native"
           else "TF1 session as TF Serving runs it")
    fig.suptitle(f"{how}; step = one new event", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _stem(result):
    """The output files' stem: the C timer's run has its own page."""
    if result.get("timer") != "native":
        return "streaming"
    inter, intra = result.get("threads") or (0, 0)
    return "streaming-native" + (f"-threads{inter}-{intra}" if inter or intra else "")


def _when(result):
    """The C timer reads the load before and after its rounds, Python's every round."""
    return "before and after" if result.get("timer") == "native" else "during"


def _flag(result):
    if result.get("timer") != "native":
        return ""
    inter, intra = result.get("threads") or (0, 0)
    return " --timer native" + (f" --inter-op-threads {inter}" if inter else "") + (
        f" --intra-op-threads {intra}" if intra else "")


def _threads_text(result):
    inter, intra = result.get("threads") or (0, 0)
    if not inter and not intra:
        return "; TensorFlow's default thread pools"
    name = lambda n: str(n) if n else "default"  # noqa: E731
    return (f"; sessions with {name(inter)} inter-op and {name(intra)} intra-op threads "
            "(TF Serving's `--tensorflow_inter_op_parallelism` / "
            "`--tensorflow_intra_op_parallelism`)")


def _how(result):
    """How each call was made, for the page (runs before --timer are Python's)."""
    if result.get("timer") == "native":
        return ("each export loaded with TensorFlow's C API on the `serve` tag "
                "(`TF_LoadSessionFromSavedModel`, the loader of TF Serving's "
                "SavedModelBundle), all of them in one compiled C process "
                "(`scripts/session_run_timer.c`), each call ONE `TF_SessionRun` on the "
                "signature's tensor names with the feeds made once beforehand: what TF "
                "Serving runs per request, without Python anywhere in the timed call"
                + _threads_text(result))
    return ("each export loaded in a TF1 session on the `serve` tag, each signature run "
            "through a `Session.make_callable` on its tensor names: one C++ "
            "`Session::Run` per call, as TF Serving makes it, plus the Python binding's "
            "conversion of every feed and fetch (`--timer native` times without it)")


def write_outputs(result, out):
    out.mkdir(parents=True, exist_ok=True)
    stem = _stem(result)
    (out / f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n")
    plot(result, out / f"{stem}.png")
    (out / f"{stem}.md").write_text(report(result))
    print("\n".join(latency_table(result) + [""] + flatness_table(result) + [""]
                    + encode_table(result) + [""] + state_table(result)))


def main(argv=None):
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
                   "--tensorflow_inter_op_parallelism; 0 = TensorFlow's default)")
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
    if not 0 <= args.inter_op_threads <= 127 or not 0 <= args.intra_op_threads <= 127:
        p.error("--inter-op-threads/--intra-op-threads must be in 0..127")
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
        plan = schedule(warm, args.rounds, args.min_reps, args.seconds_per_point)
        expected = sum(warm[key] * len(plan[key]) for key in points)
        print(f"warm-up done; the rounds should take about {expected:.0f} s", flush=True)
        if args.timer == "native":
            times, loads = measure_native(sessions, points, plan, args.rounds, scratch,
                                          (args.inter_op_threads, args.intra_op_threads))
        else:
            times, loads = measure(sessions, points, plan, args.rounds)
    wall = time.perf_counter() - t_start
    config = ModelConfig(attention=attentions[0], positions=args.positions)
    result = summarise(times, states, config, loads, args, started, wall, setup)
    write_outputs(result, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
