"""``run_bench``: the driver process, from the options to ``bench.json``, ``bench.md``, ``bench.png``.

For each N and each selected configuration (one *point*), the driver skips the
measurements predicted not to fit in memory or time, runs the rest in a fresh worker
subprocess (:func:`~tfrs_linear.bench.worker.run_worker`), merges what it measured into
the report, and rewrites ``bench.json`` and ``bench.md`` so that an interrupted run still
leaves its results; ``bench.png`` is drawn at the end.

TensorFlow and the layers are imported at the top of the bench's modules, not deferred:
``import tfrs_linear`` loads TensorFlow anyway, and each worker is a new interpreter
whose environment :func:`~tfrs_linear.bench.worker.run_worker` sets, so nothing of the
driver's TensorFlow state reaches the measurements.
"""

import json
import os
import sys
import time

from tfrs_linear.bench.analysis import compute_efficiency, compute_exponents, compute_targets
from tfrs_linear.bench.machine import (
    available_memory,
    elastic_unavailable_reason,
    machine_info,
    resolve_device,
)
from tfrs_linear.bench.options import resolve_options
from tfrs_linear.bench.plan import CONFIGS, build_plan, predict_softmax_bytes, predict_step_seconds
from tfrs_linear.bench.report import plot, render_markdown
from tfrs_linear.bench.units import format_bytes, format_time
from tfrs_linear.bench.worker import run_worker

SCHEMA = "tfrs_linear.bench/1"


def run_bench(args):
    """Runs the bench (``tfrs-linear bench``); returns the exit status.

    Args:
      args: the parsed flags (see ``add_bench_arguments``).

    Returns:
      0 once the report is written.

    Raises:
      ValueError: bad options, or a GPU asked for and not seen (the CLI prints it as
        ``tfrs-linear bench: error: ...`` and exits 2).
    """
    wall0 = time.perf_counter()
    resolve_options(args)
    try:
        device, gpu_name = resolve_device(args.device)
    except RuntimeError as e:
        raise ValueError(str(e)) from None
    if args.peak_matmul_size is None:
        args.peak_matmul_size = 8192 if device == "gpu" else 2048
    os.makedirs(args.out, exist_ok=True)
    run = _BenchRun(args, device, machine_info(device, gpu_name), wall0)
    run.run_points()
    report = run.write_report(final=True)
    wall = report["wall_time_s"]
    print(f"bench: wrote {args.out}/bench.json, bench.md, bench.png in {wall:.0f} s")
    for t in report["targets"]:
        verdict = {True: "met", False: "MISSED", None: "n/a"}[t["met"]]
        print(f"  target [{verdict}] {t['description']}: {t['detail']}")
    return 0


def _base_record(name, n):
    cfg = CONFIGS[name]
    return {"config": name, **cfg, "n": n}


def _record(base, key, **fields):
    scope, pas, mode = key
    return dict(base, scope=scope, **{"pass": pas}, mode=mode, **fields)


def _settings(args, plan):
    """The ``settings`` section of ``bench.json``."""
    return {
        "lengths": list(args.lengths),
        "attentions": list(args.attentions),
        "modes": list(args.modes),
        "grid": "full" if args.full else ("quick" if args.quick else "default"),
        "plan": {k: [list(i) for i in v] for k, v in plan.items()},
        "batch_size": args.batch_size,
        "d_model": args.d_model,
        "heads": args.heads,
        "key_dim": args.d_model // args.heads,
        "num_blocks": args.num_blocks,
        "chunk_size": args.chunk_size,
        "repeats": args.repeats,
        "min_repeats": args.min_repeats,
        "warmup": args.warmup,
        "measure_seconds": args.measure_seconds,
        "memory_limit_gib": args.memory_limit_gib,
        "softmax_memory_factor": args.softmax_memory_factor,
        "max_step_seconds": args.max_step_seconds,
        "baseline_length": args.baseline_length,
        "peak_matmul_size": args.peak_matmul_size,
        "seed": args.seed,
        "dtype": "float32",
    }


