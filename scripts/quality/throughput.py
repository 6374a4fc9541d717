"""Training throughput: sequences per second of a full train step per attention, length
and length-bucket mode, in rounds (TensorFlow is imported when measuring, not before)."""

import statistics
import time
from pathlib import Path

from tfrs_linear.config import ModelConfig, TrainConfig

from quality.common import VARIANTS, log


def _available_memory():
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _step_memory_estimate(batch, n, vocab, heads=2, layers=2):
    """Rough bytes of softmax's training step (the largest): the attention weights and
    their dropout and gradients per layer, plus the full-catalogue logits at every
    position. Calibrated on one OOM: batch 128 x N=1000 took ≈16 GiB."""
    attention = batch * heads * n * n * 4 * 5 * layers
    logits = batch * n * vocab * 4 * 4
    return 1.3 * (attention + logits) + 1.5 * 2**30


def _bucket_mode(text):
    """``"4"`` -> ``(4, 1)`` (4 length buckets, every batch keeps its rows), ``"4/8"`` ->
    ``(4, 8)`` (rows regrouped within windows of 8 batches), ``"1"`` -> ``(1, 1)``."""
    buckets, _, window = str(text).partition("/")
    return int(buckets), int(window or 1)


def _point_key(n, mode):
    """The throughput report's key of a length and a bucket mode: ``"200"`` (every batch
    ``max_len`` wide), ``"200-buckets4"`` or ``"200-buckets4-window8"``."""
    buckets, window = mode
    if buckets == 1:
        return str(n)
    return f"{n}-buckets{buckets}" + (f"-window{window}" if window > 1 else "")


def point_label(key):
    """``"200"`` -> ``"N=200"``, ``"200-buckets4-window8"`` -> ``"N=200, 4 buckets,
    window 8"``."""
    parts = key.split("-")
    label = f"N={parts[0]}"
    for part in parts[1:]:
        if part.startswith("buckets"):
            label += f", {part[len('buckets'):]} buckets"
        elif part.startswith("window"):
            label += f", window {part[len('window'):]}"
    return label


def _throughput_batches(data, n, bs, mode):
    """``(batches, steps per pass)``: without buckets, 4 training batches ``n`` wide; with
    them, the first epoch's batches cut (and regrouped) as training does
    (:func:`tfrs_linear.data.length_bucketed`), so a pass holds every width in the
    proportion an epoch has. Cached and repeated."""
    from tfrs_linear import data as data_lib

    buckets, window = mode
    ds = data_lib.training_dataset(data, n, bs, regime="all", seed=0)
    if buckets == 1:
        return ds.take(4).cache().repeat(), 4
    steps = int(ds.cardinality())
    ds = data_lib.length_bucketed(ds, n, buckets, seed=0, window=window)
    return ds.cache().repeat(), steps


