"""Latency of the exported `serving_default` signature, run the way TF Serving runs it.

For each attention (softmax, LinRec, ELASTIC) and max_len (200, 2000) this builds a model
(untrained weights: latency does not depend on them) over a catalogue of ``--items``
items, exports it with ``tfrs_linear.serving.export_model``, loads the SavedModel in a TF1
``Session`` on the ``serve`` tag (as SavedModelBundle does) and times ``sess.run`` of the
signature's output tensors, fed by name, with full-length string histories. Reports
p50/p99 per batch size and the ratios to softmax measured in the same run, interleaving
the models round by round to spread machine noise over all of them.

``--timer native`` times the same interleaved requests from a compiled C process through
TensorFlow's C API instead (``scripts/native_timer.py``: one ``TF_SessionRun`` per request
on the tensor names, no Python in the timed call; ``sess.run``'s per-call feed conversion
of ``max_len`` strings per row is part of the Python timer's numbers).

``--with-all-positions`` also exports each model with a query tower that computes every
position of its last block and slices the newest (``model.encode(..., last_only=False)``,
what exports did before the last-only block), as rows ``ATTENTION/all-positions`` with
their ratio to the default export of the same attention.

    .venv/bin/python scripts/serving_latency.py --out runs/serving-latency
"""

import argparse
import functools
import json
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


ALL_POSITIONS = "/all-positions"


def build_export(name, max_len, items, root):
    attention = name.split("/")[0]
    config = ModelConfig(attention=attention, max_len=max_len)
    vocab = [PAD, OOV] + [str(i) for i in range(1, items + 1)]
    model = SequentialRetrievalModel(config, len(vocab)).build_all()
    if name.endswith(ALL_POSITIONS):
        model.encode = functools.partial(SequentialRetrievalModel.encode, model, last_only=False)
    path = Path(root) / f"{name.replace('/', '-')}-{max_len}"
    return serving.export_model(model, vocab, path, k=100), vocab


class Session:
    def __init__(self, export_dir):
        self.export_dir = Path(export_dir)
        self.graph = tf.Graph()
        self.sess = tf.compat.v1.Session(graph=self.graph)
        meta = tf.compat.v1.saved_model.loader.load(self.sess, ["serve"], str(export_dir))
        sig = meta.signature_def["serving_default"]
        self.input_name = sig.inputs["item_ids"].name
        self.outputs = [sig.outputs[k].name for k in sorted(sig.outputs)]

    def run(self, batch):
        return self.sess.run(self.outputs, feed_dict={self.input_name: batch})


def _time_python(sessions, batch, rounds):
    """``{attention: [seconds]}``: warm-up, then the sessions in turn, ``rounds`` times."""
    times = {a: [] for a in sessions}
    for s in sessions.values():  # warm-up
        for _ in range(3):
            s.run(batch)
    for _ in range(rounds):
        for attention, s in sessions.items():
            t0 = time.perf_counter()
            s.run(batch)
            times[attention].append(time.perf_counter() - t0)
    return times


def _time_native(timer, sessions, batch, rounds, scratch):
    """:func:`_time_python` through the C timer: the same interleaving, every export in
    one C process, one ``TF_SessionRun`` per request."""
    from native_timer import time_points

    names = list(sessions)
    points = {str(i): (i, {sessions[a].input_name: batch}, sessions[a].outputs, range(rounds))
              for i, a in enumerate(names)}
    got = time_points(timer, [sessions[a].export_dir for a in names], points,
                      rounds, scratch)
    return {a: got[str(i)] for i, a in enumerate(names)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--attentions", default="softmax,linrec,elastic")
    p.add_argument("--lengths", default="200,2000")
    p.add_argument("--batches", default="1,64")
    p.add_argument("--items", type=int, default=1682)
    p.add_argument("--rounds", type=int, default=30, help="timed requests per point")
    p.add_argument("--out", default="runs/serving-latency")
    p.add_argument("--timer", choices=("python", "native"), default="python",
                   help="python: sess.run per request; native: TensorFlow's C API from a "
                   "compiled C process (needs a C compiler)")
    p.add_argument("--with-all-positions", action="store_true",
                   help="also time exports whose last block computes every position")
    args = p.parse_args(argv)
    attentions = args.attentions.split(",")
    if args.with_all_positions:
        attentions += [a + ALL_POSITIONS for a in attentions]
    lengths = [int(x) for x in args.lengths.split(",")]
    batches = [int(x) for x in args.batches.split(",")]
    rng = np.random.default_rng(0)
    results = []
    with tempfile.TemporaryDirectory() as root:
        timer = None
        if args.timer == "native":  # compiled first: a missing compiler fails before any export
            from native_timer import compile_or_exit
            timer = compile_or_exit(p, root)
        for max_len in lengths:
            sessions = {}
            for attention in attentions:
                export_dir, vocab = build_export(attention, max_len, args.items, root)
                sessions[attention] = Session(export_dir)
            for batch_size in batches:
                catalogue = np.array(vocab[NUM_RESERVED:], dtype=object)
                batch = rng.choice(catalogue, size=(batch_size, max_len))
                batch = batch.astype(bytes)
                if args.timer == "native":
                    times = _time_native(timer, sessions, batch, args.rounds, root)
                else:
                    times = _time_python(sessions, batch, args.rounds)
                base = {q: np.percentile(times[attentions[0]], q) for q in (50, 99)}
                for attention in attentions:
                    t = np.array(times[attention]) * 1e3
                    row = {"attention": attention, "max_len": max_len, "batch": batch_size,
                           "timer": args.timer,
                           "p50_ms": float(np.percentile(t, 50)), "p99_ms": float(np.percentile(t, 99)),
                           "p50_ratio_to_softmax": float(np.percentile(t, 50) / (base[50] * 1e3)),
                           "p99_ratio_to_softmax": float(np.percentile(t, 99) / (base[99] * 1e3))}
                    if attention.endswith(ALL_POSITIONS):
                        own = np.percentile(times[attention.split("/")[0]], 50) * 1e3
                        row["p50_ratio_to_last_only"] = float(np.percentile(t, 50) / own)
                    results.append(row)
                    print(json.dumps(row), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "latency.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = ["| attention | max_len | batch | p50 ms | p99 ms | p50 / softmax | p99 / softmax |"
             " p50 / last-only export |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        own = r.get("p50_ratio_to_last_only")
        lines.append(f"| {r['attention']} | {r['max_len']} | {r['batch']} | {r['p50_ms']:.1f} | "
                     f"{r['p99_ms']:.1f} | {r['p50_ratio_to_softmax']:.2f} | {r['p99_ratio_to_softmax']:.2f} | "
                     f"{'–' if own is None else format(own, '.2f')} |")
    how = ("one TF_SessionRun per request from C (--timer native)" if args.timer == "native"
           else "sess.run per request from Python")
    lines = [f"Timed {how}; the attentions interleaved per request.", ""] + lines
    (out / "latency.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
