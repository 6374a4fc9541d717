#!/usr/bin/env python
"""Time to quality of the reference configurations, measured as a user runs them.

For every configuration file and seed, runs exactly::

    tfrs-linear train --config F --data DATA --output RUNS/<name>-seed<seed> --seed S

in a fresh process, one run at a time, and reads the run's ``metrics.json``: its
``history`` gives, per epoch, the seconds since the command started (data loading and
XLA compilation included, validation excluded, cumulative across resumes) and the
validation metrics. The time to quality of a run is the ``seconds`` of its first epoch
whose validation NDCG@10 reaches ``--target`` (0.0655: the RecBole SASRec anchor's best
validation NDCG@10 on ml-100k, which took about 990 s of training on these 2 cores);
"not reached" otherwise. Per configuration: the median over the seeds (a run that does
not reach the target counts as slower than every run that does) and how many reached it,
next to the test NDCG@10 / HR@10 at the best epoch (the anchor's test NDCG@10 is 0.0526)
and the load average before and after each run (the measurement wants an idle machine).

An interrupted measurement resumes: a run whose ``metrics.json`` exists is read, not
trained again (its wall time and load averages come from the previous report); one that
stopped part-way resumes where it stopped (the CLI does that). A ``note`` in the report's
JSON (a remark on how it was made) is kept and printed under the tables.

Usage::

    python scripts/time_to_quality.py --configs models/linrec-fast-ml100k.json,\\
        models/elastic-fast-ml100k.json --seeds 2020,2021,2022 --out docs/quality
"""

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET = 0.0655
ANCHOR_TEST_NDCG = 0.0526


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", required=True, help="comma-separated configuration files")
    p.add_argument("--seeds", default="2020,2021,2022")
    p.add_argument("--data", default=str(ROOT.parent / "shared/data/ml-100k/ml-100k.inter"))
    p.add_argument("--runs-dir", default="runs/time-to-quality",
                   help="where the run directories go")
    p.add_argument("--out", default="runs/time-to-quality",
                   help="where time_to_quality.{json,md} go")
    p.add_argument("--target", type=float, default=TARGET,
                   help="validation NDCG@10 to reach (default %(default)s)")
    p.add_argument("--report-only", action="store_true",
                   help="rewrite the report from OUT/time_to_quality.json")
    args = p.parse_args(argv)
    args.configs = [c for c in args.configs.split(",") if c]
    args.seeds = [int(s) for s in args.seeds.split(",") if s]
    for config in args.configs:
        if not Path(config).is_file():
            p.error(f"--configs: no file {config}")
    if not args.report_only and not Path(args.data).is_file():
        p.error(f"--data: no file {args.data}")
    return args


def _load():
    return [round(v, 2) for v in os.getloadavg()]


def run_one(config, seed, args, earlier=None):
    """Trains one (configuration, seed) through the CLI (unless done); its record. A run
    read back keeps the wall time and load averages of ``earlier`` (its record in the
    previous report), which only the invocation that trained it could measure."""
    name = Path(config).stem
    # Absolute: the command runs in the repository (cwd=ROOT), the script may not.
    output = Path(args.runs_dir).resolve() / f"{name}-seed{seed}"
    metrics_file = output / "metrics.json"
    measured = {k: (earlier or {}).get(k) for k in ("wall_seconds", "load_before", "load_after")}
    if not metrics_file.exists():
        command = [sys.executable, "-m", "tfrs_linear", "train", "--config", config,
                   "--data", args.data, "--output", str(output), "--seed", str(seed)]
        print(f"[{datetime.datetime.now():%H:%M:%S}] {' '.join(command)}", flush=True)
        load_before, t0 = _load(), time.monotonic()
        subprocess.run(command, check=True, cwd=ROOT)
        measured = {"wall_seconds": time.monotonic() - t0, "load_before": load_before,
                    "load_after": _load()}
    metrics = json.loads(metrics_file.read_text())
    history = metrics["history"]
    reached = next((h for h in history if h["valid"]["ndcg@10"] >= args.target), None)
    return {
        "config": config, "seed": seed, "output": str(output),
        "seconds_to_target": None if reached is None else reached["seconds"],
        "epoch_to_target": None if reached is None else reached["epoch"],
        "best_epoch": metrics["best_epoch"], "epochs_run": metrics["epochs_run"],
        "best_valid_ndcg@10": max(h["valid"]["ndcg@10"] for h in history),
        "test": {k: metrics["test"][k] for k in ("ndcg@10", "hr@10", "mrr@10")},
        "train_seconds": history[-1]["seconds"], **measured,
    }


