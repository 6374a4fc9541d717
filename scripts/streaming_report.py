"""The report of ``scripts/streaming_latency.py``: its Markdown page, tables and plot.

Everything here reads one run's JSON record (what ``streaming_latency.summarise``
returns, or a saved ``streaming*.json``), so a page can be redrawn without measuring
(``streaming_latency.py --from-json``). The Python timer's run writes ``streaming.*``,
the C timer's ``streaming-native*.*``.
"""

import json

LABELS = {"linrec": "LinRec", "elastic": "ELASTIC (causal, k=16)"}


def _row(result, attention, length, batch, signature):
    for r in result["rows"]:
        if (r["attention"], r["history"], r["batch"], r["signature"]) == (
                attention, length, batch, signature):
            return r
    return None


def _p50(result, attention, length, batch, signature):
    return _row(result, attention, length, batch, signature)["p50_ms"]


def _dims(result):
    rows = result["rows"]
    attentions = list(dict.fromkeys(r["attention"] for r in rows))
    lengths = sorted({r["history"] for r in rows})
    batches = sorted({r["batch"] for r in rows})
    return attentions, lengths, batches


def _ms(x):
    return f"{x:,.0f}" if x >= 100 else f"{x:.1f}" if x >= 10 else f"{x:.2f}"


def _times(x):
    return f"{x:,.0f}×" if x >= 10 else f"{x:.1f}×"


def _cells(result):
    """``(attention, length, batch)`` in the order of the tables' rows."""
    attentions, lengths, batches = _dims(result)
    for attention in attentions:
        for batch in batches:
            for length in lengths:
                yield attention, length, batch


def _lead(attention, length, batch):
    """The first three cells of a row of the per-point tables."""
    return f"| {LABELS.get(attention, attention)} | {length:,} | {batch} | "


def latency_table(result):
    bursts = result.get("burst", 1) > 1
    first = " `step` p50 of a burst's first call ms |" if bursts else ""
    lines = ["| model | history | batch | `step` p50 / p99 ms | `serving_default` p50 / p99 ms "
             f"| speed-up p50 / p99 |{first} n (step / default) |",
             "|---|---:|---:|---:|---:|---:|" + ("---:|" if bursts else "") + "---:|"]
    for attention, length, batch in _cells(result):
        s = _row(result, attention, length, batch, "step")
        d = _row(result, attention, length, batch, "serving_default")
        cold = f" {_ms(s['first_p50_ms'])} |" if bursts else ""
        lines.append(
            _lead(attention, length, batch) + f"{_ms(s['p50_ms'])} / {_ms(s['p99_ms'])} | "
            f"{_ms(d['p50_ms'])} / {_ms(d['p99_ms'])} | "
            f"{_times(d['p50_ms'] / s['p50_ms'])} / {_times(d['p99_ms'] / s['p99_ms'])} |"
            f"{cold} {s['n']} / {d['n']} |")
    return lines


def _rounds_text(result):
    """How the points were interleaved (and, since bursts, how many calls in a row)."""
    burst = result.get("burst", 1)
    text = f"""The points were interleaved round-robin over {result['rounds']} rounds after one or two
warm-up calls each; a slow point ran in fewer rounds, spread evenly over the run (at most
about {result['seconds_per_point']:.0f} s of measured time, at least {result['min_reps']}
runs; `n` says how many)."""
    if burst == 1:
        return text + f""" With at most {result['rounds']} runs, a point's p99 is about its
slowest run."""
    return text + f""" In each of its rounds a point ran up to {burst} calls in a row, each
timed (fewer for a slow point): a server answering a stream of one signature's requests,
whose weights stay in the caches. The first call of each burst follows the other exports'
calls (a 20,000-event re-encode touches tens of MB), so its caches are cold: the
`step` column "first call" gives their median, the p99 includes them."""


def flatness_table(result):
    attentions, lengths, batches = _dims(result)
    lo, hi = lengths[0], lengths[-1]
    lines = [f"| model | batch | `step` p50 at {lo:,} / {hi:,} ms | ratio {hi:,} / {lo:,} "
             "| target |", "|---|---:|---:|---:|---|"]
    for attention in attentions:
        for batch in batches:
            a, b = (_p50(result, attention, n, batch, "step") for n in (lo, hi))
            lines.append(f"| {LABELS.get(attention, attention)} | {batch} | {_ms(a)} / {_ms(b)} "
                         f"| {b / a:.2f} | {'met' if b / a <= 1.2 else 'MISSED'} (≤ 1.2) |")
    return lines