def throughput(args, data):
    """The throughput report of the flags' attentions, lengths and bucket modes."""
    import tensorflow as tf

    lengths = args.throughput_lengths
    variants = args.attentions if "softmax" in args.attentions else ["softmax"] + list(args.attentions)
    bs = args.batch_size or 128
    steps, warmup, rounds = args.throughput_steps, args.throughput_warmup, args.throughput_rounds
    report = {"batch_size": bs, "steps": steps, "warmup": warmup, "rounds": rounds,
              "regime": "all", "loss": "full", "xla": True, "lengths": lengths, "points": {}}
    for n, mode in [(n, _bucket_mode(b)) for n in lengths for b in args.throughput_buckets]:
        key, buckets = _point_key(n, mode), mode[0]
        tf.keras.backend.clear_session()
        tf.keras.utils.set_random_seed(0)
        bs = _fitting_batch_size(args, n, data.num_items)
        report.setdefault("batch_size_per_length", {})[str(n)] = bs
        batches, per_pass = _throughput_batches(data, n, bs, mode)
        # Whole passes over the batches (every width once compiled and timed as often
        # as an epoch has it).
        n_steps = per_pass * -(-steps // per_pass) if buckets > 1 else steps
        n_warmup = per_pass if buckets > 1 else max(warmup, 1)
        models = _warm_up(variants, n, data, batches, n_warmup, key, report)
        order = list(models)
        if not order:
            continue
        per, ratios = _measure_rounds(models, n_steps, bs, rounds, key)
        point = report["points"].setdefault(key, {})
        for v in models:
            point[v] = {
                "seq_per_s_median": round(statistics.median(per[v]), 2),
                "seq_per_s_rounds": [round(x, 2) for x in per[v]],
                "step_ms_median": round(1000 * bs / statistics.median(per[v]), 1),
                "ratio_vs_softmax_median": round(statistics.median(ratios[v]), 3) if ratios[v] else None,
                "ratio_vs_softmax_rounds": [round(x, 3) for x in ratios[v]],
            }
        del models
    return report


def _fitting_batch_size(args, n, vocab):
    """``--batch-size`` (128), halved while softmax's step would not fit in 80 % of the
    available memory (down to 8)."""
    bs = args.batch_size or 128
    need, avail = _step_memory_estimate(bs, n, vocab), _available_memory()
    while avail and bs > 8 and need > 0.8 * avail:
        bs //= 2
        need = _step_memory_estimate(bs, n, vocab)
    if bs != (args.batch_size or 128):
        log(f"throughput N={n}: batch {args.batch_size or 128} would need ≈{_step_memory_estimate(args.batch_size or 128, n, vocab) / 2**30:.1f} GiB "
            f"for softmax's step, {avail / 2**30:.1f} GiB available: batch {bs} instead")
    return bs


def _warm_up(variants, n, data, batches, n_warmup, key, report):
    """``{variant: (train step, batch iterator)}`` of the variants whose model built,
    compiled and ran ``n_warmup`` steps; a failure is recorded in ``report``."""
    import tensorflow as tf

    from tfrs_linear.models import SequentialRetrievalModel

    models = {}
    for v in variants:
        config = ModelConfig().replace(**VARIANTS[v], max_len=n)
        model = SequentialRetrievalModel(config, data.num_items).build_all()
        model.compile(optimizer=tf.keras.optimizers.Adam(TrainConfig().learning_rate), jit_compile=True)
        t0 = time.perf_counter()
        try:
            step = model.make_train_function()
            it = iter(batches)
            for i in range(n_warmup):
                float(step(it)["loss"])
        except Exception as e:
            log(f"throughput {key} {v}: warm-up failed: {type(e).__name__}: {str(e)[:300]}")
            report["points"].setdefault(key, {})[v] = {"error": f"{type(e).__name__}"}
            continue
        log(f"throughput {key} {v}: warm-up ({n_warmup} steps incl. XLA compile) {time.perf_counter() - t0:.1f} s")
        models[v] = (step, it)
    return models


def _measure_rounds(models, n_steps, bs, rounds, key):
    """``(seq/s per round, ratio to softmax's of the round per round)`` of every model;
    within a round the models run one after the other, the order rotated each round."""
    per = {v: [] for v in models}
    ratios = {v: [] for v in models}
    order = list(models)
    for r in range(rounds):
        rot = order[r % len(order):] + order[:r % len(order)]
        this = {}
        for v in rot:
            step, it = models[v]
            t0 = time.perf_counter()
            for i in range(n_steps):
                out = step(it)
                float(out["loss"])  # wait for the step
            dt = time.perf_counter() - t0
            this[v] = n_steps * bs / dt
            per[v].append(this[v])
        if "softmax" in this:
            for v in this:
                ratios[v].append(this[v] / this["softmax"])
        log(f"throughput {key} round {r + 1}/{rounds}: " + ", ".join(
            f"{v} {this[v]:.0f} seq/s" + (f" ({this[v] / this['softmax']:.2f}x)" if "softmax" in this else "")
            for v in order))
    return per, ratios
