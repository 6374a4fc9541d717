"""Training the runs (one per seed, attention and precision) and the record of each
finished run; the most-popular baseline under the same protocol."""

import datetime
import json
import os
import statistics
import time
import traceback
from pathlib import Path

from tfrs_linear.keras2 import require_keras2

require_keras2()  # sets TF_USE_LEGACY_KERAS=1 before tf.keras is touched

import tensorflow as tf  # noqa: E402

from tfrs_linear import data as data_lib  # noqa: E402
from tfrs_linear import evaluation  # noqa: E402
from tfrs_linear import training  # noqa: E402
from tfrs_linear.config import load_config, to_flat_dict  # noqa: E402

from quality.common import VALID_TARGET, log  # noqa: E402
from quality.flags import past_stop_time  # noqa: E402
from quality.naming import base_setting_name, effective_overrides, make_config, run_name, setting_name  # noqa: E402
from quality.outputs import write_outputs  # noqa: E402

# The package the runs train with (PYTHONPATH may point at a frozen copy of it).
PACKAGE_DIR = str(Path(data_lib.__file__).resolve().parents[1])


class TimedTrainer(training.Trainer):
    """A Trainer that also records the training seconds of every epoch, through the
    Trainer's epoch hooks.

    ``OUT/<run>/epoch_times.json`` maps epoch -> seconds from the end of the previous
    epoch's bookkeeping (or from the start of training) to this epoch's end, i.e. the
    training epoch alone; it survives a resume like the checkpoints do.
    """

    def on_train_begin(self, state):
        self._times_path = self.output / "epoch_times.json"
        self._times = {}
        if self._times_path.exists():
            self._times = {int(k): v for k, v in json.loads(self._times_path.read_text()).items()}
        self._mark = time.perf_counter()

    def on_epoch_end(self, epoch, logs):
        seconds = time.perf_counter() - self._mark
        self._times[epoch] = round(seconds, 3)
        tmp = self._times_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({str(k): v for k, v in sorted(self._times.items())}, indent=1))
        os.replace(tmp, self._times_path)
        log(f"  epoch {epoch}: training {seconds:.1f} s")

    def on_epoch_saved(self, epoch, record):
        self._mark = time.perf_counter()


def summarize_run(name, variant, setting, configs, out_dir, wall_seconds=None, extra=None):
    """Everything the report needs about one finished run, from its directory;
    ``configs`` is the run's ``(ModelConfig, TrainConfig)``; ``extra``: further fields of
    the record (the base setting, the overrides, the load averages)."""
    model_config, train_config = configs
    metrics = json.loads((out_dir / "metrics.json").read_text())
    state = json.loads((out_dir / "checkpoints" / "state.json").read_text())
    times_path = out_dir / "epoch_times.json"
    times = {int(k): v for k, v in json.loads(times_path.read_text()).items()} if times_path.exists() else {}
    history = state["history"]
    cumulative, reached, reached_epoch = 0.0, None, None
    train_to_best = None
    curve = []
    for rec in history:
        e = rec["epoch"]
        cumulative += times.get(e, float("nan"))
        v = rec["valid"]["ndcg@10"]
        curve.append({"epoch": e, "loss": round(rec["loss"], 5), "valid_ndcg@10": round(v, 5),
                      "valid_hr@10": round(rec["valid"]["hr@10"], 5),
                      "train_s": times.get(e), "eval_s": rec.get("eval_seconds")})
        if reached is None and v >= VALID_TARGET:
            reached, reached_epoch = cumulative, e
        if e == state["best_epoch"]:
            train_to_best = cumulative
    train_total = sum(times.get(r["epoch"], float("nan")) for r in history)
    epochs_run = state["epoch"]
    stopped = "early-stopped" if state["wait"] > train_config.patience else (
        "epoch cap" if epochs_run >= train_config.epochs else "incomplete")
    record = {
        "run": name, "variant": variant, "setting": setting, "seed": train_config.seed,
        "config": to_flat_dict(model_config, train_config),
        "test": {k: metrics["test"][k] for k in metrics["test"]},
        "valid": {k: metrics["valid"][k] for k in metrics["valid"]},
        "best_epoch": state["best_epoch"], "epochs_run": epochs_run, "stopped_by": stopped,
        "train_seconds_total": round(train_total, 1),
        "train_seconds_per_epoch_median": round(statistics.median(times.values()), 2) if times else None,
        "train_seconds_per_epoch_min": (round(min(v for e, v in times.items() if e > 1), 2)
                                        if len(times) > 1 else None),
        "train_seconds_to_best": None if train_to_best is None else round(train_to_best, 1),
        "valid_target": VALID_TARGET,
        "train_seconds_to_valid_target": None if reached is None else round(reached, 1),
        "epoch_valid_target_reached": reached_epoch,
        "eval_seconds_total": round(sum(r.get("eval_seconds", 0.0) for r in history), 1),
        "wall_seconds_this_invocation": None if wall_seconds is None else round(wall_seconds, 1),
        "curve": curve,
        "dir": str(out_dir),
        **(extra or {}),
    }
    return record


