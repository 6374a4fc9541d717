#!/usr/bin/env python
"""Peak memory of training from a preprocessed directory that is streamed, not loaded.

Writes synthetic preprocessed directories (the layout of ``pipelines/preprocess.py``:
``metadata.json``, ``vocab.txt``, ``item_popularity.txt``, TFRecord shards of one
``tf.train.Example`` per user; written directly with NumPy here, the Beam pipeline is
measured by ``scripts/bench_preprocess.py``) of ``--sizes`` events over the same catalogue,
then for each size and regime runs ``tfrs-linear train --data DIR`` in a subprocess and
records its peak RSS (``ru_maxrss`` of the child), wall time, and the input pipeline's
throughput against the train step's:

* a whole training run: the counting pass over the shards, ``--steps`` training batches
  of one epoch (the same number for every size: an epoch of 50M events is hours on 2
  cores), the validation after the epoch and the final valid/test evaluation over EVERY
  user (streamed);
* input pipeline alone: batches/s of ``training_dataset`` on the streamed directory,
  against the train step's batches/s in the run above.

Writes ``docs/bench/streaming_data.md`` and ``.json``. Usage::

    python scripts/bench_streaming_data.py [--sizes 10000000,50000000] [--steps 200]
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def write_directory(out, events, items, shards, seed=0, mean_length=100):
    """A preprocessed directory of ``events`` synthetic events over ``items`` items."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    from tfrs_linear.data import (ITEMS_FEATURE, METADATA_FILE, POPULARITY_FILE,
                                  PREPROCESSED_KIND, PREPROCESSED_VERSION, RAW_ITEMS_FEATURE,
                                  USER_FEATURE, VOCAB_FILE, save_vocabulary)

    rng = np.random.default_rng(seed)
    out.mkdir(parents=True)
    vocab = ["[PAD]", "[OOV]"] + [f"item{i}" for i in range(items)]
    popularity = np.zeros(len(vocab), np.int64)
    names, users, total = [], 0, 0
    # Zipf-like item choice; lengths 3.. with the given mean.
    weights = 1.0 / np.arange(1, items + 1) ** 0.8
    cdf = np.cumsum(weights / weights.sum())
    writers = [tf.io.TFRecordWriter(str(out / f"sequences-{k:05d}-of-{shards:05d}.tfrecord"))
               for k in range(shards)]
    while total < events:
        n = int(min(max(3, rng.geometric(1.0 / mean_length)), events - total))
        if n < 3:
            break
        seq = 2 + np.searchsorted(cdf, rng.random(n))
        np.add.at(popularity, seq[:-2], 1)
        ex = tf.train.Example()
        f = ex.features.feature
        f[USER_FEATURE].bytes_list.value.append(f"user{users}".encode())
        f[ITEMS_FEATURE].int64_list.value.extend(seq.tolist())
        writers[users % shards].write(ex.SerializeToString())
        users += 1
        total += n
    for w in writers:
        w.close()
    names = [f"sequences-{k:05d}-of-{shards:05d}.tfrecord" for k in range(shards)]
    save_vocabulary(vocab, out / VOCAB_FILE)
    (out / POPULARITY_FILE).write_text("".join(f"{c}\n" for c in popularity))
    meta = {"kind": PREPROCESSED_KIND, "format_version": PREPROCESSED_VERSION, "min_events": 3,
            "num_users": users, "num_interactions": total, "dropped_users": 0,
            "dropped_interactions": 0, "shards": names, "compression": "none"}
    (out / METADATA_FILE).write_text(json.dumps(meta))
    del RAW_ITEMS_FEATURE
    return meta


def run_training(directory, output, regime, steps, max_len):
    cmd = [sys.executable, "-m", "tfrs_linear", "train", "--data", str(directory), "--output",
           str(output), "--regime", regime, "--epochs", "1", "--steps-per-epoch", str(steps),
           "--max-len", str(max_len), "--d-model", "32", "--num-layers", "1", "--ffn-dim", "64",
           "--eval-batch-size", "1024"]
    import psutil

    start = time.monotonic()
    child = psutil.Popen(cmd, stdout=subprocess.DEVNULL)
    peak, peak_at, trace = 0, 0.0, []
    while child.poll() is None:
        try:
            rss = child.memory_info().rss
        except psutil.NoSuchProcess:
            break
        now = time.monotonic() - start
        if rss > peak:
            peak, peak_at = rss, now
        if not trace or now - trace[-1][0] >= 1.0:
            trace.append((round(now, 1), round(rss / 2**20)))
        time.sleep(0.1)
    if child.returncode != 0:
        raise SystemExit(f"training failed: {' '.join(cmd)}")
    metrics = json.loads((Path(output) / "metrics.json").read_text())
    return {"seconds": time.monotonic() - start, "peak_rss_mb": peak / 2**20,
            "peak_at_s": peak_at, "rss_trace_mb": trace, "history": metrics.get("history")}


