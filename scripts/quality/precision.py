"""``precision.md`` (issue #14): every run in another precision paired with the float32
run of the same setting, attention and seed."""

import json
import statistics

import numpy as np

from quality.common import RELATIVE_TOLERANCE, VARIANTS
from quality.naming import override_suffix
from quality.report import fmt
from quality.summary import mean_sd


# The report's order of the precisions (the columns of precision.md).
PRECISION_ORDER = ("float32", "mixed_bfloat16", "mixed_float16")


def _precision(rec):
    return rec.get("config", {}).get("precision", "float32")


def _steady_seconds_per_epoch(rec):
    """Median training seconds of the epochs after the first (the first compiles)."""
    times = [p["train_s"] for p in rec.get("curve", []) if p["epoch"] > 1 and p.get("train_s") is not None]
    return statistics.median(times) if times else None


def _all_finite(rec):
    values = [p["loss"] for p in rec["curve"]] + [p["valid_ndcg@10"] for p in rec["curve"]]
    values += list(rec["test"].values()) + list(rec["valid"].values())
    return all(isinstance(v, (int, float)) and np.isfinite(v) for v in values)


def precision_pairs(results):
    """The paired precision runs: ``{(setting without the precision, variant, seed):
    {precision: record}}`` for every (setting, variant, seed) that has a float32 run and
    at least one run in another precision (same configuration otherwise)."""
    groups = {}
    for rec in results.get("runs", {}).values():
        if "error" in rec or "overrides" not in rec:
            continue
        rest = {k: v for k, v in rec["overrides"].items() if k != "precision"}
        setting = rec.get("base_setting", "default") + override_suffix(rest)
        groups.setdefault((setting, rec["variant"], rec["seed"]), {})[_precision(rec)] = rec
    return {k: v for k, v in sorted(groups.items(), key=lambda kv: (
        kv[0][0], list(VARIANTS).index(kv[0][1]), kv[0][2])) if "float32" in v and len(v) > 1}


def _ratio(x, y):
    return None if x is None or y in (None, 0) else x / y


def _precision_pair_rows(pairs):
    """One Markdown row per (setting, variant, seed) of :func:`precision_pairs`."""
    rows = []
    for (setting, variant, seed), by in pairs.items():
        f32 = by["float32"]
        cells = [setting, variant, str(seed), f"{f32['valid']['ndcg@10']:.4f} ({f32['best_epoch']}/{f32['epochs_run']})"]
        for p in PRECISION_ORDER[1:]:
            r = by.get(p)
            if r is None:
                cells += ["–", "–"]
                continue
            ratio = _ratio(r["valid"]["ndcg@10"], f32["valid"]["ndcg@10"])
            mark = "" if ratio >= 1 - RELATIVE_TOLERANCE else " **(below 0.97)**"
            cells += [f"{r['valid']['ndcg@10']:.4f} ({r['best_epoch']}/{r['epochs_run']})", f"{ratio:.3f}{mark}"]
        s32 = _steady_seconds_per_epoch(f32)
        cells.append("–" if s32 is None else f"{s32:.1f}")
        for p in PRECISION_ORDER[1:]:
            r = by.get(p)
            sp = None if r is None else _steady_seconds_per_epoch(r)
            cells.append("–" if sp is None else f"{sp:.1f} ({_ratio(sp, s32):.2f}x)")
        cells.append("yes" if all(_all_finite(r) for r in by.values()) else "**no**")
        loads = [f"{r.get('load_average_start', ['?'])[0]}→{(r.get('load_average_end') or ['?'])[0]}"
                 for p, r in sorted(by.items(), key=lambda kv: PRECISION_ORDER.index(kv[0]))]
        cells.append(", ".join(loads))
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def _precision_mean_rows(pairs):
    """Per (setting, attention, precision): means over the seeds of the pairs."""
    rows = []
    keys = sorted({(s, v) for (s, v, _) in pairs}, key=lambda k: (k[0], list(VARIANTS).index(k[1])))
    for setting, variant in keys:
        group = [by for (s, v, _), by in pairs.items() if (s, v) == (setting, variant)]
        for p in PRECISION_ORDER:
            recs = [(by[p], by["float32"]) for by in group if p in by]
            if not recs:
                continue
            mean, sd = mean_sd([r["valid"]["ndcg@10"] for r, _ in recs])
            ratios = [_ratio(r["valid"]["ndcg@10"], f["valid"]["ndcg@10"]) for r, f in recs]
            tmean, tsd = mean_sd([r["test"]["ndcg@10"] for r, _ in recs])
            speed = [_ratio(_steady_seconds_per_epoch(r), _steady_seconds_per_epoch(f)) for r, f in recs]
            secs = [_steady_seconds_per_epoch(r) for r, _ in recs]
            finite = all(_all_finite(r) for r, _ in recs)
            # The bar (issue #14): the paired runs' ratio, averaged over the seeds, within 3%.
            met = finite and statistics.mean(ratios) >= 1 - RELATIVE_TOLERANCE
            every = all(x >= 1 - RELATIVE_TOLERANCE for x in ratios)
            verdict = "–" if p == "float32" else (
                ("met" if met else "**missed**") + ("" if every else " (a seed below 0.97)"))
            rows.append(
                f"| {setting} | {variant} | {p} | {','.join(str(r['seed']) for r, _ in recs)} | "
                f"{fmt(mean, sd)} | {statistics.mean(ratios):.3f} (min {min(ratios):.3f}) | {fmt(tmean, tsd)} | "
                f"{statistics.mean(x for x in secs if x is not None):.1f} | "
                f"{statistics.mean(x for x in speed if x is not None):.2f}x | {'yes' if finite else '**no**'} | {verdict} |")
    return rows


