"""Statistics over the runs: mean ± sd per (setting, attention, seed set), the issue's
checks against the anchors and softmax, and the per-seed differences to softmax."""

import numpy as np

from quality.common import ANCHORS, ISSUE_SEEDS, METRICS, NUM_TEST_USERS, RELATIVE_TOLERANCE, VARIANTS


def mean_sd(values):
    """``(mean, sample sd)`` of the values that are not None; sd None for one value."""
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    mean = float(np.mean(values))
    sd = float(np.std(values, ddof=1)) if len(values) > 1 else None
    return mean, sd



# The reference configurations in the RecBole anchor's setting differ only in the attention
# (models/{sasrec,linrec,linrec-paper,elastic}-ml100k.json): one setting for comparisons.
ANCHOR_SETTING = "anchor (models/*-ml100k.json)"
ANCHOR_CONFIGS = ("sasrec-ml100k", "linrec-ml100k", "linrec-paper-ml100k", "elastic-ml100k")


def _setting(rec):
    """The result group of a run: its setting (the base setting and the overrides' suffix),
    the anchor's reference configurations being one base setting."""
    base = rec.get("base_setting", rec["setting"])
    if base in ANCHOR_CONFIGS:
        return ANCHOR_SETTING + rec["setting"][len(base):]
    return rec["setting"]



def summarize(results):
    """One row per (setting, variant, seed set): the issue's seeds ``ISSUE_SEEDS`` and, where a
    variant has more, all of its seeds as a second row."""
    groups = {}
    for rec in results["runs"].values():
        if "error" in rec:
            continue
        key = (_setting(rec), rec["variant"])
        groups.setdefault((*key, "issue"), [])
        if rec["seed"] in ISSUE_SEEDS:
            groups[(*key, "issue")].append(rec)
        groups.setdefault((*key, "all"), []).append(rec)
    for key in [k for k in groups if k[2] == "all"]:
        issue = groups.get((key[0], key[1], "issue"))
        if issue is not None and len(issue) in (0, len(groups[key])):
            # the same runs (or none of the issue's seeds): one row, called "all" if the issue's are absent
            if not issue:
                del groups[(key[0], key[1], "issue")]
            else:
                del groups[key]
    summary = []
    for (setting, variant, seed_set), recs in sorted(
            groups.items(), key=lambda kv: (kv[0][2] != "issue", kv[0][0] != "default", kv[0][0],
                                            list(VARIANTS).index(kv[0][1]))):
        recs = sorted(recs, key=lambda r: r["seed"])
        row = {"setting": setting, "variant": variant, "seed_set": seed_set,
               "seeds": [r["seed"] for r in recs], "n": len(recs),
               "overrides": recs[0].get("overrides", {})}
        for split in ("test", "valid"):
            for m in METRICS:
                mean, sd = mean_sd([r[split][m] for r in recs])
                row[f"{split}_{m}_mean"], row[f"{split}_{m}_sd"] = mean, sd
        row["best_epochs"] = [r["best_epoch"] for r in recs]
        row["epochs_run"] = [r["epochs_run"] for r in recs]
        row["stopped_by"] = [r["stopped_by"] for r in recs]
        row["train_seconds_total"] = [r["train_seconds_total"] for r in recs]
        row["train_seconds_to_best"] = [r["train_seconds_to_best"] for r in recs]
        row["train_seconds_to_valid_target"] = [r["train_seconds_to_valid_target"] for r in recs]
        row["train_seconds_per_epoch_median"] = [r["train_seconds_per_epoch_median"] for r in recs]
        summary.append(row)
    return summary


def checks(summary):
    """The issue's checks on the summary rows without overrides, per seed set."""
    out = []
    for seed_set in ("issue", "all"):
        # The issue's bar is about the settings themselves, not their overridden variants.
        rows = {(r["setting"], r["variant"]): r for r in summary
                if r["seed_set"] == seed_set and not r.get("overrides")}
        for c in _checks_of(rows):
            c["seed_set"] = seed_set
            out.append(c)
    return out


