"""What ``scripts/bench_keras3.py`` measures (backends, modes, layer configurations, the
shape) and its report: ``NAME.md`` (ratios within the run) and ``NAME.png`` (time vs N)."""

from pathlib import Path

BACKENDS = ("tensorflow", "jax", "torch", "tf-keras")
MODES = {"tensorflow": ("graph", "xla"), "jax": ("jit",), "torch": ("eager",),
         "tf-keras": ("graph", "xla")}
TITLES = {"tensorflow": "Keras 3, TensorFlow backend", "jax": "Keras 3, JAX backend",
          "torch": "Keras 3, PyTorch backend",
          "tf-keras": "tf-keras (Keras 2), tfrs_linear.layers"}
SHORT_TITLES = {"tensorflow": "TensorFlow backend", "jax": "JAX backend",
                "torch": "PyTorch backend",
                "tf-keras": "against tf-keras"}
# (name, attention, causal)
CONFIGS = (("softmax", "softmax", False), ("softmax, causal", "softmax", True),
           ("LinRec", "linrec", False), ("LinRec, causal", "linrec", True),
           ("ELASTIC k=16", "elastic", False), ("ELASTIC k=16, causal", "elastic", True))
# tf-keras runs the two linear layers only: the comparison is Keras 3 against tf-keras.
TF_KERAS_CONFIGS = tuple(c for c in CONFIGS if c[1] != "softmax")
# A first call (compilation included) this long already warmed up: no warm-up calls then.
WARM_FIRST_CALL_S = 10.0
SHAPE = {"batch": 8, "d_model": 64, "heads": 2, "num_interests": 16}
# Live float32 N x N tensors of softmax forward+backward (scores, probabilities, their
# gradients, compiler temporaries): the prediction behind the memory skip.
SOFTMAX_NXN_TENSORS = 6
MEMORY_FRACTION = 0.7  # of MemAvailable that a point may use
VERSIONS = ("keras", "tensorflow", "tf-keras", "jax", "jaxlib", "torch", "numpy", "keras-rs")


def configs_of(backend):
    return TF_KERAS_CONFIGS if backend == "tf-keras" else CONFIGS


def _fmt_time(seconds):
    return f"{seconds:.2f} s" if seconds >= 1 else f"{seconds * 1e3:.3g} ms"


def index_points(results):
    """{(backend, mode, config, n): record} over every backend's points."""
    return {(p["backend"], p["mode"], p["config"], p["n"]): p
            for r in results for p in r.get("points", [])}


def _softmax_of(config):
    return "softmax, causal" if "causal" in config else "softmax"


def speedup(points, backend, mode, config, n):
    """MultiHeadAttention's median / this one's, same backend, mode and kind; or None."""
    this = points.get((backend, mode, config, n), {})
    ref = points.get((backend, mode, _softmax_of(config), n), {})
    if this.get("status") == "ok" and ref.get("status") == "ok":
        return ref["median_s"] / this["median_s"]
    return None


def _cell(points, key):
    rec = points.get(key, {"status": "not run"})
    if rec["status"] != "ok":
        return {"skipped": "skipped (memory)"}.get(rec["status"], rec["status"])
    ratio = None if "softmax" in key[2] else speedup(points, *key)
    return _fmt_time(rec["median_s"]) + (f" ({ratio:.1f}×)" if ratio else "")


def _table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def ratio_tables(points, lengths, backends):
    """The speed-up table (every backend and mode) and the Keras 3 TF / tf-keras table."""
    header = ["config", "backend, mode"] + [f"N={n:,}" for n in lengths]
    rows = []
    for name, attention, _ in CONFIGS:
        if attention == "softmax":
            continue
        for backend in [b for b in backends if b != "tf-keras"]:
            for mode in MODES[backend]:
                cells = [speedup(points, backend, mode, name, n) for n in lengths]
                rows.append([name, f"{backend}, {mode}"] +
                            [f"{c:.1f}×" if c else "–" for c in cells])
    speed = _table(header, rows)
    rows = []
    if "tensorflow" in backends and "tf-keras" in backends:
        for name, _, _ in TF_KERAS_CONFIGS:
            for mode in MODES["tensorflow"]:
                cells = []
                for n in lengths:
                    a = points.get(("tensorflow", mode, name, n), {})
                    b = points.get(("tf-keras", mode, name, n), {})
                    ok = a.get("status") == b.get("status") == "ok"
                    cells.append(f"{a['median_s'] / b['median_s']:.2f}" if ok else "–")
                rows.append([name, mode] + cells)
    versus = _table(["config", "mode"] + [f"N={n:,}" for n in lengths], rows) if rows else []
    return speed, versus


