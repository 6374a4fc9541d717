"""What the measurements say: statistics, growth exponents, LinRec's efficiency, targets.

Pure Python and numpy over the records of ``bench.json`` (no TensorFlow):
:func:`summarize` condenses a measurement's repetitions, :func:`compute_exponents` fits
the growth in N, :func:`compute_efficiency` relates the LinRec op to its two matmuls and
to a dense matmul, and :func:`compute_targets` checks the project's speed, memory and
linearity targets at ``TARGET_N`` and ``TARGET_LONG_N``.
"""

import math

import numpy as np

from tfrs_linear.bench.plan import MODES
from tfrs_linear.bench.units import format_bytes, format_time

TARGET_N = 4096
TARGET_LONG_N = 16384

# The memory methods that measure a whole point (not one warm step), as the worker names them.
POINT_MEMORY_METHODS = ("fresh-subprocess-rss-hwm", "gpu-memory-stats")


def summarize(samples):
    """Median, quartiles, IQR, min and max of a list of seconds."""
    x = np.asarray(samples, dtype=float)
    if x.size == 0:
        return {}
    q1, med, q3 = (float(v) for v in np.percentile(x, [25, 50, 75]))
    return {
        "median_s": med,
        "q1_s": q1,
        "q3_s": q3,
        "iqr_s": q3 - q1,
        "min_s": float(x.min()),
        "max_s": float(x.max()),
        "repeats": int(x.size),
    }


def fit_exponent(ns, values):
    """Least-squares slope of log(value) vs log(N); None with fewer than 2 usable points."""
    pts = [(float(n), float(v)) for n, v in zip(ns, values) if n > 0 and v and v > 0]
    if len({n for n, _ in pts}) < 2:
        return None
    lx = [math.log(n) for n, _ in pts]
    ly = [math.log(v) for _, v in pts]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    sxx = sum((a - mx) ** 2 for a in lx)
    sxy = sum((a - mx) * (b - my) for a, b in zip(lx, ly))
    return sxy / sxx


def ok_rows(timings, **match):
    """The records with status ``"ok"`` whose fields equal ``match`` (e.g. ``n=4096``)."""
    return [
        r
        for r in timings
        if r.get("status") == "ok" and all(r.get(k) == v for k, v in match.items())
    ]


def best_timing(timings, config, n, scope="layer", pas="fwdbwd"):
    """The fastest ``"ok"`` record of a configuration at N over the modes, or None."""
    rows = ok_rows(timings, config=config, n=n, scope=scope, **{"pass": pas})
    if not rows:
        return None
    return min(rows, key=lambda r: r["median_s"])


def primary_memory(memory, config, n):
    """The point memory (attention layer, fwd+bwd) of a configuration at N, or None."""
    for m in memory:
        if m["config"] == config and m["n"] == n and m.get("method") in (
            POINT_MEMORY_METHODS
        ) and m.get("status") == "ok" and m.get("scope") == "layer" and m.get("pass") == "fwdbwd":
            return m
    return None


def compute_exponents(timings, memory):
    """Time and memory growth exponents per (config, scope, pass, mode).

    Each row holds the slope over all measured lengths and over the last two (closer to
    the asymptote: small N is overhead-bound).
    """
    out = []
    keys = []
    for r in timings:
        key = (r["config"], r["scope"], r["pass"], r["mode"])
        if key not in keys:
            keys.append(key)
    for config, scope, pas, mode in keys:
        rows = sorted(
            ok_rows(timings, config=config, scope=scope, mode=mode, **{"pass": pas}),
            key=lambda r: r["n"],
        )
        ns = [r["n"] for r in rows]
        ts = [r["median_s"] for r in rows]
        mem_rows = sorted(
            (
                m
                for m in memory
                if m.get("status") == "ok"
                and (m["config"], m["scope"], m["pass"], m["mode"]) == (config, scope, pas, mode)
                and m.get("bytes", 0) > 0
            ),
            key=lambda m: m["n"],
        )
        out.append(
            {
                "config": config,
                "scope": scope,
                "pass": pas,
                "mode": mode,
                "lengths": ns,
                "time_exponent": fit_exponent(ns, ts),
                "time_exponent_last_two": fit_exponent(ns[-2:], ts[-2:]),
                "memory_lengths": [m["n"] for m in mem_rows],
                "memory_method": mem_rows[0]["method"] if mem_rows else None,
                "memory_exponent": fit_exponent(
                    [m["n"] for m in mem_rows], [m["bytes"] for m in mem_rows]
                ),
                "memory_exponent_last_two": fit_exponent(
                    [m["n"] for m in mem_rows][-2:], [m["bytes"] for m in mem_rows][-2:]
                ),
            }
        )
    return out


