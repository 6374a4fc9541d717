#!/usr/bin/env python
"""Quality bar of issue #4 on MovieLens-100K: softmax vs LinRec vs ELASTIC.

What it does (``docs/protocol.md`` is the protocol):

1. Trains, for every attention in ``--attentions`` and every seed in ``--seeds``, one
   model in the project's DEFAULT regime (``ModelConfig``/``TrainConfig`` defaults:
   regime "all" — a next-item target at every position of a causal encoder —, full
   cross-entropy over the catalogue, hidden 64, 2 layers, 2 heads, FFN 256, dropout 0.2,
   Adam 1e-3, patience 5 on validation NDCG@10) at ``--max-len`` (200) and
   ``--batch-size`` (128), at most ``--epochs`` (60) epochs, each into
   ``OUT/<attention>-seed<seed>/`` through :class:`tfrs_linear.training.Trainer` (so an
   interrupted run resumes where it stopped).
   Attentions: ``softmax``, ``linrec`` (paper normalization), ``linrec-token`` (the
   official code's token normalization), ``elastic`` (k = 16 interests), ``elastic-k32`` (k = 32).
   ``--base-config models/sasrec-ml100k.json`` trains in a reference configuration
   instead (for example RecBole's setting: prefix augmentation "last", max_len 50,
   batch 512); the attention is still set per run, the run directories get the
   configuration's name (``OUT/<attention>-<config>-seed<seed>/``) and its results form
   a separate group.
2. Evaluates the most-popular baseline (training popularity) under the same protocol.
3. Reports test HR@10, NDCG@10 and MRR@10 (full ranking, no exclusion, model selected on
   validation NDCG@10) as mean ± sd over seeds next to the RecBole anchors, and checks:
   softmax reaches the SASRec anchor (mean test HR@10 >= 0.1188 and NDCG@10 >= 0.0526);
   LinRec and ELASTIC are within 3 % (relative) of softmax or better (mean test NDCG@10
   and HR@10 >= 0.97 x softmax's).
4. Time to the anchor's quality. The anchor's 0.0526 is a TEST figure, and a test figure
   must not drive anything during training; so the time-to-target is defined on
   validation: the training seconds (the wall time of the training epochs only — data
   pipeline, first-call XLA compilation and the Keras fit loop included, the per-epoch
   validation, checkpointing and the final evaluation excluded) summed over the epochs
   up to and including the FIRST epoch whose validation NDCG@10 reaches the anchor's
   best validation NDCG@10, 0.0655 (RecBole SASRec, epoch 6, ≈16 min of training on these
   2 cores); "not reached" otherwise. Also reported: the training seconds to the best
   epoch and the whole wall time of the run.
5. Training throughput (``--skip-throughput`` / ``--throughput-only``): training
   sequences per second of a full train step (forward, full-catalogue CE loss, backward,
   Adam update; XLA on, batch ``--batch-size``, regime "all", real ml-100k batches) at
   max_len 200 and 1000 (``--throughput-buckets 1,4,4/8``: also with the training
   batches cut to 4 length buckets, and regrouped within windows of 8 batches first,
   timed over whole epochs), measured over ``--throughput-steps`` steps after
   ``--throughput-warmup`` warm-up steps, in ``--throughput-rounds`` rounds; within a
   round the attentions are measured one after the other in one process (order rotated
   each round), and each round's throughput is divided by softmax's of the same round.
   The table gives the median over rounds. The cores are shared: absolute figures are
   noisy, the ratios less so.

6. The picture: validation NDCG@10 against cumulative training seconds, one line per run
   (seed), one colour per attention, in the default setting (``OUT/valid_ndcg_vs_seconds.png``),
   drawn from each run's per-epoch record in ``results.json`` (``curve``: the epoch's
   training seconds ``train_s`` and its validation NDCG@10). ``--plot-only`` draws it
   from an existing ``results.json`` without training (no TensorFlow work).

7. Overrides: ``--set KEY=VALUE`` (repeatable; any ``ModelConfig``/``TrainConfig`` field
   but the seed, the attention and the precision, which have their own flags),
   ``--precision float32,mixed_bfloat16,...`` (each (seed, attention) is trained in each
   listed precision, one right after the other: paired runs under the same load), and
   ``--max-len``/``--batch-size``/``--epochs`` away from the setting's values. Whatever
   differs from the setting's own configuration names the run and its result group:
   ``linrec-seed2020-len50-ep20-mixed_bfloat16`` in setting
   ``default-len50-ep20-mixed_bfloat16``, ``softmax-seed2020-positions_none`` in
   ``default-positions_none``; a value equal to the setting's is no override. Results of
   different overrides are never mixed in one row; the issue's checks are made on the
   settings without overrides only. The records keep ``base_setting``, ``overrides`` and
   the 1-minute load average at the start and end of the run.
8. Precision (issue #14): ``OUT/precision.md`` pairs every run in another precision with
   the float32 run of the same setting, attention and seed, and reports the best
   validation NDCG@10 of each, its ratio to float32's (the bar: >= 0.97, all finite) and
   the training seconds per epoch (ratio to float32's).

Outputs: ``OUT/results.json`` (everything, merged with what earlier invocations wrote
there), ``OUT/results.md`` (Markdown tables), ``OUT/valid_ndcg_vs_seconds.png`` and,
when there are paired precision runs, ``OUT/precision.md``. ``--runs-dir`` puts the run
directories elsewhere than OUT (e.g. ``runs/...`` while OUT is ``docs/quality``);
``--stop-starting-at HH:MM`` starts no run after that UTC time. Progress goes to stdout.

Usage (from the repository root)::

    PYTHONUNBUFFERED=1 .venv/bin/python scripts/quality_ml100k.py --throughput-only
    PYTHONUNBUFFERED=1 .venv/bin/python scripts/quality_ml100k.py --seeds 2020 --skip-throughput
    PYTHONUNBUFFERED=1 .venv/bin/python scripts/quality_ml100k.py            # 3 seeds + throughput
    PYTHONUNBUFFERED=1 .venv/bin/python scripts/quality_ml100k.py --seeds 2020 \\
        --attentions softmax --base-config models/sasrec-ml100k.json --skip-throughput
    PYTHONUNBUFFERED=1 .venv/bin/python scripts/quality_ml100k.py --skip-throughput \\
        --max-len 50 --epochs 20 --precision float32,mixed_bfloat16,mixed_float16 \\
        --out docs/quality --runs-dir runs/quality-precision          # paired precision runs
    PYTHONUNBUFFERED=1 .venv/bin/python scripts/quality_ml100k.py --skip-throughput \\
        --set positions=none --out docs/quality --runs-dir runs/quality-positions
    .venv/bin/python scripts/quality_ml100k.py --report-only     # rewrite results.md
    .venv/bin/python scripts/quality_ml100k.py --out docs/quality --plot-only   # the PNG
"""

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("PYTHONUNBUFFERED", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tfrs_linear.keras2 import require_keras2  # noqa: E402

require_keras2()  # sets TF_USE_LEGACY_KERAS=1 before tf.keras is touched

import tensorflow as tf  # noqa: E402

from tfrs_linear import data as data_lib  # noqa: E402
from tfrs_linear.config import load_config  # noqa: E402
from tfrs_linear.constants import PRECISIONS  # noqa: E402

# The modules of this script live in scripts/quality/ (scripts/ is sys.path[0] when the
# script is run, not when it is loaded from a file by a test).
_SCRIPTS = str(Path(__file__).resolve().parent)
if _SCRIPTS not in sys.path:
    sys.path.insert(0, _SCRIPTS)

from quality.common import ANCHORS, PLOT_FILE, RELATIVE_TOLERANCE, VALID_TARGET, VARIANTS, log  # noqa: E402
from quality.flags import is_hh_mm, parse_overrides  # noqa: E402
from quality.outputs import write_outputs  # noqa: E402
from quality.plots import PLOT_VARIANTS, plot_curves  # noqa: E402
from quality.report import print_summary  # noqa: E402
from quality.runs import RECORD_EXTRAS, most_popular, summarize_run, train_runs  # noqa: E402
from quality.throughput import throughput  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = (REPO.parent / "shared" / "data" / "ml-100k" / "ml-100k.inter")
if not DEFAULT_DATA.exists():
    DEFAULT_DATA = Path("/work/shared/data/ml-100k/ml-100k.inter")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    ints = lambda s: [int(x) for x in s.split(",") if x.strip()]  # noqa: E731
    names = lambda s: [x.strip() for x in s.split(",") if x.strip()]  # noqa: E731
    p.add_argument("--data", default=str(DEFAULT_DATA), help="ml-100k.inter (RecBole format)")
    p.add_argument("--seeds", type=ints, default=[2020, 2021, 2022], help="comma-separated (default 2020,2021,2022)")
    p.add_argument("--attentions", type=names, default=["softmax", "linrec", "elastic-recency"],
                   help=f"comma-separated, of {','.join(VARIANTS)} (default softmax,linrec,elastic-recency: "
                        "each attention as the package builds it by default)")
    p.add_argument("--epochs", type=int, default=60, help="epoch cap (early stopping may end sooner; default 60)")
    p.add_argument("--max-len", type=int, default=None, help="default 200 (or the --base-config's)")
    p.add_argument("--batch-size", type=int, default=None, help="default 128 (or the --base-config's)")
    p.add_argument("--base-config", help="train in this models/*.json setting instead of the default configuration")
    p.add_argument("--precision", type=names, default=None,
                   help=f"comma-separated, of {','.join(PRECISIONS)}: train each (seed, attention) "
                        "in each of these precisions, one after the other (paired runs); a precision "
                        "other than float32 is an override (named in the run and its result group)")
    p.add_argument("--set", dest="set_values", action="append", default=[], metavar="KEY=VALUE",
                   help="override a ModelConfig/TrainConfig field (repeatable; VALUE is read as "
                        "JSON when it parses, e.g. 50, true, 0.1, else as a string): the runs and "
                        "their result group are named after it (e.g. linrec-seed2020-positions_none)")
    p.add_argument("--out", default="runs/quality", help="output folder (default runs/quality)")
    p.add_argument("--runs-dir", default=None,
                   help="where the run directories go (default: OUT), e.g. runs/x while OUT is docs/quality")
    p.add_argument("--stop-starting-at", default=None, metavar="HH:MM",
                   help="start no run after this UTC time (a run already going finishes)")
    p.add_argument("--throughput-only", action="store_true", help="only the throughput measurement")
    p.add_argument("--skip-throughput", action="store_true", help="no throughput measurement")
    p.add_argument("--report-only", action="store_true", help="rewrite results.md from results.json")
    p.add_argument("--plot-only", action="store_true",
                   help=f"draw OUT/{PLOT_FILE} from OUT/results.json, without training")
    p.add_argument("--throughput-lengths", type=ints, default=[200, 1000])
    p.add_argument("--throughput-buckets", type=names, default=["1"],
                   help="length bucket modes to measure at each length: N (N widths, every "
                        "batch keeps its rows) or N/W (rows regrouped within windows of W "
                        "batches); default 1: every batch max_len wide; e.g. 1,4,4/8, timed "
                        "over whole epochs")
    p.add_argument("--throughput-steps", type=int, default=5)
    p.add_argument("--throughput-warmup", type=int, default=2)
    p.add_argument("--throughput-rounds", type=int, default=3)
    p.add_argument("--keras-verbose", action="store_true", help="Keras' per-epoch line too")
    args = p.parse_args(argv)
    bad = [a for a in args.attentions if a not in VARIANTS]
    if bad:
        p.error(f"unknown attention(s) {bad}; choose from {list(VARIANTS)}")
    if args.throughput_only and args.skip_throughput:
        p.error("--throughput-only and --skip-throughput exclude each other")
    bad = [x for x in args.precision or [] if x not in PRECISIONS]
    if bad:
        p.error(f"--precision: unknown {bad}; choose from {list(PRECISIONS)}")
    if args.stop_starting_at and not is_hh_mm(args.stop_starting_at):
        p.error(f"--stop-starting-at: expected HH:MM (UTC), got {args.stop_starting_at!r}")
    try:
        args.overrides = parse_overrides(args.set_values)
    except ValueError as e:
        p.error(str(e))
    return args


def main(argv=None):
    args = parse_args(argv)
    out = Path(args.out)
    if not out.is_absolute():
        out = REPO / out
    args.out = str(out)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    results.setdefault("runs", {})
    if args.plot_only:
        drawn = plot_curves(results, out / PLOT_FILE)
        log(f"wrote {out / PLOT_FILE}: {len(drawn)} runs ("
            + ", ".join(f"{v} {list(drawn.values()).count(v)}" for v in PLOT_VARIANTS) + ")")
        return 0
    if args.report_only:
        for name, rec in list(results["runs"].items()):
            run_dir = Path(rec.get("dir", out / name))
            if "error" not in rec and (run_dir / "metrics.json").exists():
                configs = load_config(run_dir / "config.json")
                extra = {k: rec[k] for k in RECORD_EXTRAS if k in rec}
                results["runs"][name] = summarize_run(name, rec["variant"], rec["setting"], configs, run_dir,
                                                      rec.get("wall_seconds_this_invocation"), extra)
        write_outputs(results, out)
        print_summary(results)
        return 0
    t_start = time.perf_counter()
    results["settings"] = {
        "data": args.data,
        "machine": f"{platform.node()}, {os.cpu_count()} logical cores, TF {tf.__version__}, "
                   f"{'GPU' if tf.config.list_physical_devices('GPU') else 'CPU'}",
        "anchors": ANCHORS, "valid_target": VALID_TARGET, "relative_tolerance": RELATIVE_TOLERANCE,
    }
    data = data_lib.load_dataset(args.data)
    log(data.describe())
    if not args.throughput_only and ("most_popular" not in results or not args.precision
                                     and not args.overrides and not args.max_len):
        results["most_popular"] = most_popular(data, args.max_len or 200)
        mp = results["most_popular"]["test"]
        log(f"most-popular: test NDCG@10 {mp['ndcg@10']:.4f} HR@10 {mp['hr@10']:.4f} MRR@10 {mp['mrr@10']:.4f} "
            f"(RecBole: NDCG@10 0.0224, HR@10 0.0498)")
        write_outputs(results, out)
    if not args.skip_throughput:
        log("throughput: " + ", ".join(f"N={n}" for n in args.throughput_lengths))
        tp = throughput(args, data)
        tp["measured"] = datetime.datetime.now().isoformat(timespec="seconds")
        results["throughput"] = tp
        write_outputs(results, out)
    if not args.throughput_only:
        train_runs(args, data, results)
    write_outputs(results, out)
    print_summary(results)
    log(f"wrote {out / 'results.json'} and {out / 'results.md'} ({time.perf_counter() - t_start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
