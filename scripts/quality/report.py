"""``results.md`` (the report's sections, in order) and the summary printed at the end."""

from quality.common import ANCHORS, ISSUE_SEEDS, PRECISION_FILE, log
from quality.summary import ANCHOR_SETTING
from quality.throughput import point_label


def fmt(mean, sd, digits=4):
    """``"0.0526 ± 0.0012"`` (``"–"`` without a mean, no ``±`` without an sd)."""
    if mean is None:
        return "–"
    return f"{mean:.{digits}f}" + (f" ± {sd:.{digits}f}" if sd is not None else "")


def secs(values):
    """Seconds as ``"12, not reached"``: rounded, ``None`` read as not reached."""
    def one(v):
        return "not reached" if v is None else f"{v:.0f}"
    return ", ".join(one(v) for v in values)


def _md_header(results):
    """The title and the settings of the report."""
    s = results.get("settings", {})
    lines = ["# Quality on ml-100k: softmax vs LinRec vs ELASTIC (issue #4)", ""]
    lines.append(f"- updated {results.get('updated')}; data `{s.get('data')}`; "
                 f"machine: {s.get('machine')}")
    lines.append("- protocol: leave-one-out, full ranking over the catalogue, no history exclusion, "
                 "pessimistic ties; model selected on validation NDCG@10 (patience 5); test at the best epoch "
                 "(docs/protocol.md).")
    lines.append("- `default` setting: ModelConfig defaults — regime `all` (causal encoder, next-item CE "
                 "over all items at every position), hidden 64, 2 layers, 2 heads, FFN 256, dropout 0.2, "
                 "Adam 1e-3 — at the max_len / batch / epoch cap given in the per-run table. Other settings "
                 "are named after the reference configuration they load (models/*.json).")
    lines.append("- models: `elastic-recency` = ELASTIC k=16 (causal, no memory) as the package builds it by "
                 "default: with learned per-interest recency slopes on the aggregate logits (an exponential "
                 "decay of each interest's weights with the item's age; not in the paper); "
                 "`elastic` = the same without the recency bias (elastic.md's causal form); "
                 "`elastic-k32-smallinit` and `elastic-smallinit` = k=32 and k=16 trained before the interest "
                 "tokens' initializer changed from stddev 0.05 to stddev 1 (kept for comparison); "
                 "`elastic-noncausal` and `elastic-memory` = the paper's form, non-causal with the interests "
                 "handed from block to block, without and with the product-key interest memory (regime "
                 "`last` settings only); `linrec-token` = LinRec with the official code's normalization.")
    lines.append(f"- setting `{ANCHOR_SETTING}`: the RecBole anchor's setting (regime `last` with prefix "
                 "augmentation, max_len 50, batch 512, patience 5), loaded from the reference configuration "
                 "of each attention; those files differ only in the attention.")
    lines.append("- a setting name with a suffix is that setting with overrides, named after them: `-len50` "
                 "max_len 50, `-ep20` an epoch cap of 20 (instead of 60), `-mixed_bfloat16`/`-mixed_float16` "
                 "the precision, `-KEY_VALUE` any other configuration field (e.g. `-positions_none`); the "
                 "checks below are made on settings without overrides only; the paired precision runs are "
                 f"compared in {PRECISION_FILE}.")
    lines.append("- `default-keras_dropout`: the `default` runs made before every dropout drew its random "
                 "bits from a counter-based hash (`CounterDropout`, 2026-11-29; softmax's attention-"
                 "probability dropout included): Keras' `Dropout`, the same Bernoulli masks from other "
                 "bits. The settings derived from `default` above (`-len50`, `-positions_*`, the "
                 "precisions) were all trained with Keras' `Dropout` too.")
    lines.append("")
    return lines