def encode_table(result):
    lines = ["| model | history | batch | `encode_state` p50 / p99 ms | / `serving_default` p50 "
             "| / `step` p50 |", "|---|---:|---:|---:|---:|---:|"]
    for attention, length, batch in _cells(result):
        e = _row(result, attention, length, batch, "encode_state")
        if e is None:
            continue
        d = _row(result, attention, length, batch, "serving_default")
        s = _row(result, attention, length, batch, "step")
        lines.append(_lead(attention, length, batch)
                     + f"{_ms(e['p50_ms'])} / {_ms(e['p99_ms'])} | "
                     f"{e['p50_ms'] / d['p50_ms']:.2f}× | "
                     f"{_times(e['p50_ms'] / s['p50_ms'])} |")
    return lines


def state_table(result):
    attentions, lengths, _ = _dims(result)
    layers, d = result["num_layers"], result["d_model"]
    head = "| history | softmax KV cache |"
    rule = "|---:|---:|"
    for attention in attentions:
        head += f" {LABELS.get(attention, attention)} state | KV / it |"
        rule += "---:|---:|"
    lines = [head, rule]
    for length in lengths:
        kv = layers * 2 * length * d * 4
        line = f"| {length:,} | {kv:,} B |"
        for attention in attentions:
            s = result["state_bytes"][attention][str(length)]
            total = s["model_bytes"] + s["fingerprint_and_recent_bytes"]
            line += f" {total:,} B | {kv / total:.1f}× |"
        lines.append(line)
    return lines


def tensors_table(result):
    """The state tensors per user: one row per name (the blocks' folded into
    ``block_<i>.``), its shape per model."""
    attentions, lengths, _ = _dims(result)
    shapes = {}
    for attention in attentions:
        for name, shape in result["state_bytes"][attention][str(lengths[-1])]["tensors"].items():
            if name.startswith("block_"):
                name = "block_<i>." + name.split(".", 1)[1]
            shapes.setdefault(name, {})[attention] = shape
    head = "| state tensor (per user) |" + "".join(
        f" {LABELS.get(a, a)} |" for a in attentions)
    lines = [head, "|---|" + "---|" * len(attentions)]
    for name in sorted(shapes):
        cells = "".join(f" {shapes[name].get(a, '–')} |" for a in attentions)
        lines.append(f"| `{name}` |{cells}")
    return lines


def _setting(result):
    """The page's paragraph on what was measured and how."""
    load = result["load_1min"]
    return f"""Setting: LinRec and causal ELASTIC at `ModelConfig`'s default widths (d_model
{result['d_model']}, {result['num_layers']} layers, {result['num_heads']} heads; ELASTIC with
k = 16 interests and the recency bias), `positions="{result['positions']}"`, **untrained
weights**: latency does not depend on their values, with one caveat: ELASTIC's full encode
falls back to its slower exact path on a batch whose logits jump by more than 60 inside a
chunk, which random weights are unlikely to produce and trained ones may (that would only
slow `serving_default`). One export per history length, with `max_len` = the history
(`serving_default` always encodes the full `max_len` window, so a longer `max_len` would
only slow it); a catalogue of {result['items']:,} items, k = {result['k']}, history exclusion
on (the export's default; `step` excludes the newest 100 items its state keeps). Histories
are random catalogue ids; `step` is fed the state `encode_state` made of the first of them
(at batch 64 repeated 64 times: `step` runs the same dense ops whatever the state's values).

{_rounds_text(result)} {result['cpus']} CPU cores shared with other jobs: 1-minute load average
{load['min']:.1f}–{load['max']:.1f} (mean {load['mean']:.1f}) {_when(result)} the rounds.
Run started {result['started_utc']} and took {result['wall_s']:.0f} s ({result['setup_s']:.0f} s of it
exporting, or reusing exports, and loading them); TensorFlow {result['tensorflow']}.{_environment_text(result)}
Absolute times depend on the load; the ratios are within one run."""


