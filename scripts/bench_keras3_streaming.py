"""Keras 3 streaming: one ``step`` against re-encoding the history, on each backend.

For causal LinRec (``positions="from_start"``) and causal ELASTIC (recency bias,
``positions="none"``), ``SequenceEncoder`` at the package's defaults (d_model 64, 2
layers, 2 heads, max_len 200; untrained weights: latency does not depend on them), batch
1, and each history length L (``--lengths``, default 200, 2,000, 20,000) this times:

* ``step``: the state of an L-event history plus ONE new event (the streaming request);
* ``encode_state``: the whole L-event history in one parallel pass (what a service
  without a state pays per event for the same whole-history embedding);
* ``call``: the encoder's newest output on the newest ``max_len`` events (a model that
  only ever sees its window), for scale.

Each backend runs in its own subprocess (``KERAS_BACKEND`` set, ``TF_USE_LEGACY_KERAS``
unset): ``tensorflow`` (``tf.function``, no XLA: what TF Serving runs), ``jax``
(``jax.jit``), ``torch`` (eager, Keras' default there). Per point: one first
(compiling) call, then ``--repeats`` timed calls (``--step-repeats`` for ``step``),
median. Writes ``NAME.json`` and ``NAME.md`` into ``--out``.

    .venv/bin/python scripts/bench_keras3_streaming.py [--out docs/bench] [--quick]
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BACKENDS = ("tensorflow", "jax", "torch")
ATTENTIONS = {"linrec": dict(attention="linrec", positions="from_start"),
              "elastic": dict(attention="elastic", recency_bias=True, positions="none")}
MAX_LEN, VOCAB = 200, 10_000


def _compiled(backend, fn):
    """``fn`` as the backend runs it in production: a graph, a jit, or eagerly."""
    if backend == "tensorflow":
        import tensorflow as tf
        return tf.function(fn)
    if backend == "jax":
        import jax
        return jax.jit(fn)
    return fn


def _timed(fn, args, repeats):
    """``(first_call_s, median_s)``: one call, then ``repeats`` timed calls."""
    from keras import ops

    def once():
        start = time.perf_counter()
        out = fn(*args)
        ops.convert_to_numpy(out[1] if isinstance(out, tuple) else out)  # wait for it
        return time.perf_counter() - start

    first = once()
    return first, statistics.median(once() for _ in range(repeats))


def worker(args):
    """One backend: every attention and length; prints one JSON line per point."""
    import keras
    import numpy as np

    from tfrs_linear.keras3 import SequenceEncoder

    backend = keras.config.backend()
    rng = np.random.default_rng(0)
    for name, config in ATTENTIONS.items():
        keras.utils.set_random_seed(0)
        encoder = SequenceEncoder(VOCAB, MAX_LEN, **config)
        encoder.build((None, MAX_LEN))
        encode = _compiled(backend, encoder.encode_state)
        step = _compiled(backend, encoder.step)
        call = _compiled(backend, lambda ids: encoder(ids, last_only=True))
        for length in args.lengths:
            history = rng.integers(2, VOCAB, size=(1, length)).astype("int32")
            first_e, encode_s = _timed(encode, (history,), args.repeats)
            state, _ = encode(history)
            new = rng.integers(2, VOCAB, size=(1, 1)).astype("int32")
            first_s, step_s = _timed(step, (state, new), args.step_repeats)
            _, call_s = _timed(call, (history[:, -MAX_LEN:],), args.repeats)
            print(json.dumps(dict(backend=backend, attention=name, length=length,
                                  step_s=step_s, encode_state_s=encode_s, call_s=call_s,
                                  first_step_s=first_s, first_encode_s=first_e,
                                  load=os.getloadavg()[0])), flush=True)


def run_backend(backend, args):
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    env.update(KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])))
    cmd = [sys.executable, __file__, "--worker", "--lengths",
           ",".join(map(str, args.lengths)), "--repeats", str(args.repeats),
           "--step-repeats", str(args.step_repeats)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600)
    points = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode:
        print(f"{backend}: exit {proc.returncode}\n{proc.stderr[-2000:]}", file=sys.stderr)
    return points


def write_markdown(path, points, meta):
    lines = [
        "# Keras 3 streaming: one `step` against re-encoding (batch 1)", "",
        f"`scripts/bench_keras3_streaming.py`, {meta['date']}, {meta['machine']}, "
        f"Keras {meta['keras']}; one run, each backend in its own process, one after the "
        "other; median wall time per call after a first (compiling) call. Encoder at the "
        "defaults (d_model 64, 2 layers, 2 heads, max_len 200), untrained. `encode_state` "
        "is the whole history in one parallel pass; `call` the newest 200 events.", "",
        "| backend | attention | history L | step | encode_state | encode_state ÷ step "
        "| call (newest 200) | load |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for p in points:
        lines.append(
            f"| {p['backend']} | {p['attention']} | {p['length']:,} | "
            f"{p['step_s'] * 1e3:.2f} ms | {p['encode_state_s'] * 1e3:.1f} ms | "
            f"{p['encode_state_s'] / p['step_s']:.0f}× | {p['call_s'] * 1e3:.1f} ms | "
            f"{p['load']:.1f} |")
    path.write_text("\n".join(lines) + "\n")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "docs" / "bench"))
    parser.add_argument("--name", default="keras3-streaming")
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--lengths", default="200,2000,20000")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--step-repeats", type=int, default=50)
    parser.add_argument("--quick", action="store_true", help="lengths 50,500; few repeats")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.lengths, args.repeats, args.step_repeats = "50,500", 2, 5
    args.lengths = [int(n) for n in args.lengths.split(",")]
    if any(n < 1 for n in args.lengths):
        parser.error(f"--lengths must be positive, got {args.lengths}")
    args.backends = [b for b in args.backends.split(",") if b]
    unknown = sorted(set(args.backends) - set(BACKENDS))
    if unknown:
        parser.error(f"--backends: unknown {unknown}; choose from {BACKENDS}")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    import keras  # noqa: F401  (the version, recorded below)

    points = []
    for backend in args.backends:
        points += run_backend(backend, args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = dict(date=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                machine=f"{platform.machine()}, {os.cpu_count()} CPUs",
                keras=sys.modules["keras"].__version__)
    (out / f"{args.name}.json").write_text(json.dumps(dict(meta, points=points), indent=1))
    write_markdown(out / f"{args.name}.md", points, meta)
    print((out / f"{args.name}.md").read_text())
    return 0 if points else 1


if __name__ == "__main__":
    raise SystemExit(main())