def write_markdown(data, path):
    """keras3.md: machine and run, speed-ups, Keras 3 TF vs tf-keras, times per backend."""
    m, points, lengths = data["machine"], index_points(data["results"]), data["lengths"]
    backends = [r["backend"] for r in data["results"]]
    v = m["versions"]
    where = "GPU" if m.get("device") == "gpu" else "CPU"
    g = m.get("gpu")
    gpu = f"GPU {g['name']} ({g['memory']}, driver {g['driver']})" if g else (
        "no GPU used" if where == "CPU" else "a GPU nvidia-smi did not describe")
    speed, versus = ratio_tables(points, lengths, backends)
    lines = [
        "# Keras 3 layers: " + ", ".join(SHORT_TITLES[b] for b in backends)
        + f" ({where})", "",
        f"Made by `scripts/bench_keras3.py` on {data['date']}: {m['cpu_model']}, "
        f"{m['usable_cores']} usable of {m['logical_cores']} logical cores, "
        f"{m['mem_total_bytes'] / 2**30:.1f} GiB RAM, {gpu}; "
        + ", ".join(f"{k} {v[k]}" for k in VERSIONS if v.get(k)) + f", Python {m['python']}.",
        f"Load average before {data['load_average_start']}, after "
        f"{data['load_average_end']}; wall time {data['wall_s']:.0f} s. " + (
            "The cores were shared with other jobs: compare ratios within this run, not "
            "times." if where == "CPU" else "Every layer ran on the GPU (each worker "
            "checked that its backend saw it); float32 matmuls at the backend's default "
            "precision there."),
        "",
        f"Attention layer, forward+backward (gradients of `sum(y**2)` with respect to the "
        f"inputs and every weight), batch {data['shape']['batch']}, d_model {SHAPE['d_model']}, "
        f"{SHAPE['heads']} heads, float32; median of {data['repeats']} timed calls after "
        f"the first (compiling) call and {data['warmup']} warm-up calls (none where the "
        f"first call took over {WARM_FIRST_CALL_S:g} s). Modes: `graph` = "
        "`tf.function`, `xla` = `tf.function(jit_compile=True)`, `jit` = `jax.jit` of "
        "`value_and_grad` over `stateless_call`, `eager` = PyTorch eager with `torch.autograd`. LinRec is `normalization=\"paper\"`; "
        "ELASTIC is `LinearDispatcherAttention(num_interests=16)`.", "",
        "## Speed-up over MultiHeadAttention", "",
        "MultiHeadAttention's time / this layer's time, same backend, mode and kind "
        "(causal against `use_causal_mask=True`).", "", *speed, "",
    ]
    if versus:
        lines += ["## Keras 3 (TensorFlow backend) against tf-keras", "",
                  "Keras 3 layer's time / the tf-keras layer's time, same mode (1.00 = the "
                  "same cost).", "",
                  *versus, ""]
    lines += ["## Time per step", ""]
    for r in data["results"]:
        backend = r["backend"]
        note = "no softmax in this process" if backend == "tf-keras" else (
            "×: speed-up over MultiHeadAttention")
        lines += [f"### {TITLES[backend]}", "",
                  f"({note}; process wall time {r['wall_s']:.0f} s, load average "
                  f"{r.get('load_average_start')} -> {r.get('load_average_end')})", ""]
        rows = [[name, mode] + [_cell(points, (backend, mode, name, n)) for n in lengths]
                for name, _, _ in configs_of(backend) for mode in MODES[backend]]
        lines += _table(["config", "mode"] + [f"N={n:,}" for n in lengths], rows) + [""]
    failed = [p for r in data["results"] for p in r["points"] if p["status"] != "ok"]
    errors = [f"- {r['backend']}: {r['error']}" for r in data["results"] if r.get("error")]
    if failed or errors:
        lines += ["## Not measured", ""] + errors + [
            f"- {p['backend']} {p['mode']} {p['config']} N={p['n']}: {p['reason']}"
            for p in failed] + [""]
    Path(path).write_text("\n".join(lines))


def write_plot(data, path):
    """keras3.png: time per step vs N, log-log, one panel per backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points, backends = index_points(data["results"]), [r["backend"] for r in data["results"]]
    fig, axes = plt.subplots(1, len(backends), figsize=(5 * len(backends), 4.2),
                             sharey=True, squeeze=False)
    styles = {"graph": "-", "xla": "--", "jit": "-", "eager": "-"}
    colors = dict(zip([c[0] for c in CONFIGS], plt.get_cmap("tab10").colors))
    for ax, backend in zip(axes[0], backends):
        for name, _, _ in CONFIGS:
            for mode in MODES[backend]:
                xs = [n for n in data["lengths"]
                      if points.get((backend, mode, name, n), {}).get("status") == "ok"]
                ys = [points[(backend, mode, name, n)]["median_s"] * 1e3 for n in xs]
                if xs:
                    ax.plot(xs, ys, styles[mode], marker="o", color=colors[name],
                            label=f"{name} ({mode})")
        ax.set(xscale="log", yscale="log", xlabel="N (sequence length)", title=TITLES[backend])
        ax.set_xticks(data["lengths"], [f"{n:,}" for n in data["lengths"]])
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.grid(True, which="both", alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=6.5, loc="upper left")
    axes[0][0].set_ylabel("ms per forward+backward step (median)")
    where = ("GPU " + ((data["machine"].get("gpu") or {}).get("name") or "")
             if data["machine"].get("device") == "gpu" else "CPU (shared: compare ratios)")
    shape = data.get("shape", SHAPE)
    fig.suptitle(f"Attention layer, batch {shape['batch']}, d_model {shape['d_model']}, "
                 f"{shape['heads']} heads, float32, {where}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