def _md_test_metrics(results):
    """The test metrics table (mean ± sd over seeds), anchors first."""
    lines = []
    summary = results.get("summary", [])
    lines.append("## Test metrics (mean ± sd over seeds)")
    lines.append("")
    lines.append(f"The issue's bar is over seeds {', '.join(map(str, ISSUE_SEEDS))}: those rows come first. "
                 "Where a model was also trained with further seeds, a second row gives the mean over all "
                 "of its seeds (never mixed into the first). Seeds 2023 and 2024 were added for softmax, "
                 "LinRec and ELASTIC together, their number fixed before any of them ran, after the "
                 "3-seed ELASTIC check had missed by 1.3 points.")
    lines.append("")
    lines.append("| model | setting | seeds | NDCG@10 | HR@10 | MRR@10 | valid NDCG@10 | best epoch / run | "
                 "train s to valid NDCG@10 ≥ 0.0655 | train s to best | train s total |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|---|")
    for key in ("sasrec", "linrec", "mostpop"):
        a = ANCHORS[key]
        lines.append(f"| {a['label']} | RecBole | 1 | {a['ndcg@10']:.4f} | {a['hr@10']:.4f} | "
                     f"{'–' if a['mrr@10'] is None else format(a['mrr@10'], '.4f')} | "
                     f"{a.get('best_valid_ndcg@10', '–')} | {a.get('best_epoch', '–')} | "
                     f"{'≈990 (6 × 165)' if key == 'sasrec' else ('≈750 (5 × 150)' if key == 'linrec' else '–')} | – | – |")
    mp = results.get("most_popular")
    if mp:
        lines.append(f"| most-popular (ours) | – | – | {mp['test']['ndcg@10']:.4f} | {mp['test']['hr@10']:.4f} | "
                     f"{mp['test']['mrr@10']:.4f} | {mp['valid']['ndcg@10']:.4f} | – | – | – | – |")
    for row in summary:
        lines.append(
            f"| {row['variant']} | {row['setting']} | {','.join(map(str, row['seeds']))} | "
            f"{fmt(row['test_ndcg@10_mean'], row['test_ndcg@10_sd'])} | "
            f"{fmt(row['test_hr@10_mean'], row['test_hr@10_sd'])} | "
            f"{fmt(row['test_mrr@10_mean'], row['test_mrr@10_sd'])} | "
            f"{fmt(row['valid_ndcg@10_mean'], row['valid_ndcg@10_sd'])} | "
            f"{', '.join(f'{b}/{e}' for b, e in zip(row['best_epochs'], row['epochs_run']))} | "
            f"{secs(row['train_seconds_to_valid_target'])} | {secs(row['train_seconds_to_best'])} | "
            f"{secs(row['train_seconds_total'])} |")
    lines.append("")
    lines.append("Time to target: training seconds (training epochs only — data pipeline, first-call XLA "
                 "compilation and the fit loop included; per-epoch validation, checkpoints and final "
                 "evaluation excluded) up to the first epoch whose VALIDATION NDCG@10 reaches 0.0655, the "
                 "best validation NDCG@10 of the RecBole SASRec anchor (its test 0.0526 is not usable as a "
                 "training-time criterion). The RecBole figures in that column are epochs × the protocol's "
                 "per-epoch time. Wall times on 2 shared cores are noisy.")
    lines.append("")
    return lines


def _md_checks(results):
    """The issue's checks and their verdicts."""
    lines = []
    chk = results.get("checks", [])
    if chk:
        lines.append("## Checks")
        lines.append("")
        lines.append("| seed set | setting | check | verdict | seeds | measured |")
        lines.append("|---|---|---|---|---|---|")
        for c in chk:
            verdict = "met" if c["met"] else "**missed**"
            which = "issue's (" + ", ".join(map(str, ISSUE_SEEDS)) + ")" if c.get("seed_set", "issue") == "issue" else "all"
            lines.append(f"| {which} | {c['setting']} | {c['check']} | {verdict} | {c['seeds']} | {c['detail']} |")
        if any(c["seeds"] < 3 for c in chk):
            lines.append("")
            lines.append("Fewer than 3 seeds: the protocol asks for mean ± sd over at least 3 seeds before "
                         "an accuracy claim; these verdicts are provisional.")
        lines.append("")
    return lines


def _md_paired(results):
    """Per-seed differences to softmax."""
    lines = []
    pairs = results.get("paired", [])
    if pairs:
        lines.append("## Paired per seed: difference to softmax")
        lines.append("")
        lines.append("Same setting and seed as the softmax run (same data, split and seed; only the attention "
                     "differs, so the initial weights differ too). Mean difference of test metrics ± its "
                     "standard error over the seeds, and relative to softmax's mean over the same seeds.")
        lines.append("")
        lines.append("| model | setting | seeds | NDCG@10 diff | relative | HR@10 diff | relative | NDCG@10 diff per seed |")
        lines.append("|---|---|---|---|---|---|---|---|")
        for r in pairs:
            lines.append(
                f"| {r['variant']} | {r['setting']} | {','.join(map(str, r['seeds']))} | "
                f"{r['ndcg@10_diff_mean']:+.4f} ± {r['ndcg@10_diff_se']:.4f} | {r['ndcg@10_diff_relative']:+.1%} | "
                f"{r['hr@10_diff_mean']:+.4f} ± {r['hr@10_diff_se']:.4f} | {r['hr@10_diff_relative']:+.1%} | "
                f"{' '.join(f'{x:+.4f}' for x in r['ndcg@10_diffs'])} |")
        lines.append("")
    return lines