def paired(results):
    """Per-seed differences to softmax (same setting, same seed: the same data, split and
    shuffling seed; only the attention differs): mean difference of test NDCG@10 and HR@10,
    its standard error over the seeds, and the mean relative difference."""
    by = {}
    for rec in results["runs"].values():
        if "error" not in rec:
            by[(_setting(rec), rec["variant"], rec["seed"])] = rec
    out = []
    keys = sorted({(s, v) for (s, v, _) in by if v != "softmax"},
                  key=lambda k: (k[0] != "default", list(VARIANTS).index(k[1]), k[0]))
    for setting, variant in keys:
        seeds = sorted(seed for (s, v, seed) in by if (s, v) == (setting, variant) and (s, "softmax", seed) in by)
        if len(seeds) < 2:
            continue
        row = {"setting": setting, "variant": variant, "seeds": seeds}
        for m in ("ndcg@10", "hr@10"):
            d = np.array([by[(setting, variant, x)]["test"][m] - by[(setting, "softmax", x)]["test"][m] for x in seeds])
            base = float(np.mean([by[(setting, "softmax", x)]["test"][m] for x in seeds]))
            row[f"{m}_diff_mean"] = float(d.mean())
            row[f"{m}_diff_se"] = float(d.std(ddof=1) / np.sqrt(len(d)))
            row[f"{m}_diff_relative"] = float(d.mean() / base)
            row[f"{m}_diffs"] = [float(x) for x in d]
        out.append(row)
    return out


def _checks_of(rows):
    out = []
    for setting in sorted({s for s, _ in rows}, key=lambda s: s != "default"):
        soft = rows.get((setting, "softmax"))
        if soft:
            a = ANCHORS["sasrec"]
            met = soft["test_ndcg@10_mean"] >= a["ndcg@10"] and soft["test_hr@10_mean"] >= a["hr@10"]
            out.append({
                "setting": setting,
                "check": "softmax reaches the SASRec anchor (mean test NDCG@10 >= 0.0526 and HR@10 >= 0.1188)",
                "met": bool(met), "seeds": soft["n"],
                "detail": f"NDCG@10 {soft['test_ndcg@10_mean']:.4f} ({soft['test_ndcg@10_mean'] / a['ndcg@10'] - 1:+.1%}), "
                          f"HR@10 {soft['test_hr@10_mean']:.4f} ({soft['test_hr@10_mean'] / a['hr@10'] - 1:+.1%}, "
                          f"{(soft['test_hr@10_mean'] - a['hr@10']) * NUM_TEST_USERS:+.1f} hits of {NUM_TEST_USERS} test users) "
                          f"over {soft['n']} seed(s)",
            })
        for variant in VARIANTS:
            if variant == "softmax" or (setting, variant) not in rows:
                continue
            row = rows[(setting, variant)]
            if soft:
                rel_n = row["test_ndcg@10_mean"] / soft["test_ndcg@10_mean"] - 1
                rel_h = row["test_hr@10_mean"] / soft["test_hr@10_mean"] - 1
                met = rel_n >= -RELATIVE_TOLERANCE and rel_h >= -RELATIVE_TOLERANCE
                out.append({
                    "setting": setting,
                    "check": f"{variant} within 3% of softmax or better (mean test NDCG@10 and HR@10)",
                    "met": bool(met), "seeds": min(row["n"], soft["n"]),
                    "detail": f"NDCG@10 {row['test_ndcg@10_mean']:.4f} vs {soft['test_ndcg@10_mean']:.4f} ({rel_n:+.1%}), "
                              f"HR@10 {row['test_hr@10_mean']:.4f} vs {soft['test_hr@10_mean']:.4f} ({rel_h:+.1%})",
                })
            if variant.startswith("linrec"):
                a = ANCHORS["linrec"]
                met = row["test_ndcg@10_mean"] >= a["ndcg@10"] and row["test_hr@10_mean"] >= a["hr@10"]
                out.append({
                    "setting": setting,
                    "check": f"(info) {variant} reaches the official-LinRec anchor (NDCG@10 >= 0.0571, HR@10 >= 0.1283)",
                    "met": bool(met), "seeds": row["n"],
                    "detail": f"NDCG@10 {row['test_ndcg@10_mean']:.4f} ({row['test_ndcg@10_mean'] / a['ndcg@10'] - 1:+.1%}), "
                              f"HR@10 {row['test_hr@10_mean']:.4f} ({row['test_hr@10_mean'] / a['hr@10'] - 1:+.1%})",
                })
    return out
