"""``bench.md`` and ``bench.png``: the report's tables and figure.

:func:`render_markdown` turns the report (the content of ``bench.json``) into markdown,
one section per step: the machine and settings, the targets, time per batch (with the
speed-up over softmax measured in the same run), memory, fitted exponents, LinRec's
efficiency limit, and the points that were skipped, failed or unavailable.
:func:`plot` draws time and memory vs N, log-log (matplotlib, the ``bench`` extra).
"""

from tfrs_linear.bench.analysis import (
    POINT_MEMORY_METHODS,
    best_timing,
    ok_rows,
    primary_memory,
)
from tfrs_linear.bench.plan import CONFIGS, SCOPES
from tfrs_linear.bench.units import MIB, format_bytes, format_time

SCOPE_TITLES = {
    "layer": "attention layer",
    "encoder": "2-block encoder",
    "op": "LinRec op",
    "matmuls": "two matmuls (KᵀV, Q·S)",
}
PASS_TITLES = {"fwd": "forward", "fwdbwd": "forward+backward"}


def _short_status(rec):
    status = rec.get("status")
    reason = rec.get("reason", "")
    if status == "skipped":
        return "skipped (mem)" if "> available" in reason else "skipped (time)"
    if status == "unavailable":
        return "unavailable"
    return status or "–"


def _reference_config(config, timings, n, scope="layer", pas="fwdbwd", mode=None):
    """Softmax of the same causality when measured, else plain softmax."""
    if CONFIGS.get(config, {}).get("causal"):
        match = dict(config="softmax-causal", n=n, scope=scope, **{"pass": pas})
        if mode:
            match["mode"] = mode
        if ok_rows(timings, **match):
            return "softmax-causal"
    return "softmax"


def _table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _time_tables(report, scope, pas):
    timings = report["timings"]
    lengths = report["settings"]["lengths"]
    rows = [r for r in timings if r["scope"] == scope and r["pass"] == pas]
    if not rows:
        return ""
    keys = []
    for r in rows:
        key = (r["config"], r["mode"])
        if key not in keys:
            keys.append(key)
    body, ratios = [], []
    any_ratio = False
    for config, mode in keys:
        cells, rcells = [], []
        for n in lengths:
            rec = next((r for r in rows if (r["config"], r["mode"], r["n"]) == (config, mode, n)), None)
            if rec is None:
                cells.append("")
                rcells.append("")
                continue
            if rec.get("status") != "ok":
                cells.append(_short_status(rec))
                rcells.append("")
                continue
            cells.append(f"{format_time(rec['median_s'])} (IQR {format_time(rec['iqr_s'])})")
            ref = _reference_config(config, timings, n, scope, pas, mode)
            ref_rec = ok_rows(timings, config=ref, n=n, scope=scope, mode=mode, **{"pass": pas})
            if ref_rec and config != ref and CONFIGS[config]["attention"] != "softmax":
                rcells.append(f"{ref_rec[0]['median_s'] / rec['median_s']:.1f}x")
                any_ratio = True
            else:
                rcells.append("")
        body.append([config, mode] + cells)
        ratios.append([config, mode] + rcells)
    title = f"{SCOPE_TITLES[scope]}, {PASS_TITLES[pas]}"
    text = f"### Time per batch: {title}\n\nMedian (IQR) over the repetitions, after warm-up.\n\n"
    text += _table(["config", "mode"] + [f"N={n}" for n in lengths], body)
    if any_ratio:
        text += (
            f"\n### Speed-up vs softmax: {title}\n\nSoftmax time / this time, same mode, same "
            "run (causal configurations vs causal softmax when measured).\n\n"
        )
        text += _table(
            ["config", "mode"] + [f"N={n}" for n in lengths],
            [r for r in ratios if any(r[2:])],
        )
    return text + "\n"