def _environment_text(result):
    """The run's server settings from its environment (``LD_PRELOAD``, oneDNN), if any."""
    env = result.get("environment") or {}
    if not env:
        return ""
    return " Environment: " + ", ".join(f"`{k}={v}`" for k, v in sorted(env.items())) + "."


def _floor_text(result):
    """The per-call floor's sentence (runs made before it was measured have none)."""
    floor = result.get("floor")
    if not floor:
        return ""
    attentions, lengths, _ = _dims(result)
    step = _p50(result, attentions[0], lengths[0], 1, "step")
    return (f"\nThe floor of one call on this machine: a SavedModel whose `step` signature "
            f"takes and returns the same tensors and only passes them through (batch 1) "
            f"runs in {_ms(floor['p50_ms'])} / {_ms(floor['p99_ms'])} ms (p50 / p99, "
            f"n {floor['n']}), {floor['p50_ms'] / step:.0%} of "
            f"{LABELS.get(attentions[0])}'s batch-1 `step` at {lengths[0]:,} "
            f"events ({_ms(step)} ms): feeding and fetching the state costs that "
            "much before any model op runs. 100× over re-encoding needs a `step` under 1% of "
            "`serving_default`.\n")


def report(result):
    """The Markdown page of a run."""
    attentions, lengths, batches = _dims(result)
    hi = lengths[-1]
    targets = []
    for attention in attentions:
        for batch in batches:
            s, d = (_p50(result, attention, hi, batch, sig) for sig in ("step", "serving_default"))
            targets.append(f"{LABELS.get(attention, attention)} batch {batch}: {_times(d / s)}"
                           f" ({'met' if d / s >= 100 else 'MISSED'})")
    breakdown = []
    for attention in attentions:
        s = result["state_bytes"][attention][str(hi)]
        breakdown.append(f"{LABELS.get(attention, attention)}: {s['model_bytes']:,} B of model "
                         f"state + {s['fingerprint_and_recent_bytes']:,} B of fingerprint and "
                         "recent items")
    stem = _stem(result)
    return f"""# Streaming serving latency{' (C timer)' if stem != 'streaming' else ''}

`step` (one new event on a user's stored state) against `serving_default` (the whole
history re-encoded on every request), measured as TF Serving runs them: {_how(result)}
(no XLA; no network or protobuf serialization: the state's size on the wire is in the
state table below). Made by `scripts/streaming_latency.py{_flag(result)}` (this page,
`{stem}.json` and `{stem}.png`; redraw without measuring: `--from-json
docs/serving/{stem}.json`).

{_setting(result)}

## `step` against re-encoding

{chr(10).join(latency_table(result))}

Speed-up of `step` over `serving_default` at {hi:,} events (p50; target ≥ 100×):
{'; '.join(targets)}.
{_floor_text(result)}

![p50 latency against history length]({stem}.png)

## `step` does not grow with the history

{chr(10).join(flatness_table(result))}

The state has the same shapes whatever the history's length and `step` runs the same ops
on it; only the numbers in the state differ (and the size of the position table, of which
`step` reads one row). Differences between lengths come from the machine's load.

## The first call: `encode_state`

A user without a stored state (a first event, or a state lost or made by another export)
is encoded once from the whole history. Exports since 2026-11-29 (afternoon) encode it in
one parallel pass, the causal blocks over the whole history with each block's state summed
from its inputs, at most 2^18 events at once (batch × width; larger batches in groups of
rows, longer rows by the step loop). Before,
`encode_state` ran the recurrent step over the history in `tf.while_loop`s, a fixed number
of events per step (1,024 / 256 / 64 for LinRec, 64 / 16 for ELASTIC; earlier 64 / 16
throughout). Either way its cost grows linearly with the history, like `serving_default`'s.

{chr(10).join(encode_table(result))}

## State bytes per user

What a service stores per user, summed over `encode_state`'s outputs except
`user_embedding` (the float32 model state, the int64 export fingerprint and the int32
newest 100 item indices for history exclusion), against the key/value cache a softmax
model would keep to serve the same history incrementally ({result['num_layers']} layers × 2
(K and V) × length × d_model {result['d_model']} × 4 bytes, float32):

{chr(10).join(state_table(result))}

The streaming state does not depend on the history's length ({'; '.join(breakdown)}).
Half of each running sum is its Kahan compensation term (exactness over long streams).
`block_<i>.` stands for each of the {result['num_layers']} blocks; `fingerprint` is int64,
`recent_items` int32, the rest float32 (shape `[]`: one number per user):

{chr(10).join(tensors_table(result))}
"""


