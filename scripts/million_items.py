"""A 1M-item catalogue end to end: sampled-loss training, export, check-serving, latency.

Writes ``docs/bench/million.md`` and ``docs/bench/million.json``:

1. Data, generated here (``tfrs_linear.data.synthetic`` draws items from a popularity
   law, so a 1M catalogue would need far more events to see every item once): ``--users``
   users, each walking ``--walk`` consecutive items of one shuffled ordering of the
   catalogue (so every item occurs) with ``--popular`` extra events from a Zipf law
   interleaved. The 10k-item run uses the same users and walks, item ids taken modulo
   10k, so only the catalogue differs.
2. Training through the :class:`~tfrs_linear.training.Trainer`: a softmax-attention
   encoder (the catalogue, not the attention, is what is measured), the ``sampled`` loss,
   ``max_len`` 20, ``d_model`` 64, one epoch of ``--steps`` batches, XLA off, with
   ``adam`` and again with ``lazy_adam`` (unless ``--no-lazy``). The step
   time is the median of the per-batch times after the first 20 batches.
3. Export (``serving.export_model``, exact scoring) and two more versions with
   ``ServingSignatures(scoring="exact_copy")`` and ``(scoring="bf16")`` saved directly
   (warmup and export info copied from the exact version: same vocabulary, k and history
   exclusion), all three checked with ``serving.check_serving``.
4. ``serving_default`` latency through ``tf.saved_model.load`` at batch 1 and 64 (p50 /
   p99, the two exports interleaved), the top-100 agreement of the two on every timed
   request, the export sizes, and a kernel table (the ``[1, 64] x [64, 1M]`` scan with
   the trained item table in float32 and bfloat16, several layouts).

The machine is shared: the load average is recorded before and after, and only ratios
inside this one run are meant to be compared.

    .venv/bin/python scripts/million_items.py --no-train   # serving only, ~10 min
    .venv/bin/python scripts/million_items.py              # with training (adam and
                                                           # lazy_adam): ~25 min here
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import tfrs_linear  # noqa: F401  (Keras 2 before TensorFlow is used)
import tensorflow as tf

from tfrs_linear import serving
from tfrs_linear.config import ModelConfig, TrainConfig
from tfrs_linear.data import Interactions, build_sequences
from tfrs_linear.models import SequentialRetrievalModel, load_model_dir, save_model_dir
from tfrs_linear.serving.signatures import ServingSignatures
from tfrs_linear.training import Trainer

ROOT = Path(__file__).resolve().parents[1]
K = 100


def log(message):
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def load_average():
    return [round(x, 2) for x in os.getloadavg()]


# --------------------------------------------------------------------------- data


def make_interactions(num_items, users, walk, popular, seed=0):
    """Every user walks ``walk`` consecutive items of one shuffled catalogue order (so the
    whole catalogue of ``users * walk >= num_items`` occurs) with ``popular`` Zipf draws
    interleaved at random positions; ids ``"1"..``, taken modulo ``num_items``."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(max(num_items, users * walk))
    zipf = 1.0 / np.arange(1, num_items + 1) ** 1.1
    zipf /= zipf.sum()
    all_users, all_items = [], []
    for u in range(users):
        seq = order[u * walk:(u + 1) * walk]
        pop = rng.choice(num_items, size=popular, p=zipf)
        at = np.sort(rng.integers(0, walk, size=popular))
        seq = np.insert(seq, at, pop) % num_items
        all_users.append(np.full(len(seq), u + 1))
        all_items.append(seq + 1)
    users_a = np.concatenate(all_users).astype(str)
    items_a = np.concatenate(all_items).astype(str)
    times = np.concatenate([np.arange(len(x), dtype=np.float64) for x in all_users])
    return Interactions(users=users_a, items=items_a, timestamps=times,
                        source=f"million_items(items={num_items})", format="synthetic")


# --------------------------------------------------------------------------- training


class StepTimes(tf.keras.callbacks.Callback):
    """Wall time of every training batch."""

    def __init__(self):
        super().__init__()
        self.times = []

    def on_train_batch_begin(self, batch, logs=None):
        self._t = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.times.append(time.perf_counter() - self._t)