def compute_efficiency(timings, peak, args):
    """LinRec op vs its two matmuls (same shapes, same run) and vs a dense matmul.

    Args:
      timings: the timing records.
      peak: the dense matmul's measurement (``flops_per_s``), or None.
      args: the options (``batch_size``, ``heads``, ``d_model``: the useful FLOPs).
    """
    out = []
    d_head = args.d_model // args.heads
    peak_flops = (peak or {}).get("flops_per_s")
    for op in ok_rows(timings, scope="op"):
        mm = ok_rows(
            timings, config=op["config"], n=op["n"], scope="matmuls", mode=op["mode"],
            **{"pass": op["pass"]},
        )
        # The two unavoidable matmuls: 2 x (2 B H N d_k d_v) forward; backward twice that.
        flops = 4.0 * args.batch_size * args.heads * op["n"] * d_head * d_head
        if op["pass"] == "fwdbwd":
            flops *= 3
        row = {
            "config": op["config"],
            "n": op["n"],
            "pass": op["pass"],
            "mode": op["mode"],
            "op_s": op["median_s"],
            "matmuls_s": mm[0]["median_s"] if mm else None,
            "ratio": (op["median_s"] / mm[0]["median_s"]) if mm else None,
            "useful_flops": flops,
            "op_flops_per_s": flops / op["median_s"],
            "matmuls_flops_per_s": (flops / mm[0]["median_s"]) if mm else None,
            "peak_flops_per_s": peak_flops,
            "op_fraction_of_peak": (flops / op["median_s"] / peak_flops) if peak_flops else None,
        }
        out.append(row)
    # The op's best mode per (config, n, pass).
    for row in out:
        same = [
            r for r in out
            if (r["config"], r["n"], r["pass"]) == (row["config"], row["n"], row["pass"])
        ]
        row["best_mode"] = min(same, key=lambda r: r["op_s"])["mode"] == row["mode"]
    return out


def compute_targets(report):
    """The targets' verdicts: ``[{id, description, met, value, threshold, detail}]``.

    ``met`` is True, False, or None when the grid did not measure what the target needs.

    Args:
      report: the report so far (``timings``, ``memory``, ``efficiency``,
        ``elastic_unavailable``).
    """
    timings = report["timings"]
    targets = [_speed_target(timings, "linrec_speed", "linrec-paper", 20.0, "LinRec (paper)")]
    targets.append(_memory_target(report["memory"]))
    elastic_speed = _speed_target(timings, "elastic_speed", "elastic-k32", 10.0, "ELASTIC (k=32)")
    if elastic_speed["met"] is None and report.get("elastic_unavailable"):
        elastic_speed["detail"] = f"n/a: ELASTIC unavailable: {report['elastic_unavailable']}"
    targets.append(elastic_speed)
    targets.append(_efficiency_target(report["efficiency"]))
    for tid, config, label in (("linrec_linear", "linrec-paper", "LinRec (paper)"),
                               ("elastic_linear", "elastic-k32", "ELASTIC (k=32)")):
        targets.append(_linear_target(timings, tid, config, label, report.get("elastic_unavailable")))
    return targets