def summarize(records, target):
    """Per configuration: the median time to target (not reached = slowest), reached n."""
    out = []
    for config in dict.fromkeys(r["config"] for r in records):
        rows = [r for r in records if r["config"] == config]
        times = [r["seconds_to_target"] for r in rows]
        # A run that never reaches the target is slower than any that does: infinity.
        median = statistics.median(math.inf if t is None else t for t in times)
        median = None if math.isinf(median) else median
        out.append({
            "config": config, "seeds": [r["seed"] for r in rows],
            "median_seconds_to_target": median,
            "reached": sum(t is not None for t in times), "runs": len(rows),
            "mean_test_ndcg@10": statistics.mean(r["test"]["ndcg@10"] for r in rows),
            "mean_test_hr@10": statistics.mean(r["test"]["hr@10"] for r in rows),
            "target": target,
        })
    return out


def _seconds(value):
    return "not reached" if value is None else f"{value:.0f}"


def render(report):
    lines = [
        "# Time to quality on ml-100k",
        "",
        f"- updated {report['updated']}; data `{report['data']}`; machine: "
        f"{report['machine']}",
        "- each run: `tfrs-linear train --config F --data DATA --output D --seed S` in a "
        "fresh process, one at a time; seconds from the start of the command (data loading "
        "and XLA compilation included, validation excluded: `metrics.json` `history`) to the "
        f"first epoch whose validation NDCG@10 reaches {report['target']} (the RecBole SASRec "
        "anchor's best; ≈990 s of training on these 2 cores). Median over seeds, a run that "
        "never reaches it counted as the slowest. Test metrics at the best validation epoch "
        f"(anchor: test NDCG@10 {ANCHOR_TEST_NDCG}).",
        "",
        "| configuration | seeds | median s to target | reached | mean test NDCG@10 | mean test HR@10 |",
        "|---|---|---|---|---|---|",
    ]
    for s in report["summary"]:
        lines.append(
            f"| `{s['config']}` | {','.join(map(str, s['seeds']))} | "
            f"{_seconds(s['median_seconds_to_target'])} | {s['reached']} of {s['runs']} | "
            f"{s['mean_test_ndcg@10']:.4f} | {s['mean_test_hr@10']:.4f} |")
    lines += ["", "| run | s to target (epoch) | best epoch / run | best valid NDCG@10 | "
              "test NDCG@10 | test HR@10 | train s | load before → after |",
              "|---|---|---|---|---|---|---|---|"]
    for r in report["runs"]:
        to = _seconds(r["seconds_to_target"])
        if r["epoch_to_target"] is not None:
            to += f" ({r['epoch_to_target']})"
        load = f"{r['load_before']} → {r['load_after']}" if r["load_after"] else "(read back)"
        lines.append(
            f"| {Path(r['config']).stem}-seed{r['seed']} | {to} | {r['best_epoch']}/"
            f"{r['epochs_run']} | {r['best_valid_ndcg@10']:.4f} | {r['test']['ndcg@10']:.4f} | "
            f"{r['test']['hr@10']:.4f} | {r['train_seconds']:.0f} | {load} |")
    if report.get("note"):
        lines += ["", report["note"]]
    return "\n".join(lines) + "\n"


def main(argv=None):
    args = parse_args(argv)
    out = Path(args.out)
    json_file = out / "time_to_quality.json"
    earlier = json.loads(json_file.read_text()) if json_file.exists() else {}
    if args.report_only:
        report = earlier
    else:
        before = {(r["config"], r["seed"]): r for r in earlier.get("runs", [])}
        records = [run_one(c, s, args, before.get((c, s)))
                   for c in args.configs for s in args.seeds]
        report = {
            "updated": datetime.datetime.now().isoformat(timespec="seconds"),
            "data": args.data, "target": args.target,
            "machine": f"{platform.node() or 'host'}, {os.cpu_count()} logical cores",
            "summary": summarize(records, args.target), "runs": records,
            **({"note": earlier["note"]} if earlier.get("note") else {}),
        }
        out.mkdir(parents=True, exist_ok=True)
        json_file.write_text(json.dumps(report, indent=1) + "\n")
    (out / "time_to_quality.md").write_text(render(report))
    print(render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