# Fields of a run's record that its directory does not hold (kept by --report-only).
RECORD_EXTRAS = ("base_setting", "overrides", "load_average_start", "load_average_end", "package",
                  "recorded")


def _load_average():
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def train_runs(args, data, results):
    """Trains every (seed, attention, precision) of the flags, in that nesting order, so
    that the precisions of one seed and attention run one after the other (paired runs
    under the same load)."""
    base = load_config(args.base_config) if args.base_config else None
    out = Path(args.out)
    runs_dir = Path(args.runs_dir) if args.runs_dir else out
    for seed in args.seeds:
        for variant in args.attentions:
            for precision in args.precision or [None]:
                if past_stop_time(args):
                    log(f"--stop-starting-at {args.stop_starting_at} UTC passed: no further run started")
                    return
                overrides = dict(args.overrides)
                if precision is not None:
                    overrides["precision"] = precision
                _train_one(args, data, results, variant, seed, base, overrides, runs_dir)


def _train_one(args, data, results, variant, seed, base, overrides, runs_dir):
    """One run (resumed if its directory holds an unfinished one), recorded in ``results``."""
    out = Path(args.out)
    changed = effective_overrides(variant, seed, args, base, overrides)
    name, setting = run_name(variant, seed, args, changed), setting_name(args, changed)
    configs = make_config(variant, seed, args, base, overrides)
    model_config, train_config = configs
    run_dir = runs_dir / name
    n_ex = data_lib.num_training_examples(data, model_config.max_len, model_config.regime)
    log(f"=== {name}: {variant} ({model_config.attention}/{model_config.normalization}, "
        f"k={model_config.num_interests}), regime {model_config.regime}, loss "
        f"{model_config.loss}, causal {model_config.is_causal}, max_len {model_config.max_len}, "
        f"batch {train_config.batch_size}, lr {train_config.learning_rate}, <= "
        f"{train_config.epochs} epochs, patience {train_config.patience}, precision "
        f"{train_config.precision}; overrides {changed or 'none'}; {n_ex} training "
        f"sequences -> {n_ex // train_config.batch_size} steps/epoch")
    extra = {"base_setting": base_setting_name(args), "overrides": changed,
             "load_average_start": _load_average(), "package": PACKAGE_DIR}
    tf.keras.backend.clear_session()
    t0 = time.perf_counter()
    try:
        TimedTrainer(model_config, train_config, data, run_dir,
                     verbose=2 if args.keras_verbose else 0).run()
    except Exception as e:  # keep going with the other runs; the error is reported
        log(f"!!! {name} failed: {type(e).__name__}: {e}")
        traceback.print_exc()
        results["runs"][name] = {"run": name, "variant": variant, "setting": setting,
                                 "seed": seed, "error": f"{type(e).__name__}: {e}", **extra}
        write_outputs(results, out)
        return
    wall = time.perf_counter() - t0
    extra["load_average_end"] = _load_average()
    extra["recorded"] = datetime.datetime.now().isoformat(timespec="seconds")
    rec = summarize_run(name, variant, setting, configs, run_dir, wall, extra)
    results["runs"][name] = rec
    log(f"=== {name} done in {wall:.0f} s: test ndcg@10 {rec['test']['ndcg@10']:.4f} "
        f"hr@10 {rec['test']['hr@10']:.4f} mrr@10 {rec['test']['mrr@10']:.4f}; best epoch "
        f"{rec['best_epoch']}/{rec['epochs_run']} ({rec['stopped_by']}); training "
        f"{rec['train_seconds_total']:.0f} s; valid target {VALID_TARGET} "
        + (f"reached at epoch {rec['epoch_valid_target_reached']} after "
           f"{rec['train_seconds_to_valid_target']:.0f} s" if rec['epoch_valid_target_reached']
           else "not reached") + f"; load average {extra['load_average_start']} -> "
        f"{extra['load_average_end']}")
    write_outputs(results, out)


def most_popular(data, max_len):
    """Valid and test metrics@10 of the most-popular baseline (training popularity)."""
    encode_fn, items = evaluation.most_popular_scores(data.item_popularity)
    out = {}
    for split in ("valid", "test"):
        batches = data_lib.evaluation_batches(data, split, max_len, 256)
        m = evaluation.evaluate(encode_fn, items, batches, protocol="full", exclude_history=False)
        out[split] = {k: float(v) for k, v in m.items() if "@" in k}
    return out