def _memory_table(report):
    memory = report["memory"]
    lengths = report["settings"]["lengths"]
    primary = [
        m for m in memory
        if m.get("scope") == "layer" and m.get("pass") == "fwdbwd"
        and (m.get("status") != "ok" or m.get("method") in POINT_MEMORY_METHODS)
    ]
    if not primary:
        return ""
    configs = [c for c in report["settings"]["attentions"] if any(m["config"] == c for m in primary)]
    body = []
    for config in configs:
        cells = []
        for n in lengths:
            rec = next((m for m in primary if m["config"] == config and m["n"] == n), None)
            if rec is None:
                cells.append("")
            elif rec.get("status") != "ok":
                cells.append(_short_status(rec))
            else:
                cell = format_bytes(rec["bytes"])
                ref = "softmax-causal" if CONFIGS[config]["causal"] and primary_memory(memory, "softmax-causal", n) else "softmax"
                ref_rec = primary_memory(memory, ref, n)
                if ref_rec and config != ref and rec["bytes"] > 0 and CONFIGS[config]["attention"] != "softmax":
                    ratio = ref_rec["bytes"] / rec["bytes"]
                    cell += f" ({ratio:.1f}x less)" if ratio >= 1 else f" ({1 / ratio:.1f}x more)"
                cells.append(cell)
        body.append([config] + cells)
    device = report["machine"]["device"]
    if device == "gpu":
        how = "TensorFlow's GPU memory stats: peak minus the memory in use before the step."
    else:
        how = (
            "peak RSS (VmHWM / ru_maxrss) of a fresh subprocess per point minus the same "
            f"subprocess's high-water mark after running N={report['settings']['baseline_length']} first; "
            "includes the inputs at N and the first (tracing) call."
        )
    text = (
        "### Peak memory: attention layer, forward+backward (first measured mode)\n\n"
        f"{how} In brackets: softmax / this (causal vs causal softmax when measured).\n\n"
    )
    return text + _table(["config"] + [f"N={n}" for n in lengths], body) + "\n"


def _step_memory_table(report):
    memory = [m for m in report["memory"] if m.get("method") == "step-rss-hwm" and m.get("status") == "ok"]
    if not memory:
        return ""
    lengths = report["settings"]["lengths"]
    keys = []
    for m in memory:
        key = (m["config"], m["scope"], m["pass"], m["mode"])
        if key not in keys:
            keys.append(key)
    body = []
    for key in keys:
        cells = []
        for n in lengths:
            rec = next((m for m in memory if (m["config"], m["scope"], m["pass"], m["mode"]) == key and m["n"] == n), None)
            cells.append(format_bytes(rec["bytes"]) if rec else "")
        body.append([key[0], f"{key[1]} {key[2]} {key[3]}"] + cells)
    text = (
        "### Per-step memory of the other measurements (CPU)\n\n"
        "RSS high-water mark of one warm step minus the RSS before it (the mark reset "
        "through /proc/self/clear_refs): memory the step adds on top of what the process "
        "already holds. A lower bound only: memory the allocator already cached from the first calls is reused and not counted.\n\n"
    )
    return text + _table(["config", "scope pass mode"] + [f"N={n}" for n in lengths], body) + "\n"


def _fmt_exp(x):
    return "–" if x is None else f"{x:.2f}"


def render_markdown(report):
    """``bench.md``: the report as markdown, section by section.

    Args:
      report: the report as ``bench.json`` holds it (machine, settings, timings, memory,
        exponents, efficiency, targets, ...).
    """
    out = [_header_section(report), _targets_section(report)]
    out.append("## Time\n\n")
    for scope in SCOPES[:2]:
        for pas in ("fwdbwd", "fwd"):
            out.append(_time_tables(report, scope, pas))
    out.append("## Memory\n\n")
    out.append(_memory_table(report))
    out.append(_step_memory_table(report))
    out.append(_exponents_section(report))
    out.append(_efficiency_section(report))
    out.append(_notes_section(report))
    return "".join(out)