def train(num_items, args, out, optimizer="adam"):
    data = build_sequences(make_interactions(num_items, args.users, args.walk, args.popular))
    model_config = ModelConfig(attention="softmax", loss="sampled", max_len=20, d_model=64,
                               num_layers=1, num_heads=2, ffn_dim=128)
    train_config = TrainConfig(batch_size=128, epochs=1, xla=False, eval_batch_size=32,
                               optimizer=optimizer)
    steps = StepTimes()
    started = time.perf_counter()
    Trainer(model_config, train_config, data, out, verbose=0, steps_per_epoch=args.steps,
            callbacks=[steps]).run()
    wall = time.perf_counter() - started
    step = float(np.median(steps.times[min(20, len(steps.times) // 2):]))
    log(f"trained {data.num_items} items ({optimizer}): step p50 {step}, {wall:.0f} s in all")
    return {"optimizer": optimizer, "num_items": int(data.num_items), "num_interactions": int(data.num_interactions),
            "num_users": int(data.num_users), "steps": len(steps.times),
            "step_p50_s": step, "run_wall_s": wall}


def random_model_dir(num_items, out, seed=0):
    """``--no-train``: an untrained model whose item table has a popularity-like norm
    spread (log-normal norms, sigma 0.5, larger for the more popular low ids)."""
    config = ModelConfig(attention="softmax", loss="sampled", max_len=20, d_model=64,
                         num_layers=1, num_heads=2, ffn_dim=128)
    vocab = ["[PAD]", "[OOV]"] + [str(i + 1) for i in range(num_items)]
    model = SequentialRetrievalModel(config, vocab_size=len(vocab)).build_all()
    rng = np.random.default_rng(seed)
    table = rng.standard_normal([len(vocab), 64]).astype(np.float32) / 8
    rank_term = -0.15 * np.log1p(np.arange(len(vocab)))[:, None]
    table *= np.exp(rng.normal(0, 0.5, [len(vocab), 1]) + rank_term).astype(np.float32)
    model.candidate_embedding.embeddings.assign(table)
    save_model_dir(model, vocab, out)
    return out


# --------------------------------------------------------------------------- export


def export_both(model_dir, base):
    """({scoring: version folder}, bf16's C, their check-serving reports)."""
    model, _, vocab = load_model_dir(model_dir)
    exact = serving.export_model(model, vocab, base / "exact", k=K, model_dir=model_dir)
    paths = {"exact": exact}
    for scoring in ("exact_copy", "bf16"):
        paths[scoring] = base / scoring / "1"
        built = ServingSignatures(model, exact / "assets" / "vocab.txt", K, True,
                                  scoring=scoring)
        tf.saved_model.save(built.module, str(paths[scoring]), signatures=built.signatures())
        shutil.copytree(exact / "assets.extra", paths[scoring] / "assets.extra")
    reports = {}
    for name, path in paths.items():
        ok, lines = serving.check_serving(path, model_dir=model_dir)
        reports[name] = {"ok": bool(ok), "lines": lines}
        log(f"check-serving {name}: {'OK' if ok else 'FAIL'}")
    return paths, built.candidates, reports


def size_mb(path):
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()) / 2**20


# --------------------------------------------------------------------------- latency


def requests(vocab, batch, count, seed):
    rng = np.random.default_rng(seed)
    items = np.array(vocab[2:])
    return [tf.constant(items[rng.integers(0, len(items), size=(batch, 20))])
            for _ in range(count)]


def latency(paths, batch, count, seed):
    """{name: (p50, p99, outputs)} with the exports' calls interleaved per request."""
    fns = {name: tf.saved_model.load(str(p)).signatures["serving_default"]
           for name, p in paths.items()}
    vocab = (Path(paths["exact"]) / "assets" / "vocab.txt").read_text().splitlines()
    reqs = requests(vocab, batch, count, seed)
    for fn in fns.values():
        fn(item_ids=reqs[0])  # warm up
    times = {name: [] for name in fns}
    outs = {name: [] for name in fns}
    for req in reqs:
        for name, fn in fns.items():
            t = time.perf_counter()
            out = fn(item_ids=req)
            ids = out["item_ids"].numpy()
            times[name].append(time.perf_counter() - t)
            outs[name].append((ids, out["scores"].numpy()))
    return {name: {"p50_ms": 1e3 * float(np.percentile(t, 50)),
                   "p99_ms": 1e3 * float(np.percentile(t, 99)), "n": len(t)}
            for name, t in times.items()}, outs


def agreement(outs, name):
    """Share of queries whose top-k ids (in order) are identical, and the largest score
    difference on those."""
    same, total, diff = 0, 0, 0.0
    for (ei, es), (fi, fs) in zip(outs["exact"], outs[name]):
        rows = np.all(ei == fi, axis=1)
        same += int(rows.sum())
        total += len(rows)
        finite = np.isfinite(es[rows])
        if finite.any():
            diff = max(diff, float(np.max(np.abs(es[rows][finite] - fs[rows][finite]))))
    return {"identical": same, "queries": total, "share": same / total,
            "max_abs_score_diff": diff}


# --------------------------------------------------------------------------- kernels


def kernels(model_dir, reps):
    """p50 wall and CPU ms of the batch-1 candidate scan in several forms."""
    model, _, _ = load_model_dir(model_dir)
    table = model.item_embeddings().numpy()[2:]
    t32, t16 = tf.Variable(table), tf.Variable(tf.cast(table, tf.bfloat16))
    t32t, t16t = tf.Variable(table.T.copy()), tf.Variable(tf.cast(table.T, tf.bfloat16))
    u = tf.constant(np.random.default_rng(1).standard_normal([1, table.shape[1]]), tf.float32)
    u16 = tf.cast(u, tf.bfloat16)
    forms = {
        "float32 matmul [1,d]x[V,d]^T (the exact scan)":
            lambda: tf.matmul(u, t32, transpose_b=True),
        "float32 matmul [1,d]x[d,V]": lambda: tf.matmul(u, t32t),
        "float32 linalg.matvec [V,d]": lambda: tf.linalg.matvec(t32, u[0]),
        "bfloat16 matmul [1,d]x[V,d]^T (the bf16 path)":
            lambda: tf.matmul(u16, t16, transpose_b=True),
        "bfloat16 matmul [1,d]x[d,V]": lambda: tf.matmul(u16, t16t),
        "bfloat16 linalg.matvec [V,d]": lambda: tf.linalg.matvec(t16, u16[0]),
        "bfloat16 cast to float32, then matmul":
            lambda: tf.matmul(u, tf.cast(t16, tf.float32), transpose_b=True),
    }
    rows = {}
    for name, f in forms.items():
        fn = tf.function(f)
        fn()
        wall, cpu = [], []
        for _ in range(reps):
            t, c = time.perf_counter(), time.process_time()
            fn().numpy()
            wall.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
        rows[name] = {"p50_ms": 1e3 * float(np.median(wall)),
                      "cpu_p50_ms": 1e3 * float(np.median(cpu))}
        log(f"kernel {name}: {rows[name]}")
    return rows


# --------------------------------------------------------------------------- report


def write_report(result, out_md, out_json):
    out_json.write_text(json.dumps(result, indent=2) + "\n")
    out_md.write_text(render(result))


def render(r):
    lines = [
        "# A million-item catalogue",
        "",
        "Written by `scripts/million_items.py` (one run; ratios are within this run). "
        f"Machine: {r['machine']}; load average (1/5/15 min) {r['load_before']} before, "
        f"{r['load_after']} after: the two cores are shared with other jobs, so absolute "
        "times are inflated and noisy.",
        "",
    ] + train_lines(r["train"]) + [
              f"Item embeddings served below: {r.get('embeddings', 'the trained 1M-item model' + chr(39) + 's')}.",
              "", "## Export and check-serving", "",
              "| export | size | check-serving |", "|---|---|---|"]
    for name in r["size_mb"]:
        lines.append(f"| {name} | {r['size_mb'][name]:.0f} MB | "
                     f"{'OK' if r['check'][name]['ok'] else 'FAIL'} |")
    lines += ["", f"bf16: candidates C = {r['candidates']}, k = {K}; the bf16 export holds the "
              "float32 table and its bfloat16 copy.", "",
              "## serving_default latency (tf.saved_model.load, the exports interleaved)",
              "", "| batch | scoring | p50 | p99 | exact p50 / this p50 |", "|---|---|---|---|---|"]
    for batch, lat in r["latency"].items():
        for name, x in lat.items():
            lines.append(f"| {batch} | {name} | {x['p50_ms']:.0f} ms | {x['p99_ms']:.0f} ms | "
                         f"{lat['exact']['p50_ms'] / x['p50_ms']:.2f}x |")
    if "agreement_exact_copy" in r:
        c = r["agreement_exact_copy"]
        lines += ["", f"exact_copy: top-{K} identical to exact on {c['identical']} / "
                  f"{c['queries']} queries."]
    a = r["agreement"]
    lines += ["", f"Top-{K} identical (ids in order) to the exact scan's: {a['identical']} / "
              f"{a['queries']} queries ({100 * a['share']:.1f}%); largest score difference on "
              f"those {a['max_abs_score_diff']:.2g}.", "",
              "## The batch-1 candidate scan, [1, 64] x [64, V], the served item table", "",
              "| form | p50 wall | p50 CPU time | CPU time / exact scan's |", "|---|---|---|---|"]
    base = next(iter(r["kernels"].values()))["cpu_p50_ms"]
    for name, k in r["kernels"].items():
        lines.append(f"| {name} | {k['p50_ms']:.1f} ms | {k['cpu_p50_ms']:.1f} ms | "
                     f"{k['cpu_p50_ms'] / base:.2f}x |")
    lines += ["", r["conclusion"], "", "## The bf16 scoring path", "", DESIGN, ""]
    return "\n".join(lines)


def train_lines(train):
    if train is None:
        return ["", "No training in this run (`--no-train`).", ""]
    big, small = train["big"], train["small"]
    lines = ["## Training (sampled loss, softmax attention, max_len 20, d_model 64, 1 layer, "
             "batch 128, XLA off)", "",
             "| catalogue | optimizer | events | users | steps | step p50 | run wall (incl. 3 "
             "full-ranking evaluations) |", "|---|---|---|---|---|---|---|"]
    runs = [small, big] + [train[k] for k in ("small_lazy", "big_lazy") if k in train]
    for t in runs:
        lines.append(f"| {t['num_items']:,} | {t.get('optimizer', 'adam')} | "
                     f"{t['num_interactions']:,} | {t['num_users']} | {t['steps']} | "
                     f"{t['step_p50_s'] * 1e3:.0f} ms | {t['run_wall_s']:.0f} s |")
    ratio = big["step_p50_s"] / small["step_p50_s"]
    lines += ["", f"Step time ratio 1M / 10k with adam: **{ratio:.2f}x**."]
    if "big_lazy" in train:
        lazy = train["big_lazy"]
        lines.append(f"With lazy_adam: 1M / 10k **{lazy['step_p50_s'] / train['small_lazy']['step_p50_s']:.2f}x**; "
                     f"at 1M items lazy_adam's step is {big['step_p50_s'] / lazy['step_p50_s']:.2f}x "
                     "faster than adam's (adam decays both moment tensors of the whole [1M, 64] "
                     "item table every step; lazy_adam updates the rows the batch touches).")
    return lines + [""]


DESIGN = """\
`ServingSignatures(..., scoring="bf16", candidates=C)` (tfrs_linear/serving/signatures.py)
stores a bfloat16 copy of the catalogue rows as the SavedModel variable
`item_table_bf16` ([V - 2, d], half the float32 table's bytes) and ranks in three steps:
the bfloat16 scan of every item, history items set to -inf (before the cut, so they
never take a candidate slot), the top C of that scan (C >= k; default max(400, k),
capped at the catalogue), then an exact float32 re-rank of the C candidates (their
float32 rows gathered from the model's table) cut to k. The returned scores are the
exact float32 scores, and ties break by the lower position as in the exact scan. A
`candidates` below k is refused (`--candidates must be an integer >= k`), and
`candidates` with `scoring="exact"` is refused too. Plain TF ops, no `jit_compile`: the
ops scan of check-serving passes. Every signature that ranks (serving_default,
serving_tf_example, the streaming `step`) goes through `ServingSignatures.rank`."""


def conclusion(r):
    lat = r["latency"]["1"]
    parts = []
    for name, key in (("bf16", "agreement"), ("exact_copy", "agreement_exact_copy")):
        if name not in lat or key not in r:
            continue
        ratio = lat["exact"]["p50_ms"] / lat[name]["p50_ms"]
        share = r[key]["share"]
        met = ratio >= 2 and share >= 0.99
        parts.append(f"{name}: **{'met' if met else 'not met'}** (batch-1 p50 ratio "
                     f"{ratio:.2f}x, top-{K} identical {100 * share:.1f}%)")
    return (f"Target (batch-1 p50 >= 2x faster than the exact scan, top-{K} identical for "
            f">= 99% of queries), on this machine: {'; '.join(parts)}. {r['machine_note']}")


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--items", type=int, default=1_000_000)
    p.add_argument("--small-items", type=int, default=10_000)
    p.add_argument("--users", type=int, default=500)
    p.add_argument("--walk", type=int, default=2000)
    p.add_argument("--popular", type=int, default=400)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--reps", type=int, default=15, help="batch-1 requests per export")
    p.add_argument("--reps64", type=int, default=3, help="batch-64 requests per export")
    p.add_argument("--work", default=None, help="working folder (default: a temporary one)")
    p.add_argument("--out", default=str(ROOT / "docs" / "bench" / "million"))
    p.add_argument("--no-train", action="store_true",
                   help="skip training: serve an untrained model with a random item table")
    p.add_argument("--no-lazy", action="store_true",
                   help="train with adam only (not also with lazy_adam)")
    p.add_argument("--render-only", action="store_true",
                   help="rewrite OUT.md from OUT.json (no measurement)")
    args = p.parse_args(argv)
    out = Path(args.out)
    if args.render_only:
        if not Path(args.out + ".json").is_file():
            p.error(f"--render-only: no saved run at {args.out}.json")
    else:
        # Before the run, not when its report is written minutes later.
        out.parent.mkdir(parents=True, exist_ok=True)
    return args


def machine():
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    names = [l.split(":", 1)[1].strip() for l in flags.splitlines() if l.startswith("model name")]
    isa = sorted({w for w in flags.split() if w.startswith(("avx512", "amx"))})
    return (f"{names[0] if names else 'unknown CPU'}, {os.cpu_count()} cores, "
            f"AVX-512/AMX flags: {', '.join(isa) or 'none'}")


def main(argv=None):
    args = parse_args(argv)
    if args.render_only:
        result = json.loads(Path(args.out + ".json").read_text())
        result["conclusion"] = conclusion(result)
        write_report(result, Path(args.out + ".md"), Path(args.out + ".json"))
        return 0
    work = Path(args.work or tempfile.mkdtemp(prefix="million-"))
    r = {"machine": machine(), "load_before": load_average(), "args": vars(args)}
    log(f"work in {work}; {r['machine']}; load {r['load_before']}")
    if args.no_train:
        r["train"] = None
        model_dir = random_model_dir(args.items, work / "random_big")
    else:
        r["train"] = {"small": train(args.small_items, args, work / "run_small"),
                      "big": train(args.items, args, work / "run_big")}
        if not args.no_lazy:
            r["train"]["small_lazy"] = train(args.small_items, args, work / "run_small_lazy",
                                             "lazy_adam")
            r["train"]["big_lazy"] = train(args.items, args, work / "run_big_lazy", "lazy_adam")
        model_dir = work / "run_big"
    r["embeddings"] = ("untrained model, random item table with a popularity-like norm spread"
                       if args.no_train else "the trained 1M-item model's")
    paths, r["candidates"], r["check"] = export_both(model_dir, work / "saved_models")
    r["size_mb"] = {name: size_mb(p) for name, p in paths.items()}
    lat1, outs1 = latency(paths, 1, args.reps, seed=1)
    lat64, outs64 = latency(paths, 64, args.reps64, seed=2)
    r["latency"] = {"1": lat1, "64": lat64}
    r["agreement"] = agreement({n: outs1[n] + outs64[n] for n in paths}, "bf16")
    r["agreement_exact_copy"] = agreement({n: outs1[n] + outs64[n] for n in paths}, "exact_copy")
    r["kernels"] = kernels(model_dir, args.reps)
    r["load_after"] = load_average()
    isa = r["machine"].split("AVX-512/AMX flags: ")[-1]
    r["machine_note"] = (
        "This CPU has no bfloat16 matrix instructions (AVX-512/AMX flags: "
        f"{isa}), so TensorFlow's bfloat16 matmul is an unvectorized Eigen kernel and is "
        "slower than the memory-bound float32 scan; the kernel table shows every form tried."
        if isa == "none" else "")
    r["conclusion"] = conclusion(r)
    write_report(r, Path(args.out + ".md"), Path(args.out + ".json"))
    log(f"wrote {args.out}.md and .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
