"""The picture: validation NDCG@10 against cumulative training seconds, one line per run."""

from quality.common import VALID_TARGET


# The attentions drawn, with their colours: each as the package builds it by default,
# and ELASTIC as docs/elastic.md describes it (no recency bias).
PLOT_VARIANTS = {"softmax": "tab:blue", "linrec": "tab:orange", "elastic-recency": "tab:green",
                 "elastic": "tab:red"}


def training_curve(record):
    """``(cumulative training seconds, validation NDCG@10)`` after each epoch of one run's
    ``curve``; epochs without a recorded time end the curve (an unknown x)."""
    seconds, ndcg, total = [], [], 0.0
    for point in record.get("curve", []):
        if point.get("train_s") is None:
            break
        total += point["train_s"]
        seconds.append(total)
        ndcg.append(point["valid_ndcg@10"])
    return seconds, ndcg


def plot_curves(results, path, setting="default"):
    """Draws validation NDCG@10 against cumulative training seconds of every run of
    ``setting`` whose attention is in :data:`PLOT_VARIANTS`; returns the runs drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    drawn = {}
    for name, record in sorted(results.get("runs", {}).items()):
        variant = record.get("variant")
        if record.get("setting") != setting or variant not in PLOT_VARIANTS:
            continue
        seconds, ndcg = training_curve(record)
        if not seconds:
            continue
        label = None if variant in drawn.values() else variant
        ax.plot(seconds, ndcg, color=PLOT_VARIANTS[variant], alpha=0.75, linewidth=1.2,
                label=label)
        best = max(range(len(ndcg)), key=ndcg.__getitem__)
        ax.plot(seconds[best], ndcg[best], "o", color=PLOT_VARIANTS[variant], markersize=4)
        drawn[name] = variant
    target = results.get("settings", {}).get("valid_target", VALID_TARGET)
    ax.axhline(target, color="gray", linestyle="--", linewidth=1,
               label=f"RecBole SASRec best validation NDCG@10 ({target})")
    machine = results.get("settings", {}).get("machine", "")
    ax.set_title("ml-100k: validation NDCG@10 vs training time (one line per seed, dot: best "
                 "epoch)\n"
                 f"default setting, full ranking; {machine}", fontsize=9)
    ax.set_xlabel("training seconds (cumulative; validation and checkpoints excluded)")
    ax.set_ylabel("validation NDCG@10")
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    order = sorted(range(len(labels)), key=lambda i: list(PLOT_VARIANTS).index(labels[i])
                   if labels[i] in PLOT_VARIANTS else len(PLOT_VARIANTS))
    ax.legend([handles[i] for i in order], [labels[i] for i in order], fontsize=8,
              loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return drawn