def worker_spec(args, name, n, device, to_run, peak_matmul_size):
    """The spec of one point for :func:`~tfrs_linear.bench.worker.run_worker`.

    Args:
      args: the resolved options.
      name: the configuration (a key of ``CONFIGS``).
      n: the sequence length.
      device: ``"cpu"`` or ``"gpu"``.
      to_run: the measurements, ``(scope, pass, mode)``; the first is the memory subject.
      peak_matmul_size: the dense matmul to measure as the FLOP/s reference, or None.
    """
    return {
        "config": name,
        "cfg": CONFIGS[name],
        "n": n,
        "device": device,
        "batch_size": args.batch_size,
        "d_model": args.d_model,
        "heads": args.heads,
        "num_blocks": args.num_blocks,
        "chunk_size": args.chunk_size,
        "seed": args.seed,
        "measurements": [list(k) for k in to_run],
        "modes": list(args.modes),
        "repeats": args.repeats,
        "min_repeats": args.min_repeats,
        "warmup": args.warmup,
        "measure_seconds": args.measure_seconds,
        "baseline_length": args.baseline_length,
        "peak_matmul_size": peak_matmul_size,
    }


class _BenchRun:
    """One bench run: the plan, the records so far, and the report they make.

    Args:
      args: the resolved options.
      device: ``"cpu"`` or ``"gpu"``.
      machine: the ``machine`` section of the report (``machine_info``).
      wall0: ``time.perf_counter()`` at the start, for the wall time.
    """

    def __init__(self, args, device, machine, wall0):
        self.args, self.device, self.machine, self.wall0 = args, device, machine, wall0
        self.plan = build_plan(args)
        self.elastic_reason = None
        if any(CONFIGS[n]["attention"] == "elastic" for n in args.attentions):
            self.elastic_reason = elastic_unavailable_reason()
            if self.elastic_reason:
                print(f"bench: ELASTIC unavailable: {self.elastic_reason}", flush=True)
        self.timings, self.memory, self.points = [], [], []
        self.history = {}  # {(config, scope, pass, mode): [(n, median seconds)]}
        self.peak = None  # the dense matmul's measurement, from the first worker

    def write_report(self, final):
        """bench.json and bench.md (rewritten after every point), bench.png at the end."""
        args = self.args
        try:
            self.machine["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
        except OSError:
            pass
        report = {
            "schema": SCHEMA,
            "machine": self.machine,
            "settings": _settings(args, self.plan),
            "elastic_unavailable": self.elastic_reason,
            "timings": self.timings,
            "memory": self.memory,
            "points": self.points,
            "peak_matmul": self.peak,
        }
        report["exponents"] = compute_exponents(self.timings, self.memory)
        report["efficiency"] = compute_efficiency(self.timings, self.peak, args)
        report["targets"] = compute_targets(report)
        report["wall_time_s"] = time.perf_counter() - self.wall0
        report["complete"] = final
        json_path = os.path.join(args.out, "bench.json")
        with open(json_path, "w") as f:
            json.dump(report, f, indent=1)
        with open(os.path.join(args.out, "bench.md"), "w") as f:
            f.write(render_markdown(report))
        if final:
            try:
                plot(report, os.path.join(args.out, "bench.png"))
            except Exception as e:  # noqa: BLE001 - the numbers matter more than the figure
                print(f"bench: could not draw bench.png: {type(e).__name__}: {e}", file=sys.stderr)
        return report

    def run_points(self):
        """Every point, N by N (short first: their times predict the long ones)."""
        args = self.args
        total = sum(1 for _ in args.lengths for name in args.attentions if self.plan[name])
        done = 0
        for n in args.lengths:
            for name in args.attentions:
                if not self.plan[name]:
                    continue
                done += 1
                self._run_point(name, n, f"[{done}/{total}]")

    def _run_point(self, name, n, progress):
        cfg, items = CONFIGS[name], self.plan[name]
        base = _base_record(name, n)
        if cfg["attention"] == "elastic" and self.elastic_reason:
            self._mark_unavailable(base, items)
            return
        to_run = self._triage(name, n, base, items)
        if not to_run:
            print(f"{progress} {name} N={n}: skipped", flush=True)
            return
        spec = worker_spec(
            self.args, name, n, self.device, to_run,
            self.args.peak_matmul_size if self.peak is None else None,
        )
        t0 = time.perf_counter()
        result, error = run_worker(spec, self.args, self.device)
        seconds = time.perf_counter() - t0
        self.points.append({"config": name, "n": n, "wall_s": seconds, "error": error})
        summary = self._merge(name, n, base, to_run, result, error)
        print(f"{progress} {name} N={n} ({seconds:.1f} s): " + ", ".join(summary), flush=True)
        if error:
            print(f"    {error}", flush=True)
        self.write_report(final=False)

    def _mark_unavailable(self, base, items):
        reason = f"unavailable: {self.elastic_reason}"
        for key in items:
            self.timings.append(_record(base, key, status="unavailable", reason=reason))
        self.memory.append(_record(base, items[0], status="unavailable", reason=reason))

    def _triage(self, name, n, base, items):
        """Records the measurements predicted not to fit; returns the others."""
        args, cfg = self.args, CONFIGS[name]
        limit, limit_source = available_memory(args, self.device)
        to_run = []
        for index, (scope, pas, mode) in enumerate(items):
            key = (scope, pas, mode)
            predicted = predict_softmax_bytes(cfg, scope, pas, n, args)
            reason = None
            if predicted is not None and predicted > limit:
                reason = (
                    f"skipped: predicted {format_bytes(predicted)} > available "
                    f"{format_bytes(limit)} ({limit_source})"
                )
            else:
                seconds = predict_step_seconds(self.history, name, cfg, key, n)
                if seconds is not None and seconds > args.max_step_seconds:
                    reason = (
                        f"skipped: predicted {seconds:.1f} s per step > "
                        f"--max-step-seconds {args.max_step_seconds:g}"
                    )
            rec = _record(base, key)
            if predicted is not None:
                rec["predicted_bytes"] = predicted
            if reason:
                self.timings.append(dict(rec, status="skipped", reason=reason))
                if index == 0:
                    self.memory.append(dict(rec, status="skipped", reason=reason))
            else:
                to_run.append(key)
        return to_run

    def _merge(self, name, n, base, to_run, result, error):
        """Adds a worker's records to the report; returns the progress line's items."""
        cfg = CONFIGS[name]
        got = {}
        for rec in (result or {}).get("timings", []):
            got[(rec["scope"], rec["pass"], rec["mode"])] = rec
        for mem in (result or {}).get("memory", []):
            self.memory.append(dict(base, **mem))
        if result and result.get("peak_matmul"):
            self.peak = result["peak_matmul"]
        summary = []
        for key in to_run:
            rec = _record(base, key)
            predicted = predict_softmax_bytes(cfg, key[0], key[1], n, self.args)
            if predicted is not None:
                rec["predicted_bytes"] = predicted
            worker_rec = got.get(key)
            if worker_rec is None or (worker_rec.get("status") != "ok" and error):
                rec.update(status="failed", reason=error or "not measured")
            else:
                rec.update(worker_rec)
                if rec.get("status") == "failed" and not rec.get("reason"):
                    rec["reason"] = error or "failed"
            self.timings.append(rec)
            if rec.get("status") == "ok":
                self.history.setdefault((name,) + key, []).append((n, rec["median_s"]))
                summary.append(f"{'/'.join(key)} {format_time(rec['median_s'])}")
            else:
                summary.append(f"{'/'.join(key)} {rec.get('status')}")
        if error and not any(m["config"] == name and m["n"] == n for m in self.memory):
            self.memory.append(_record(base, to_run[0], status="failed", reason=error))
        return summary