def pipeline_rate(directory, regime, max_len, batch_size=128, batches=200):
    """Batches/s of the streamed training pipeline alone (in this process)."""
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    from tfrs_linear.data import load_dataset, training_dataset

    data = load_dataset(str(directory), stream=True)
    ds = training_dataset(data, max_len, batch_size, regime=regime, seed=0)
    it = iter(ds.repeat())
    next(it)
    start = time.monotonic()
    for _ in range(batches):
        next(it)
    return batches / (time.monotonic() - start)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="10000000,50000000")
    p.add_argument("--items", type=int, default=5_000)
    p.add_argument("--shards", type=int, default=16)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--max-len", type=int, default=50)
    p.add_argument("--regimes", default="all,last")
    p.add_argument("--workdir", default=None)
    p.add_argument("--report", default=str(ROOT / "docs" / "bench" / "streaming_data.md"))
    p.add_argument("--merge", action="store_true",
                   help="keep the report's earlier rows for sizes not run now (a long size "
                        "measured in a later session)")
    args = p.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="tfrs-linear-stream-"))
    sizes = [int(s) for s in args.sizes.split(",")]
    earlier = Path(args.report).with_suffix(".json")
    results = ([r for r in json.loads(earlier.read_text()) if r["events"] not in sizes]
               if args.merge and earlier.exists() else [])
    for size in sizes:
        directory = work / f"events-{size}"
        start = time.monotonic()
        meta = (json.loads((directory / "metadata.json").read_text()) if directory.exists()
                else write_directory(directory, size, args.items, args.shards))
        written = time.monotonic() - start
        for regime in args.regimes.split(","):
            output = work / f"run-{size}-{regime}"
            if output.exists():  # a stopped earlier attempt: measure a whole run again
                shutil.rmtree(output)
            run = run_training(directory, output, regime, args.steps, args.max_len)
            rate = pipeline_rate(directory, regime, args.max_len)
            results.append({"events": meta["num_interactions"], "users": meta["num_users"],
                            "items": args.items, "regime": regime, "write_s": written,
                            "pipeline_batches_per_s": rate, "load": os.getloadavg()[0], **run})
            print(json.dumps(results[-1]), flush=True)
    write_report(results, args, Path(args.report))


def write_report(results, args, path):
    load = os.getloadavg()
    base = {r["regime"]: r["peak_rss_mb"] for r in results
            if r["events"] == results[0]["events"]}
    lines = ["# Training from a streamed preprocessed directory: peak memory",
             "",
             f"- `scripts/bench_streaming_data.py`, {time.strftime('%Y-%m-%d')}; 2-core CPU, "
             f"load average {load[0]:.1f}; {args.items} items, {args.shards} shards, max_len "
             f"{args.max_len}, d_model 32, 1 layer, batch 128, `--steps-per-epoch {args.steps}` "
             "(the same number of training batches at every size), then the full streamed "
             "validation and test evaluation over every user.",
             "- peak RSS: the `tfrs-linear train` process's resident set, sampled every 0.1 s.",
             "",
             "| events | users | regime | peak RSS MB | ratio to smallest | wall s | "
             "train step batches/s | input pipeline batches/s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        history = r.get("history") or [{}]
        step_rate = args.steps / history[0]["seconds"] if history[0].get("seconds") else float("nan")
        lines.append(f"| {r['events']:,} | {r['users']:,} | {r['regime']} | "
                     f"{r['peak_rss_mb']:.0f} | {r['peak_rss_mb'] / base[r['regime']]:.2f} | "
                     f"{r['seconds']:.0f} | {step_rate:.1f} | "
                     f"{r['pipeline_batches_per_s']:.1f} |")
    lines.append("")
    lines.append("Train-step batches/s is from `metrics.json`'s history (the epoch's seconds "
                 "include data loading and the first XLA compilation, so it understates the "
                 "step rate).")
    path.write_text("\n".join(lines) + "\n")
    path.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