def _speed_target(timings, tid, config, threshold, label):
    s = best_timing(timings, "softmax", TARGET_N)
    c = best_timing(timings, config, TARGET_N)
    desc = f"{label} >= {threshold:g}x faster than softmax at N={TARGET_N} (layer, fwd+bwd, best mode each)"
    if not s or not c:
        missing = "softmax" if not s else config
        return dict(id=tid, description=desc, met=None, value=None, threshold=threshold,
                    detail=f"n/a: {missing} at N={TARGET_N} not measured")
    ratio = s["median_s"] / c["median_s"]
    per_mode = []
    for mode in MODES:
        sm = ok_rows(timings, config="softmax", n=TARGET_N, scope="layer", mode=mode, **{"pass": "fwdbwd"})
        cm = ok_rows(timings, config=config, n=TARGET_N, scope="layer", mode=mode, **{"pass": "fwdbwd"})
        if sm and cm:
            per_mode.append(f"{mode} {sm[0]['median_s'] / cm[0]['median_s']:.1f}x")
    detail = (
        f"{ratio:.1f}x (softmax {format_time(s['median_s'])} {s['mode']}, {config} "
        f"{format_time(c['median_s'])} {c['mode']}"
        + (f"; same mode: {', '.join(per_mode)}" if per_mode else "") + ")"
    )
    return dict(id=tid, description=desc, met=ratio >= threshold, value=ratio,
                threshold=threshold, detail=detail)


def _memory_target(memory):
    desc = f"LinRec (paper) >= 10x less peak memory than softmax at N={TARGET_N} (layer, fwd+bwd)"
    sm, lm = primary_memory(memory, "softmax", TARGET_N), primary_memory(memory, "linrec-paper", TARGET_N)
    if sm and lm and lm["bytes"] > 0:
        ratio = sm["bytes"] / lm["bytes"]
        return dict(id="linrec_memory", description=desc, met=ratio >= 10.0, value=ratio,
                    threshold=10.0, detail=f"{ratio:.1f}x (softmax {format_bytes(sm['bytes'])}, "
                    f"LinRec {format_bytes(lm['bytes'])}; {sm['method']})")
    return dict(id="linrec_memory", description=desc, met=None, value=None,
                threshold=10.0, detail="n/a: memory at N=4096 not measured for both")


def _efficiency_target(efficiency):
    desc = "LinRec (paper) op within 1.5x of its two matmuls (fwd+bwd, its best mode, largest N)"
    rows = [r for r in efficiency if r["config"] == "linrec-paper"
            and r["pass"] == "fwdbwd" and r["best_mode"] and r["ratio"] is not None]
    if not rows:
        return dict(id="linrec_efficiency", description=desc, met=None, value=None,
                    threshold=1.5, detail="n/a: op and matmuls not measured")
    row = max(rows, key=lambda r: r["n"])
    others = ", ".join(
        f"N={r['n']} {r['ratio']:.2f}x ({r['mode']})" for r in sorted(rows, key=lambda r: r["n"])
    )
    return dict(id="linrec_efficiency", description=desc, met=row["ratio"] <= 1.5,
                value=row["ratio"], threshold=1.5,
                detail=f"{row['ratio']:.2f}x at N={row['n']} in {row['mode']} "
                f"(op {format_time(row['op_s'])}, matmuls {format_time(row['matmuls_s'])}); all: {others}")


def _linear_target(timings, tid, config, label, elastic_unavailable):
    desc = f"{label} time from N={TARGET_N} to {TARGET_LONG_N} at most 4.5x (layer, fwd+bwd, its best mode at N={TARGET_LONG_N})"
    long = best_timing(timings, config, TARGET_LONG_N)
    short = None
    if long:
        rows = ok_rows(timings, config=config, n=TARGET_N, scope="layer", mode=long["mode"], **{"pass": "fwdbwd"})
        short = rows[0] if rows else None
    if long and short:
        ratio = long["median_s"] / short["median_s"]
        return dict(id=tid, description=desc, met=ratio <= 4.5, value=ratio, threshold=4.5,
                    detail=f"{ratio:.2f}x in {long['mode']} ({format_time(short['median_s'])} -> "
                    f"{format_time(long['median_s'])})")
    detail = f"n/a: {config} at N={TARGET_N} and {TARGET_LONG_N} not both measured"
    if config.startswith("elastic") and elastic_unavailable:
        detail = f"n/a: ELASTIC unavailable: {elastic_unavailable}"
    return dict(id=tid, description=desc, met=None, value=None, threshold=4.5, detail=detail)