def _header_section(report):
    """The title, the machine, the settings, and whether the run is complete."""
    m, s = report["machine"], report["settings"]
    out = ["# tfrs-linear bench\n"]
    out.append(
        f"- date: {m['date']}; device: **{m['device']}**"
        + (f" ({m.get('gpu')})" if m.get("gpu") else "")
        + f"; CPU: {m['cpu_model']} ({m['usable_cores']} usable of {m['logical_cores']} logical cores); "
        f"RAM {m['total_ram_gib']} GiB ({m['available_ram_gib']} GiB available at start)\n"
        f"- TensorFlow {m['tensorflow']}, tf-keras {m.get('tf_keras')}, Python {m['python']}\n"
        f"- grid: {s['grid']}; batch {s['batch_size']}, d_model {s['d_model']}, heads {s['heads']} "
        f"(key_dim {s['key_dim']}), encoder blocks {s['num_blocks']}, float32; repeats <= {s['repeats']} "
        f"(>= {s['min_repeats']}, budget {s['measure_seconds']:g} s per measurement), warm-up {s['warmup']}\n"
        f"- load average start {m.get('load_average_start')}, end {m.get('load_average_end')}; "
        f"wall time {report.get('wall_time_s', 0):.0f} s. Timings on shared cores are noisy; "
        "ratios are taken within this run.\n"
    )
    if not report.get("complete", True):
        out.append("- **partial results: the run has not finished (or was interrupted)**\n")
    if report.get("elastic_unavailable"):
        out.append(f"- ELASTIC: unavailable: {report['elastic_unavailable']}\n")
    return "".join(out)


def _targets_section(report):
    rows = []
    for t in report["targets"]:
        verdict = {True: "met", False: "**missed**", None: "n/a"}[t["met"]]
        rows.append([t["description"], verdict, t["detail"]])
    return "\n## Targets\n\n" + _table(["target", "verdict", "measured"], rows) + "\n"


def _exponents_section(report):
    out = ["## Fitted exponents in N\n\n"]
    out.append(
        "Least-squares slope of log(time) and log(memory) vs log(N) over the measured "
        "lengths (small N is overhead-bound, so the slope over all points understates the "
        "asymptote; the last-two-points slope is closer to it). 1 = linear, 2 = quadratic.\n\n"
    )
    rows = []
    for e in report["exponents"]:
        if e["scope"] not in ("layer", "encoder"):
            continue
        if e["time_exponent"] is None and e["memory_exponent"] is None:
            continue
        rows.append([
            e["config"], f"{e['scope']} {e['pass']} {e['mode']}",
            _fmt_exp(e["time_exponent"]), _fmt_exp(e["time_exponent_last_two"]),
            _fmt_exp(e["memory_exponent"]), _fmt_exp(e["memory_exponent_last_two"]),
            ",".join(str(n) for n in e["lengths"]),
        ])
    if rows:
        out.append(_table(
            ["config", "scope pass mode", "time exp.", "time exp. (last two N)",
             "memory exp.", "memory exp. (last two N)", "N used (time)"], rows) + "\n")
    else:
        out.append("No configuration has two measured lengths.\n\n")
    return "".join(out)