def _md_runs(results):
    """One row per run, then the validation curves."""
    lines = []
    runs = [r for r in results.get("runs", {}).values()]
    if runs:
        lines.append("## Runs")
        lines.append("")
        lines.append("| run | regime / max_len / batch | epochs (cap) | stopped by | best epoch | test NDCG@10 | "
                     "test HR@10 | test MRR@10 | best valid NDCG@10 | train s / epoch: median (min after epoch 1) | "
                     "train s total | eval s total | wall s |")
        lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for r in sorted(runs, key=lambda r: r["run"]):
            if "error" in r:
                lines.append(f"| {r['run']} | – | – | **failed**: {r['error'][:120]} | | | | | | | | | |")
                continue
            c = r["config"]
            lines.append(
                f"| {r['run']} | {c['regime']} / {c['max_len']} / {c['batch_size']} | {r['epochs_run']} ({c['epochs']}) | "
                f"{r['stopped_by']} | {r['best_epoch']} | {r['test']['ndcg@10']:.4f} | {r['test']['hr@10']:.4f} | "
                f"{r['test']['mrr@10']:.4f} | {r['valid']['ndcg@10']:.4f} | {r['train_seconds_per_epoch_median']} ({r.get('train_seconds_per_epoch_min')}) | "
                f"{r['train_seconds_total']:.0f} | {r['eval_seconds_total']:.0f} | "
                f"{r['wall_seconds_this_invocation'] if r['wall_seconds_this_invocation'] is not None else '–'} |")
        lines.append("")
        lines.append("Validation NDCG@10 per epoch:")
        lines.append("")
        for r in sorted(runs, key=lambda r: r["run"]):
            if "error" in r:
                continue
            curve = " ".join(f"{p['valid_ndcg@10']:.4f}" for p in r["curve"])
            lines.append(f"- {r['run']}: {curve}")
        lines.append("")
    return lines


def _md_throughput(results):
    """The training throughput table."""
    lines = []
    tp = results.get("throughput")
    if tp:
        lines.append("## Training throughput")
        lines.append("")
        lines.append(f"Training sequences/s of a full train step (forward, full-catalogue CE, backward, Adam; "
                     f"XLA, batch {tp['batch_size']} unless the header says otherwise (reduced only when softmax's step would not fit in the available memory), regime {tp['regime']}, real ml-100k batches), median over "
                     f"{tp['rounds']} rounds of {tp['steps']} steps after {tp['warmup']} warm-up steps "
                     f"(with length buckets: rounds of whole epochs' batches, {tp['steps']} steps or more, "
                     f"after one epoch's warm-up that compiles every width); the "
                     f"attentions alternate within each round in one process; ratio = this / softmax in the "
                     f"same round (median over rounds). Measured {tp.get('measured')}.")
        lines.append("")
        variants = []
        for point in tp["points"].values():
            for v in point:
                if v not in variants:
                    variants.append(v)
        bpl = tp.get("batch_size_per_length", {})
        lines.append("| attention | " + " | ".join(
            f"{point_label(n)} (batch {bpl.get(n.partition('-')[0], tp['batch_size'])}): "
            f"seq/s (step ms) | {point_label(n)}: vs softmax"
            for n in tp["points"]) + " |")
        lines.append("|---|" + "---|---|" * len(tp["points"]))
        for v in variants:
            cells = []
            for n, point in tp["points"].items():
                p = point.get(v)
                if p is None:
                    cells += ["–", "–"]
                elif "error" in p:
                    cells += [f"failed ({p['error']})", "–"]
                else:
                    cells += [f"{p['seq_per_s_median']:.1f} ({p['step_ms_median']:.0f})",
                              "–" if p["ratio_vs_softmax_median"] is None else f"{p['ratio_vs_softmax_median']:.2f}x"]
            lines.append(f"| {v} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def render_markdown(results):
    """``results.md``: the report's sections in order (each empty when it has no data)."""
    lines = []
    for section in (_md_header, _md_test_metrics, _md_checks, _md_paired, _md_runs, _md_throughput):
        lines += section(results)
    return "\n".join(lines) + "\n"


def print_summary(results):
    """Prints the summary rows, the anchors, the checks and the throughput to stdout."""
    log("results:")
    for row in results["summary"]:
        print(f"  {row['variant']:<13} {row['setting']:<14} [{row['seed_set']}] seeds {row['seeds']}: test NDCG@10 "
              f"{fmt(row['test_ndcg@10_mean'], row['test_ndcg@10_sd'])}, HR@10 "
              f"{fmt(row['test_hr@10_mean'], row['test_hr@10_sd'])}, MRR@10 "
              f"{fmt(row['test_mrr@10_mean'], row['test_mrr@10_sd'])}; train s to valid target "
              f"{secs(row['train_seconds_to_valid_target'])}", flush=True)
    for key in ("sasrec", "linrec", "mostpop"):
        a = ANCHORS[key]
        print(f"  {a['label']:<36} test NDCG@10 {a['ndcg@10']:.4f}, HR@10 {a['hr@10']:.4f}", flush=True)
    mp = results.get("most_popular")
    if mp:
        print(f"  most-popular (ours)                  test NDCG@10 {mp['test']['ndcg@10']:.4f}, "
              f"HR@10 {mp['test']['hr@10']:.4f}, MRR@10 {mp['test']['mrr@10']:.4f}", flush=True)
    for c in results["checks"]:
        print(f"  [{'met' if c['met'] else 'MISSED'}] [{c['seed_set']}] {c['setting']}: {c['check']}: {c['detail']}", flush=True)
    tp = results.get("throughput")
    if tp:
        for n, point in tp["points"].items():
            print(f"  throughput N={n}: " + ", ".join(
                f"{v} {p['seq_per_s_median']:.1f} seq/s ({p['ratio_vs_softmax_median']}x)" if "error" not in p
                else f"{v} failed" for v, p in point.items()), flush=True)