def plot(result, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    attentions, lengths, batches = _dims(result)
    fig, axes = plt.subplots(1, len(batches), figsize=(5.5 * len(batches), 4.2), squeeze=False)
    styles = {"serving_default": "-", "encode_state": ":", "step": "--"}
    colors = {"linrec": "tab:blue", "elastic": "tab:orange"}
    for ax, batch in zip(axes[0], batches):
        for attention in attentions:
            for signature, style in styles.items():
                rows = [_row(result, attention, n, batch, signature) for n in lengths]
                if None in rows:
                    continue
                y = [r["p50_ms"] for r in rows]
                ax.plot(lengths, y, style, marker="o", color=colors.get(attention),
                        label=f"{LABELS.get(attention, attention)} {signature}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(lengths)
        ax.set_xticklabels([f"{n:,}" for n in lengths])
        ax.minorticks_off()
        ax.set_xlabel("history length (events)")
        ax.set_ylabel("p50 latency (ms)")
        ax.set_title(f"batch {batch}")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=7)
    how = ("C API, one TF_SessionRun per call" if result.get("timer") == "native"
           else "TF1 session as TF Serving runs it")
    fig.suptitle(f"{how}; step = one new event", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _stem(result):
    """The output files' stem: the C timer's run has its own page."""
    if result.get("timer") != "native":
        return "streaming"
    inter, intra = result.get("threads") or (0, 0)
    inter_name = "caller" if inter < 0 else inter  # -1: every op in the calling thread
    return "streaming-native" + (f"-threads{inter_name}-{intra}" if inter or intra else "")


def _when(result):
    """The C timer reads the load before and after its rounds, Python's every round."""
    return "before and after" if result.get("timer") == "native" else "during"


def _flag(result):
    if result.get("timer") != "native":
        return ""
    inter, intra = result.get("threads") or (0, 0)
    return " --timer native" + (f" --inter-op-threads {inter}" if inter else "") + (
        f" --intra-op-threads {intra}" if intra else "")


def _threads_text(result):
    inter, intra = result.get("threads") or (0, 0)
    if not inter and not intra:
        return "; TensorFlow's default thread pools"
    name = lambda n: str(n) if n else "default"  # noqa: E731
    plural = lambda n: "thread" if n == 1 else "threads"  # noqa: E731
    inter_text = ("every op in the calling thread (inter-op -1)" if inter < 0
                  else f"{name(inter)} inter-op {plural(inter)}")
    return (f"; sessions with {inter_text} and {name(intra)} intra-op {plural(intra)} "
            "(TF Serving's `--tensorflow_inter_op_parallelism` / "
            "`--tensorflow_intra_op_parallelism`)")


def _how(result):
    """How each call was made, for the page (runs before --timer are Python's)."""
    if result.get("timer") == "native":
        return ("each export loaded with TensorFlow's C API on the `serve` tag "
                "(`TF_LoadSessionFromSavedModel`, the loader of TF Serving's "
                "SavedModelBundle), all of them in one compiled C process "
                "(`scripts/session_run_timer.c`), each call ONE `TF_SessionRun` on the "
                "signature's tensor names with the feeds made once beforehand: what TF "
                "Serving runs per request, without Python anywhere in the timed call"
                + _threads_text(result))
    return ("each export loaded in a TF1 session on the `serve` tag, each signature run "
            "through a `Session.make_callable` on its tensor names: one C++ "
            "`Session::Run` per call, as TF Serving makes it, plus the Python binding's "
            "conversion of every feed and fetch (`--timer native` times without it)")


def write_outputs(result, out):
    out.mkdir(parents=True, exist_ok=True)
    stem = _stem(result)
    (out / f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n")
    plot(result, out / f"{stem}.png")
    (out / f"{stem}.md").write_text(report(result))
    print("\n".join(latency_table(result) + [""] + flatness_table(result) + [""]
                    + encode_table(result) + [""] + state_table(result)))