def _efficiency_section(report):
    out = ["## Efficiency limit of LinRec\n\n"]
    peak = report.get("peak_matmul") or {}
    if peak.get("flops_per_s"):
        out.append(
            f"Dense reference: {peak['size']}x{peak['size']} float32 matmul, "
            f"{peak['flops_per_s'] / 1e9:.1f} GFLOP/s (best mode). "
        )
    out.append(
        "The op is `ops.linrec.linrec_attention` on projected [B, H, N, d] tensors; the "
        "bound is its two unavoidable matmuls (KᵀV, then Q·S) alone at the same shapes. "
        "FLOP/s count only those matmuls' useful FLOPs (x3 for forward+backward).\n\n"
    )
    rows = []
    for r in sorted(report["efficiency"], key=lambda r: (r["config"], r["pass"], r["n"], r["mode"])):
        rows.append([
            r["config"], PASS_TITLES[r["pass"]], r["n"], r["mode"] + (" (best)" if r["best_mode"] else ""),
            format_time(r["op_s"]), format_time(r["matmuls_s"]),
            "–" if r["ratio"] is None else f"{r['ratio']:.2f}x",
            f"{r['op_flops_per_s'] / 1e9:.2f}",
            "–" if r["matmuls_flops_per_s"] is None else f"{r['matmuls_flops_per_s'] / 1e9:.2f}",
            "–" if r["op_fraction_of_peak"] is None else f"{100 * r['op_fraction_of_peak']:.1f}%",
        ])
    if rows:
        out.append(_table(
            ["config", "pass", "N", "mode", "op", "two matmuls", "op / matmuls",
             "op GFLOP/s", "matmuls GFLOP/s", "op % of dense peak"], rows) + "\n")
    else:
        out.append("Not measured in this grid.\n\n")
    return "".join(out)


def _notes_section(report):
    notes = []
    for r in report["timings"]:
        if r.get("status") in ("skipped", "failed"):
            reason = r.get("reason", "")
            if not reason.startswith(r["status"]):
                reason = f"{r['status']}: {reason}"
            notes.append(f"- {r['config']} N={r['n']} {r['scope']} {r['pass']} {r['mode']}: {reason}")
    unavailable = sorted({r["config"] for r in report["timings"] if r.get("status") == "unavailable"})
    if unavailable:
        notes.append(f"- {', '.join(unavailable)}: unavailable: {report.get('elastic_unavailable')}")
    if notes:
        return "## Skipped, failed and unavailable points\n\n" + "\n".join(notes) + "\n"
    return ""


def plot(report, path):
    """Writes ``bench.png``: time and peak memory of the attention layer vs N, log-log.

    Args:
      report: the report (``timings``, ``memory``, ``settings``, ``machine``).
      path: the PNG file to write.
    """
    import matplotlib  # optional dependency (the "bench" extra)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    timings, memory = report["timings"], report["memory"]
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(13, 5.5))
    colors = plt.get_cmap("tab10")
    drawn_t = drawn_m = False
    for i, config in enumerate(report["settings"]["attentions"]):
        style = dict(
            color=colors(i % 10),
            marker="o",
            linestyle="--" if CONFIGS[config]["causal"] else "-",
            label=config,
        )
        pts = []
        for n in report["settings"]["lengths"]:
            best = best_timing(timings, config, n)
            if best:
                pts.append((n, best["median_s"]))
        if pts:
            ax_t.plot([p[0] for p in pts], [p[1] * 1e3 for p in pts], **style)
            drawn_t = True
        mpts = []
        for n in report["settings"]["lengths"]:
            rec = primary_memory(memory, config, n)
            if rec and rec["bytes"] > 0:
                mpts.append((n, rec["bytes"] / MIB))
        if mpts:
            ax_m.plot([p[0] for p in mpts], [p[1] for p in mpts], **style)
            drawn_m = True
    for ax, drawn, ylabel, title in (
        (ax_t, drawn_t, "time per batch [ms]", "attention layer, fwd+bwd (best of modes)"),
        (ax_m, drawn_m, "peak memory [MiB]", "attention layer, fwd+bwd, peak memory"),
    ):
        ax.set_xlabel("sequence length N")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        if drawn:
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.legend(fontsize=8)
            ax.grid(True, which="both", alpha=0.3)
        else:
            ax.text(0.5, 0.5, "no measured points", ha="center", va="center", transform=ax.transAxes)
    m = report["machine"]
    fig.suptitle(
        f"tfrs-linear bench: {m['device']}, batch {report['settings']['batch_size']}, "
        f"d_model {report['settings']['d_model']}, heads {report['settings']['heads']}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