def _precision_setting_text(pairs):
    """The setting(s) of the pairs, in words, and the command that reproduces them."""
    lines = []
    for setting in sorted({s for (s, _, _) in pairs}):
        recs = [r for (s, _, _), by in pairs.items() if s == setting for r in by.values()]
        c = recs[0]["config"]
        rest = {k: v for k, v in recs[0]["overrides"].items() if k != "precision"}
        variants = ",".join(v for v in VARIANTS if any(r["variant"] == v for r in recs))
        seeds = ",".join(str(x) for x in sorted({r["seed"] for r in recs}))
        precisions = ",".join(p for p in PRECISION_ORDER if any(_precision(r) == p for r in recs))
        flags = []
        for key, value in rest.items():
            flag = {"max_len": "--max-len", "batch_size": "--batch-size", "epochs": "--epochs"}.get(key)
            flags.append(f"{flag} {value}" if flag else f"--set {key}={json.dumps(value) if not isinstance(value, str) else value}")
        lines.append(f"- setting `{setting}`: the `default` setting (regime {c['regime']}, full-catalogue CE, "
                     f"hidden {c['d_model']}, {c['num_layers']} layers, {c['num_heads']} heads, dropout {c['dropout']}, "
                     f"Adam {c['learning_rate']}, batch {c['batch_size']}, patience {c['patience']}) at max_len "
                     f"{c['max_len']} with an epoch cap of {c['epochs']} (the default is max_len 200, cap 60: "
                     "reduced so that 27 runs fit the time on 2 shared cores), the same for every precision.")
        lines.append("- reproduce: `nice -n 5 .venv/bin/python scripts/quality_ml100k.py --skip-throughput "
                     f"--attentions {variants} --seeds {seeds} {' '.join(flags)} --precision {precisions} "
                     "--out docs/quality --runs-dir runs/quality-precision` (each seed and attention trains "
                     "its precisions one after the other; an interrupted run resumes), then "
                     "`.venv/bin/python scripts/quality_ml100k.py --out docs/quality --report-only`.")
    return lines


def render_precision(results):
    """``precision.md``: the paired precision runs (issue #14), or None when there are none."""
    pairs = precision_pairs(results)
    if not pairs:
        return None
    lines = ["# Mixed precision on ml-100k: paired runs (issue #14)", "",
             f"- updated {results.get('updated')}; machine: {results.get('settings', {}).get('machine')}; "
             "each training process alone of its kind but the 2 cores shared with other work (the load "
             "average column: 1-minute load at the start → end of each run, float32 first).",
             "- pairs: the same setting and seed (same data order and initial weights draw), only the Keras "
             "dtype policy differs (`mixed_float16` with a dynamic loss scale); best validation NDCG@10 "
             "(full ranking, docs/protocol.md) at the best epoch (best / epochs run), ratio = this "
             "precision's / float32's of the same seed. The bar: the ratio averaged over the seeds "
             "≥ 0.97 and every loss and metric finite (a single seed's ratio is noisy: "
             "two float32 runs of one seed whose code differed only in rounding gave valid "
             "NDCG@10 1.1% and 1.6% apart).",
             "- s/epoch: median training seconds of the epochs after the first (the first includes the "
             "XLA compilation); the ratio is to float32's of the same seed. CPU only: bfloat16 and float16 "
             "matmuls have no native support on this CPU, so these are not GPU speed-ups."]
    packages = sorted({r.get("package", "?") for by in pairs.values() for r in by.values()})
    lines.append(f"- package the runs trained with: {', '.join(f'`{x}`' for x in packages)}.")
    lines += _precision_setting_text(pairs)
    lines += ["", "## Per seed", "",
              "| setting | attention | seed | float32 valid NDCG@10 (best/run) | mixed_bfloat16 | ratio | "
              "mixed_float16 | ratio | float32 s/epoch | mixed_bfloat16 s/epoch | mixed_float16 s/epoch | "
              "all finite | load average |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    lines += _precision_pair_rows(pairs)
    lines += ["", "## Mean over seeds", "",
              "| setting | attention | precision | seeds | valid NDCG@10 | ratio to float32 (mean, min) | "
              "test NDCG@10 | s/epoch | s/epoch vs float32 | all finite | bar (mean ratio ≥ 0.97, finite) |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    lines += _precision_mean_rows(pairs)
    lines.append("")
    return "\n".join(lines) + "\n"
