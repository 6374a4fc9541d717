"""``tfrs-linear bench``: time and peak memory of softmax, LinRec and ELASTIC attention vs N.

The bench measures, for every attention configuration and sequence length N:

* the time per batch of the **attention layer alone** and of a **2-block encoder**
  (``TransformerBlock`` x 2), forward and forward+backward, after warm-up, as the median
  and spread (IQR, min, max) over repetitions, in graph mode (``tf.function``) and XLA
  (``tf.function(jit_compile=True)``);
* the **peak memory** of a point. On CPU, every point (configuration x N) runs in a
  FRESH SUBPROCESS (``python -m tfrs_linear.bench --_worker SPEC RESULT``); the worker
  first runs the memory subject (attention layer, forward+backward) at a tiny N and reads
  the resident-set high-water mark (``VmHWM``, i.e. ``ru_maxrss``), then runs the real N
  and reads it again: memory = peak - baseline. The other measurements of the point get a
  per-step figure (the high-water mark reset through ``/proc/self/clear_refs`` before one
  warm step). On GPU, TensorFlow's ``reset_memory_stats`` / ``get_memory_info`` are used;
* for LinRec, the **efficiency limit**: the LinRec op (``ops.linrec.linrec_attention``)
  against its two unavoidable matmuls (``Kᵀ V`` and ``Q S``) alone at the same shapes,
  and its achieved FLOP/s against a large dense matmul on the same device;
* the fitted **growth exponent** in N (slope of log time / log memory vs log N);
* softmax points whose score tensors cannot fit (``batch x heads x N² x 4 bytes x a small
  factor``) against the available memory (RAM on CPU, device memory on GPU), or whose
  step time extrapolated from the previous N is too long, are **skipped**, never run
  into the OOM killer.

Outputs: ``DIR/bench.json`` (every raw number and the machine), ``DIR/bench.md`` (tables,
ratios vs softmax measured in the same run, exponents, efficiency, the issue's targets)
and ``DIR/bench.png`` (time and memory vs N, log-log).

ELASTIC (``tfrs_linear.layers.elastic.LinearDispatcherAttention``) is optional: when it
cannot be imported or fails a smoke call, its rows say ``unavailable: <reason>``.
"""

import argparse
import datetime as _dt
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time

SCHEMA = "tfrs_linear.bench/1"
DEFAULT_LENGTHS = (256, 1024, 4096, 16384)
QUICK_LENGTHS = (256, 1024)
MODES = ("graph", "xla")
SCOPES = ("layer", "encoder", "op", "matmuls")
PASSES = ("fwd", "fwdbwd")
SCOPE_TITLES = {
    "layer": "attention layer",
    "encoder": "2-block encoder",
    "op": "LinRec op",
    "matmuls": "two matmuls (KᵀV, Q·S)",
}
PASS_TITLES = {"fwd": "forward", "fwdbwd": "forward+backward"}
TARGET_N = 4096
TARGET_LONG_N = 16384
GIB = float(1024**3)
MIB = float(1024**2)


def _config(attention, causal=False, normalization=None, num_interests=None,
            recency_bias=False):
    return {
        "attention": attention,
        "causal": causal,
        "normalization": normalization,
        "num_interests": num_interests,
        "recency_bias": recency_bias,
    }


CONFIGS = {
    "softmax": _config("softmax"),
    "softmax-causal": _config("softmax", causal=True),
    "linrec-paper": _config("linrec", normalization="paper"),
    "linrec-paper-causal": _config("linrec", True, normalization="paper"),
    "linrec-token": _config("linrec", normalization="token"),
    "linrec-token-causal": _config("linrec", True, normalization="token"),
    "elastic-k16": _config("elastic", num_interests=16),
    "elastic-k32": _config("elastic", num_interests=32),
    "elastic-k16-causal": _config("elastic", True, num_interests=16),
    "elastic-k32-causal": _config("elastic", True, num_interests=32),
    # The causal form as SequentialRetrievalModel builds it by default (recency bias on).
    "elastic-k16-causal-recency": _config("elastic", True, num_interests=16, recency_bias=True),
}
FAMILIES = ("softmax", "linrec", "elastic")
# The configurations that also get the encoder in the default grid.
MAIN_CONFIGS = ("softmax", "linrec-paper", "elastic-k32")


# --------------------------------------------------------------------------- options


def _int_list(text):
    try:
        values = [int(v) for v in str(text).replace(" ", "").split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers separated by commas: {text!r}")
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers: {text!r}")
    return sorted(set(values))


def _choice_list(allowed):
    def parse(text):
        values = [v for v in str(text).replace(" ", "").split(",") if v]
        bad = [v for v in values if v not in allowed]
        if bad or not values:
            raise argparse.ArgumentTypeError(
                f"expected a comma-separated subset of {','.join(allowed)}, got {text!r}"
            )
        return list(dict.fromkeys(values))

    return parse


def _attention_list(text):
    names = []
    for token in str(text).replace(" ", "").split(","):
        if not token:
            continue
        if token == "all":
            names.extend(CONFIGS)
        elif token in CONFIGS:
            names.append(token)
        elif token in FAMILIES:
            names.extend(n for n, c in CONFIGS.items() if c["attention"] == token)
        else:
            raise argparse.ArgumentTypeError(
                f"unknown attention {token!r}: use all, a family ({', '.join(FAMILIES)}) "
                f"or a configuration ({', '.join(CONFIGS)})"
            )
    if not names:
        raise argparse.ArgumentTypeError("no attention selected")
    return [n for n in CONFIGS if n in set(names)]


def add_bench_arguments(parser):
    parser.add_argument(
        "--out", required=True, help="output folder: bench.json, bench.md, bench.png"
    )
    parser.add_argument(
        "--lengths",
        type=_int_list,
        default=None,
        help="sequence lengths N (default 256,1024,4096,16384; --quick 256,1024)",
    )
    parser.add_argument(
        "--device",
        choices=("auto", "cpu", "gpu"),
        default="auto",
        help="where to run (default: the GPU when one is visible, else the CPU)",
    )
    grid = parser.add_mutually_exclusive_group()
    grid.add_argument(
        "--full",
        action="store_true",
        help="every configuration x {layer, encoder, op} x {fwd, fwd+bwd} x modes",
    )
    grid.add_argument(
        "--quick",
        action="store_true",
        help="a small grid: attention layer fwd+bwd only, N 256,1024, 3 repeats",
    )
    parser.add_argument(
        "--attentions",
        type=_attention_list,
        default=None,
        help="configurations (comma-separated): all (default), a family "
        f"({', '.join(FAMILIES)}) or names among {', '.join(CONFIGS)}",
    )
    parser.add_argument(
        "--modes",
        type=_choice_list(MODES),
        default=list(MODES),
        help="execution modes: graph (tf.function), xla (jit_compile=True); default both",
    )
    parser.add_argument(
        "--scopes",
        type=_choice_list(SCOPES),
        default=None,
        help="override the grid: what to time (layer, encoder, op, matmuls; op and "
        "matmuls apply to LinRec only)",
    )
    parser.add_argument(
        "--passes",
        type=_choice_list(PASSES),
        default=None,
        help="override the grid: fwd and/or fwdbwd",
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--d-model", type=int, default=64)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument(
        "--num-blocks", type=int, default=2, help="blocks of the encoder (default 2)"
    )
    parser.add_argument(
        "--chunk-size", type=int, default=64, help="causal LinRec chunk length"
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="timed repetitions at most (default 7; --quick 3; --full 9)",
    )
    parser.add_argument(
        "--min-repeats",
        type=int,
        default=3,
        help="timed repetitions at least, even for slow steps (default 3)",
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=1,
        help="warm-up calls after the first (tracing/compiling) call (default 1)",
    )
    parser.add_argument(
        "--measure-seconds",
        type=float,
        default=2.0,
        help="time budget of the timed repetitions of one measurement; repetitions "
        "are reduced down to --min-repeats to fit it, and a first call slower than "
        "this counts as the warm-up (default 2)",
    )
    parser.add_argument(
        "--memory-limit-gib",
        type=float,
        default=None,
        help="memory to plan against instead of 80%% of the available RAM (CPU) or of "
        "the device memory (GPU); softmax points predicted above it are skipped",
    )
    parser.add_argument(
        "--softmax-memory-factor",
        type=float,
        default=8.0,
        help="N x N float32 score tensors assumed live for softmax forward+backward "
        "(half for forward; +1 per extra encoder block); default 8 (measured on CPU "
        "in graph mode: about 8 GiB at batch 8, 2 heads, N=4096)",
    )
    parser.add_argument(
        "--max-step-seconds",
        type=float,
        default=8.0,
        help="skip a point whose step time, extrapolated from the previous N "
        "(N² for softmax, N otherwise), exceeds this (default 8)",
    )
    parser.add_argument(
        "--point-timeout",
        type=float,
        default=900.0,
        help="wall-clock limit of one point's subprocess in seconds (default 900)",
    )
    parser.add_argument(
        "--baseline-length",
        type=int,
        default=16,
        help="the tiny N of the memory baseline in each subprocess (default 16)",
    )
    parser.add_argument(
        "--peak-matmul-size",
        type=int,
        default=None,
        help="size of the square dense matmul used as the FLOP/s reference "
        "(default 2048 on CPU, 8192 on GPU)",
    )
    parser.add_argument("--seed", type=int, default=0)


def _resolve_options(args):
    if args.lengths is None:
        args.lengths = list(QUICK_LENGTHS if args.quick else DEFAULT_LENGTHS)
    if args.repeats is None:
        args.repeats = 3 if args.quick else (9 if args.full else 7)
    if args.attentions is None:
        args.attentions = list(CONFIGS)
    args.min_repeats = max(1, min(args.min_repeats, args.repeats))
    args.warmup = max(0, args.warmup)
    for name in ("batch_size", "d_model", "heads", "num_blocks", "chunk_size"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
    if args.d_model % args.heads:
        raise ValueError(
            f"--d-model {args.d_model} is not divisible by --heads {args.heads}"
        )


def build_plan(args):
    """``{config: [(scope, pass, mode), ...]}``; a point's first item is its memory subject."""
    modes = list(args.modes)
    plan = {}
    for name in args.attentions:
        cfg = CONFIGS[name]
        linrec = cfg["attention"] == "linrec"
        items = []

        def add(scope, passes, item_modes):
            for pas in passes:
                for mode in item_modes:
                    if (scope, pas, mode) not in items:
                        items.append((scope, pas, mode))

        if args.scopes or args.passes:
            for scope in args.scopes or ["layer"]:
                if scope in ("op", "matmuls") and not linrec:
                    continue
                add(scope, args.passes or ["fwdbwd"], modes)
        elif args.full:
            scopes = ["layer", "encoder"] + (["op", "matmuls"] if linrec else [])
            for scope in scopes:
                add(scope, ["fwdbwd", "fwd"], modes)
        elif args.quick:
            add("layer", ["fwdbwd"], modes)
            if name == "linrec-paper":
                add("op", ["fwdbwd"], modes)
                add("matmuls", ["fwdbwd"], modes)
        else:
            # The default grid (about 10 minutes on 2 idle cores): the attention layer
            # fwd+bwd in every mode for every configuration; forward and the encoder
            # (first mode) for the main configurations; LinRec's efficiency limit.
            add("layer", ["fwdbwd"], modes)
            if name in MAIN_CONFIGS:
                add("layer", ["fwd"], modes[:1])
                add("encoder", ["fwdbwd"], modes[:1])
            if name == "linrec-paper":
                add("op", ["fwdbwd"], modes)
                add("matmuls", ["fwdbwd"], modes)
        plan[name] = items
    return plan


# ------------------------------------------------------------------------ statistics


def summarize(samples):
    """Median, quartiles, IQR, min and max of a list of seconds."""
    import numpy as np

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


def predict_softmax_bytes(cfg, scope, pas, n, args):
    """Predicted memory of softmax's N x N score tensors, or None for linear attentions."""
    if cfg["attention"] != "softmax" or scope not in ("layer", "encoder"):
        return None
    one = float(args.batch_size) * args.heads * n * n * 4  # float32 [B, H, N, N]
    factor = args.softmax_memory_factor
    if pas == "fwd":
        factor = factor / 2.0
    elif scope == "encoder":
        factor += args.num_blocks - 1  # the probabilities each block keeps for backward
    return one * factor


def predict_step_seconds(history, name, cfg, key, n):
    """Step time extrapolated from the largest smaller N measured (N² softmax, N else)."""
    pts = [(m, t) for m, t in history.get((name,) + key, []) if m < n]
    if not pts:
        return None
    n0, t0 = max(pts)
    exponent = 2.0 if cfg["attention"] == "softmax" else 1.0
    return t0 * (float(n) / n0) ** exponent


# ---------------------------------------------------------------------- environment


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cgroup_free_bytes():
    """Room left under a cgroup v2/v1 memory limit, or None without a limit."""
    pairs = (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        (
            "/sys/fs/cgroup/memory/memory.limit_in_bytes",
            "/sys/fs/cgroup/memory/memory.usage_in_bytes",
        ),
    )
    for limit_path, usage_path in pairs:
        try:
            with open(limit_path) as f:
                limit = f.read().strip()
            with open(usage_path) as f:
                usage = int(f.read().strip())
        except (OSError, ValueError):
            continue
        if limit == "max" or not limit.isdigit() or int(limit) >= 1 << 60:
            return None
        return max(int(limit) - usage, 0)
    return None


def _gpu_memory_bytes():
    """(total, free) bytes of GPU 0 from nvidia-smi, or (None, None)."""
    try:
        out = subprocess.run(
            [
                "nvidia-smi",
                "--query-gpu=memory.total,memory.free",
                "--format=csv,noheader,nounits",
            ],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout.strip()
        total, free = (float(v) * MIB for v in out.splitlines()[0].split(","))
        return total, free
    except Exception:  # noqa: BLE001 - no nvidia-smi: plan without it
        return None, None


def available_memory(args, device):
    """(bytes to plan against, description)."""
    if args.memory_limit_gib is not None:
        return args.memory_limit_gib * GIB, "--memory-limit-gib"
    if device == "gpu":
        total, free = _gpu_memory_bytes()
        if free is not None:
            return 0.9 * free, "90% of free GPU memory"
        return 16 * GIB, "assumed 16 GiB (nvidia-smi unavailable)"
    import psutil

    free = psutil.virtual_memory().available
    cgroup = _cgroup_free_bytes()
    if cgroup is not None:
        free = min(free, cgroup)
    return 0.8 * free, "80% of available RAM"


def machine_info(device, gpu_name=None):
    import psutil
    import tensorflow as tf

    try:
        import tf_keras

        keras_version = tf_keras.__version__
    except Exception:  # noqa: BLE001
        keras_version = None
    vm = psutil.virtual_memory()
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    info = {
        "cpu_model": _cpu_model(),
        "logical_cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "usable_cores": usable,
        "total_ram_gib": round(vm.total / GIB, 2),
        "available_ram_gib": round(vm.available / GIB, 2),
        "tensorflow": tf.__version__,
        "tf_keras": keras_version,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": device,
        "gpu": gpu_name,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    try:
        info["load_average_start"] = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        pass
    if device == "gpu":
        total, _ = _gpu_memory_bytes()
        info["gpu_memory_gib"] = None if total is None else round(total / GIB, 2)
    return info


def _resolve_device(requested):
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if requested == "gpu" and not gpus:
        raise RuntimeError("--device gpu: TensorFlow sees no GPU on this machine")
    device = requested if requested != "auto" else ("gpu" if gpus else "cpu")
    name = None
    if device == "gpu":
        try:
            name = tf.config.experimental.get_device_details(gpus[0]).get("device_name")
        except Exception:  # noqa: BLE001
            name = gpus[0].name
    return device, name


def elastic_unavailable_reason():
    """None when ELASTIC imports and passes a smoke call, else a one-line reason."""
    try:
        import tensorflow as tf
        from tfrs_linear.layers.elastic import LinearDispatcherAttention
    except Exception as e:  # noqa: BLE001 - anything (missing, syntax error) counts
        return f"{type(e).__name__}: {e}".splitlines()[0][:300]
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for causal in (False, True):
                layer = LinearDispatcherAttention(
                    num_heads=2, key_dim=4, num_interests=4, causal=causal
                )
                result = layer(tf.random.normal([2, 8, 8]))
                outputs = result[0] if isinstance(result, (tuple, list)) else result
                if tuple(outputs.shape) != (2, 8, 8):
                    return (
                        f"smoke call (causal={causal}) gave outputs of shape "
                        f"{outputs.shape}"
                    )
    except Exception as e:  # noqa: BLE001
        return f"smoke call failed: {type(e).__name__}: {e}".splitlines()[0][:300]
    return None


# --------------------------------------------------------------------------- worker


def _proc_status_bytes(field):
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _rss_high_water():
    value = _proc_status_bytes("VmHWM")
    if value is not None:
        return value
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def _rss_now():
    value = _proc_status_bytes("VmRSS")
    if value is not None:
        return value
    import psutil

    return psutil.Process().memory_info().rss


def _reset_high_water():
    """Resets VmHWM to the current RSS (Linux >= 4.0); False where that is impossible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _make_attention(cfg, spec):
    import tensorflow as tf

    heads, d_model = spec["heads"], spec["d_model"]
    key_dim = d_model // heads
    if cfg["attention"] == "softmax":
        layer = tf.keras.layers.MultiHeadAttention(num_heads=heads, key_dim=key_dim)
        causal = cfg["causal"]
        return layer, lambda x: layer(x, x, use_causal_mask=causal)
    if cfg["attention"] == "linrec":
        from tfrs_linear.layers.linrec import LinRecAttention

        layer = LinRecAttention(
            num_heads=heads,
            key_dim=key_dim,
            normalization=cfg["normalization"],
            causal=cfg["causal"],
            chunk_size=spec["chunk_size"],
        )
        return layer, lambda x: layer(x, x)
    from tfrs_linear.layers.elastic import LinearDispatcherAttention

    layer = LinearDispatcherAttention(
        num_heads=heads,
        key_dim=key_dim,
        num_interests=cfg["num_interests"],
        causal=cfg["causal"],
        recency_bias=cfg["recency_bias"],
    )

    def call(x):
        result = layer(x)
        return result[0] if isinstance(result, (tuple, list)) else result

    return layer, call


def _make_encoder(cfg, spec):
    from tfrs_linear.layers.transformer import TransformerBlock

    kwargs = dict(num_heads=spec["heads"], attention=cfg["attention"], causal=cfg["causal"])
    if cfg["attention"] == "linrec":
        kwargs.update(normalization=cfg["normalization"], chunk_size=spec["chunk_size"])
    if cfg["attention"] == "elastic":
        kwargs.update(num_interests=cfg["num_interests"], recency_bias=cfg["recency_bias"])
    blocks = [
        TransformerBlock(name=f"block_{i}", **kwargs) for i in range(spec["num_blocks"])
    ]
    # Non-causal ELASTIC hands its interest tokens from block to block (the spec's P').
    hand_off = cfg["attention"] == "elastic" and not cfg["causal"]

    def call(x):
        interests = None
        for block in blocks:
            if hand_off:
                x, interests = block(x, interests=interests, return_interests=True)
            else:
                x = block(x)
        return x

    return blocks, call


def _build_subject(scope, cfg, spec):
    """(forward(*inputs) -> tensor, make_inputs(n) -> tuple, variables)."""
    import tensorflow as tf

    b, d_model, heads = spec["batch_size"], spec["d_model"], spec["heads"]
    d_head = d_model // heads
    if scope in ("layer", "encoder"):
        owner, forward = (_make_attention if scope == "layer" else _make_encoder)(cfg, spec)

        def make_inputs(n):
            return (tf.random.normal([b, n, d_model]),)

        forward(*make_inputs(8))  # builds the weights eagerly
        owners = owner if isinstance(owner, list) else [owner]
        variables = [v for o in owners for v in o.trainable_variables]
        return forward, make_inputs, variables

    def make_inputs(n):
        return tuple(tf.random.normal([b, heads, n, d_head]) for _ in range(3))

    if scope == "op":
        from tfrs_linear.ops.linrec import linrec_attention

        def forward(q, k, v):
            return linrec_attention(
                q,
                k,
                v,
                causal=cfg["causal"],
                normalization=cfg["normalization"],
                chunk_size=spec["chunk_size"],
            )

    elif scope == "matmuls":

        def forward(q, k, v):
            state = tf.einsum("bhsd,bhse->bhde", k, v)
            return tf.einsum("bhtd,bhde->bhte", q, state)

    else:
        raise ValueError(f"unknown scope {scope!r}")
    return forward, make_inputs, []


def _step_function(forward, variables, pas, mode):
    import tensorflow as tf

    if pas == "fwd":

        def step(*inputs):
            return tf.reduce_sum(forward(*inputs))

    else:

        def step(*inputs):
            with tf.GradientTape() as tape:
                for x in inputs:
                    tape.watch(x)
                y = forward(*inputs)
                loss = tf.reduce_sum(tf.square(y))
            grads = tape.gradient(loss, list(inputs) + list(variables))
            return tf.add_n([tf.reduce_sum(g) for g in grads if g is not None])

    return tf.function(step, jit_compile=(mode == "xla"))


def _call(fn, inputs):
    t0 = time.perf_counter()
    fn(*inputs).numpy()  # the scalar's .numpy() also waits for a GPU
    return time.perf_counter() - t0


def _peak_matmul(size, modes, repeats):
    import tensorflow as tf

    a = tf.random.normal([size, size])
    b = tf.random.normal([size, size])
    out = {"size": size, "flops": 2.0 * size**3, "modes": {}}
    for mode in modes:
        fn = tf.function(
            lambda x, y: tf.reduce_sum(tf.matmul(x, y)), jit_compile=(mode == "xla")
        )
        _call(fn, (a, b))
        _call(fn, (a, b))
        samples = [_call(fn, (a, b)) for _ in range(max(3, repeats))]
        stats = summarize(samples)
        stats["samples_s"] = samples
        stats["flops_per_s"] = out["flops"] / stats["median_s"]
        out["modes"][mode] = stats
    out["flops_per_s"] = max(m["flops_per_s"] for m in out["modes"].values())
    return out


def _worker_main(spec_path, result_path):
    with open(spec_path) as f:
        spec = json.load(f)
    import tfrs_linear  # noqa: F401 - Keras 2 behind tf.keras
    import tensorflow as tf

    gpu = spec["device"] == "gpu"
    if gpu:
        for device in tf.config.list_physical_devices("GPU"):
            tf.config.experimental.set_memory_growth(device, True)
    tf.random.set_seed(spec["seed"])
    cfg = spec["cfg"]
    n = spec["n"]
    result = {"config": spec["config"], "n": n, "pid": os.getpid(), "timings": [], "memory": []}

    def save():
        tmp = result_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(result, f)
        os.replace(tmp, result_path)

    def gpu_memory(fn, inputs):
        tf.config.experimental.reset_memory_stats("GPU:0")
        before = tf.config.experimental.get_memory_info("GPU:0")["current"]
        seconds = _call(fn, inputs)
        peak = tf.config.experimental.get_memory_info("GPU:0")["peak"]
        return seconds, peak - before, before, peak

    subjects = {}
    can_reset = None if gpu else _reset_high_water()
    save()
    for index, (scope, pas, mode) in enumerate(spec["measurements"]):
        rec = {"scope": scope, "pass": pas, "mode": mode, "status": "failed"}
        result["timings"].append(rec)
        try:
            if scope not in subjects:
                subjects[scope] = _build_subject(scope, cfg, spec)
            forward, make_inputs, variables = subjects[scope]
            fn = _step_function(forward, variables, pas, mode)
            mem = None
            if index == 0:
                # The point's memory: baseline at a tiny N, then the real N, in this
                # fresh process (the high-water mark only grows).
                tiny = make_inputs(min(spec["baseline_length"], n))
                _call(fn, tiny)
                _call(fn, tiny)
                del tiny
                if gpu:
                    inputs = make_inputs(n)
                    first, delta, base, peak = gpu_memory(fn, inputs)
                    method = "gpu-memory-stats"
                else:
                    base = _rss_high_water()
                    inputs = make_inputs(n)
                    first = _call(fn, inputs)
                    peak = _rss_high_water()
                    delta = peak - base
                    method = "fresh-subprocess-rss-hwm"
                mem = {
                    "method": method,
                    "bytes": delta,
                    "baseline_bytes": base,
                    "peak_bytes": peak,
                    "baseline_length": min(spec["baseline_length"], n),
                }
            else:
                inputs = make_inputs(n)
                first = _call(fn, inputs)
            rec["first_call_s"] = first
            # A first call slower than the whole budget already warmed everything up.
            n_warm = 0 if first > spec["measure_seconds"] else spec["warmup"]
            warm = [_call(fn, inputs) for _ in range(n_warm)]
            rec["warmup_s"] = warm
            if index > 0 and (gpu or can_reset):
                # Per-step memory of a warm call.
                if gpu:
                    seconds, delta, base, peak = gpu_memory(fn, inputs)
                    method = "gpu-memory-stats"
                else:
                    _reset_high_water()
                    base = _rss_now()
                    seconds = _call(fn, inputs)
                    peak = _rss_high_water()
                    delta = peak - base
                    method = "step-rss-hwm"
                warm.append(seconds)
                mem = {"method": method, "bytes": delta, "baseline_bytes": base, "peak_bytes": peak}
            estimate = min(warm) if warm else first
            repeats = spec["repeats"]
            if estimate > 0:
                repeats = min(
                    repeats, max(spec["min_repeats"], int(spec["measure_seconds"] / estimate))
                )
            samples = [_call(fn, inputs) for _ in range(repeats)]
            rec.update(summarize(samples))
            rec["samples_s"] = samples
            rec["status"] = "ok"
            if mem is not None:
                mem.update(scope=scope, **{"pass": pas}, mode=mode, status="ok")
                result["memory"].append(mem)
            del inputs, fn
        except Exception as e:  # noqa: BLE001 - report and go on with the next
            rec["reason"] = f"{type(e).__name__}: {e}".splitlines()[0][:400]
        save()
    if spec.get("peak_matmul_size"):
        try:
            result["peak_matmul"] = _peak_matmul(
                spec["peak_matmul_size"], spec["modes"], spec["min_repeats"]
            )
        except Exception as e:  # noqa: BLE001
            result["peak_matmul"] = {"error": f"{type(e).__name__}: {e}"[:400]}
    save()
    return 0


def _run_worker(spec, args, device):
    """Runs one point in a fresh subprocess; returns (result dict or None, error)."""
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["TF_USE_LEGACY_KERAS"] = "1"
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = "-1"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    with tempfile.TemporaryDirectory(prefix="tfrs-linear-bench-") as tmp:
        spec_path = os.path.join(tmp, "spec.json")
        result_path = os.path.join(tmp, "result.json")
        with open(spec_path, "w") as f:
            json.dump(spec, f)
        cmd = [sys.executable, "-m", "tfrs_linear.bench", "--_worker", spec_path, result_path]
        error = None
        try:
            proc = subprocess.run(
                cmd,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                timeout=args.point_timeout,
            )
            if proc.returncode != 0:
                tail = " | ".join(
                    line for line in proc.stderr.strip().splitlines()[-3:] if line.strip()
                )
                if proc.returncode < 0:
                    error = f"worker killed by signal {-proc.returncode}"
                else:
                    error = f"worker exited with {proc.returncode}"
                error += f": {tail[-300:]}" if tail else ""
        except subprocess.TimeoutExpired:
            error = f"worker timed out after {args.point_timeout:g} s"
        result = None
        if os.path.exists(result_path):
            try:
                with open(result_path) as f:
                    result = json.load(f)
            except (OSError, ValueError):
                result = None
        return result, error


# ---------------------------------------------------------------------------- driver


def _base_record(name, n):
    cfg = CONFIGS[name]
    return {"config": name, **cfg, "n": n}


def run_bench(args):
    wall0 = time.perf_counter()
    try:
        _resolve_options(args)
        device, gpu_name = _resolve_device(args.device)
    except (ValueError, RuntimeError) as e:
        print(f"bench: {e}", file=sys.stderr)
        return 2
    if args.peak_matmul_size is None:
        args.peak_matmul_size = 8192 if device == "gpu" else 2048
    os.makedirs(args.out, exist_ok=True)
    machine = machine_info(device, gpu_name)
    plan = build_plan(args)
    elastic_reason = None
    if any(CONFIGS[n]["attention"] == "elastic" for n in args.attentions):
        elastic_reason = elastic_unavailable_reason()
        if elastic_reason:
            print(f"bench: ELASTIC unavailable: {elastic_reason}", flush=True)

    timings, memory, points = [], [], []
    history = {}
    peak = None

    def write_report(final):
        """bench.json and bench.md (rewritten after every point), bench.png at the end."""
        try:
            machine["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
        except OSError:
            pass
        report = {
            "schema": SCHEMA,
            "machine": machine,
            "settings": {
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
            },
            "elastic_unavailable": elastic_reason,
            "timings": timings,
            "memory": memory,
            "points": points,
            "peak_matmul": peak,
        }
        report["exponents"] = compute_exponents(timings, memory)
        report["efficiency"] = compute_efficiency(timings, peak, args)
        report["targets"] = compute_targets(report)
        report["wall_time_s"] = time.perf_counter() - wall0
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

    total = sum(1 for _ in args.lengths for name in args.attentions if plan[name])
    done = 0
    for n in args.lengths:
        for name in args.attentions:
            cfg = CONFIGS[name]
            items = plan[name]
            if not items:
                continue
            done += 1
            base = _base_record(name, n)
            if cfg["attention"] == "elastic" and elastic_reason:
                reason = f"unavailable: {elastic_reason}"
                for scope, pas, mode in items:
                    timings.append(
                        dict(base, scope=scope, **{"pass": pas}, mode=mode,
                             status="unavailable", reason=reason)
                    )
                scope, pas, mode = items[0]
                memory.append(
                    dict(base, scope=scope, **{"pass": pas}, mode=mode,
                         status="unavailable", reason=reason)
                )
                continue
            limit, limit_source = available_memory(args, device)
            to_run = []
            for index, (scope, pas, mode) in enumerate(items):
                key = (scope, pas, mode)
                predicted = predict_softmax_bytes(cfg, scope, pas, n, args)
                reason = None
                if predicted is not None and predicted > limit:
                    reason = (
                        f"skipped: predicted {_fmt_bytes(predicted)} > available "
                        f"{_fmt_bytes(limit)} ({limit_source})"
                    )
                else:
                    seconds = predict_step_seconds(history, name, cfg, key, n)
                    if seconds is not None and seconds > args.max_step_seconds:
                        reason = (
                            f"skipped: predicted {seconds:.1f} s per step > "
                            f"--max-step-seconds {args.max_step_seconds:g}"
                        )
                rec = dict(base, scope=scope, **{"pass": pas}, mode=mode)
                if predicted is not None:
                    rec["predicted_bytes"] = predicted
                if reason:
                    timings.append(dict(rec, status="skipped", reason=reason))
                    if index == 0:
                        memory.append(dict(rec, status="skipped", reason=reason))
                else:
                    to_run.append(key)
            if not to_run:
                print(f"[{done}/{total}] {name} N={n}: skipped", flush=True)
                continue
            spec = {
                "config": name,
                "cfg": cfg,
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
                "peak_matmul_size": args.peak_matmul_size if peak is None else None,
            }
            t0 = time.perf_counter()
            result, error = _run_worker(spec, args, device)
            seconds = time.perf_counter() - t0
            points.append({"config": name, "n": n, "wall_s": seconds, "error": error})
            got = {}
            for rec in (result or {}).get("timings", []):
                got[(rec["scope"], rec["pass"], rec["mode"])] = rec
            for mem in (result or {}).get("memory", []):
                memory.append(dict(base, **mem))
            if result and result.get("peak_matmul"):
                peak = result["peak_matmul"]
            summary = []
            for key in to_run:
                rec = dict(base, scope=key[0], **{"pass": key[1]}, mode=key[2])
                predicted = predict_softmax_bytes(cfg, key[0], key[1], n, args)
                if predicted is not None:
                    rec["predicted_bytes"] = predicted
                worker_rec = got.get(key)
                if worker_rec is None or (worker_rec.get("status") != "ok" and error):
                    rec.update(status="failed", reason=error or "not measured")
                else:
                    rec.update(worker_rec)
                    if rec.get("status") == "failed" and not rec.get("reason"):
                        rec["reason"] = error or "failed"
                timings.append(rec)
                if rec.get("status") == "ok":
                    history.setdefault((name,) + key, []).append((n, rec["median_s"]))
                    summary.append(f"{'/'.join(key)} {_fmt_time(rec['median_s'])}")
                else:
                    summary.append(f"{'/'.join(key)} {rec.get('status')}")
            if error and not any(m["config"] == name and m["n"] == n for m in memory):
                scope, pas, mode = to_run[0]
                memory.append(
                    dict(base, scope=scope, **{"pass": pas}, mode=mode,
                         status="failed", reason=error)
                )
            print(
                f"[{done}/{total}] {name} N={n} ({seconds:.1f} s): " + ", ".join(summary),
                flush=True,
            )
            if error:
                print(f"    {error}", flush=True)
            write_report(final=False)

    report = write_report(final=True)
    wall = report["wall_time_s"]
    print(f"bench: wrote {args.out}/bench.json, bench.md, bench.png in {wall:.0f} s")
    for t in report["targets"]:
        verdict = {True: "met", False: "MISSED", None: "n/a"}[t["met"]]
        print(f"  target [{verdict}] {t['description']}: {t['detail']}")
    return 0


# ----------------------------------------------------------------------- analysis


def _ok(timings, **match):
    return [
        r
        for r in timings
        if r.get("status") == "ok" and all(r.get(k) == v for k, v in match.items())
    ]


def compute_exponents(timings, memory):
    out = []
    keys = []
    for r in timings:
        key = (r["config"], r["scope"], r["pass"], r["mode"])
        if key not in keys:
            keys.append(key)
    for config, scope, pas, mode in keys:
        rows = sorted(
            _ok(timings, config=config, scope=scope, mode=mode, **{"pass": pas}),
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
    """LinRec op vs its two matmuls (same shapes, same run) and vs a dense matmul."""
    out = []
    d_head = args.d_model // args.heads
    peak_flops = (peak or {}).get("flops_per_s")
    for op in _ok(timings, scope="op"):
        mm = _ok(
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


def _best(timings, config, n, scope="layer", pas="fwdbwd"):
    rows = _ok(timings, config=config, n=n, scope=scope, **{"pass": pas})
    if not rows:
        return None
    return min(rows, key=lambda r: r["median_s"])


def _primary_memory(memory, config, n):
    for m in memory:
        if m["config"] == config and m["n"] == n and m.get("method") in (
            "fresh-subprocess-rss-hwm",
            "gpu-memory-stats",
        ) and m.get("status") == "ok" and m.get("scope") == "layer" and m.get("pass") == "fwdbwd":
            return m
    return None


def compute_targets(report):
    timings, memory = report["timings"], report["memory"]
    targets = []

    def speed_target(tid, config, threshold, label):
        s = _best(timings, "softmax", TARGET_N)
        c = _best(timings, config, TARGET_N)
        desc = f"{label} >= {threshold:g}x faster than softmax at N={TARGET_N} (layer, fwd+bwd, best mode each)"
        if not s or not c:
            missing = "softmax" if not s else config
            return dict(id=tid, description=desc, met=None, value=None, threshold=threshold,
                        detail=f"n/a: {missing} at N={TARGET_N} not measured")
        ratio = s["median_s"] / c["median_s"]
        per_mode = []
        for mode in MODES:
            sm = _ok(timings, config="softmax", n=TARGET_N, scope="layer", mode=mode, **{"pass": "fwdbwd"})
            cm = _ok(timings, config=config, n=TARGET_N, scope="layer", mode=mode, **{"pass": "fwdbwd"})
            if sm and cm:
                per_mode.append(f"{mode} {sm[0]['median_s'] / cm[0]['median_s']:.1f}x")
        detail = (
            f"{ratio:.1f}x (softmax {_fmt_time(s['median_s'])} {s['mode']}, {config} "
            f"{_fmt_time(c['median_s'])} {c['mode']}"
            + (f"; same mode: {', '.join(per_mode)}" if per_mode else "") + ")"
        )
        return dict(id=tid, description=desc, met=ratio >= threshold, value=ratio,
                    threshold=threshold, detail=detail)

    targets.append(speed_target("linrec_speed", "linrec-paper", 20.0, "LinRec (paper)"))

    desc = f"LinRec (paper) >= 10x less peak memory than softmax at N={TARGET_N} (layer, fwd+bwd)"
    sm, lm = _primary_memory(memory, "softmax", TARGET_N), _primary_memory(memory, "linrec-paper", TARGET_N)
    if sm and lm and lm["bytes"] > 0:
        ratio = sm["bytes"] / lm["bytes"]
        targets.append(dict(id="linrec_memory", description=desc, met=ratio >= 10.0, value=ratio,
                            threshold=10.0, detail=f"{ratio:.1f}x (softmax {_fmt_bytes(sm['bytes'])}, "
                            f"LinRec {_fmt_bytes(lm['bytes'])}; {sm['method']})"))
    else:
        targets.append(dict(id="linrec_memory", description=desc, met=None, value=None,
                            threshold=10.0, detail="n/a: memory at N=4096 not measured for both"))

    elastic_speed = speed_target("elastic_speed", "elastic-k32", 10.0, "ELASTIC (k=32)")
    if elastic_speed["met"] is None and report.get("elastic_unavailable"):
        elastic_speed["detail"] = f"n/a: ELASTIC unavailable: {report['elastic_unavailable']}"
    targets.append(elastic_speed)

    desc = "LinRec (paper) op within 1.5x of its two matmuls (fwd+bwd, its best mode, largest N)"
    rows = [r for r in report["efficiency"] if r["config"] == "linrec-paper"
            and r["pass"] == "fwdbwd" and r["best_mode"] and r["ratio"] is not None]
    if rows:
        row = max(rows, key=lambda r: r["n"])
        others = ", ".join(
            f"N={r['n']} {r['ratio']:.2f}x ({r['mode']})" for r in sorted(rows, key=lambda r: r["n"])
        )
        targets.append(dict(id="linrec_efficiency", description=desc, met=row["ratio"] <= 1.5,
                            value=row["ratio"], threshold=1.5,
                            detail=f"{row['ratio']:.2f}x at N={row['n']} in {row['mode']} "
                            f"(op {_fmt_time(row['op_s'])}, matmuls {_fmt_time(row['matmuls_s'])}); all: {others}"))
    else:
        targets.append(dict(id="linrec_efficiency", description=desc, met=None, value=None,
                            threshold=1.5, detail="n/a: op and matmuls not measured"))

    for tid, config, label in (("linrec_linear", "linrec-paper", "LinRec (paper)"),
                               ("elastic_linear", "elastic-k32", "ELASTIC (k=32)")):
        desc = f"{label} time from N={TARGET_N} to {TARGET_LONG_N} at most 4.5x (layer, fwd+bwd, its best mode at N={TARGET_LONG_N})"
        long = _best(timings, config, TARGET_LONG_N)
        short = None
        if long:
            rows = _ok(timings, config=config, n=TARGET_N, scope="layer", mode=long["mode"], **{"pass": "fwdbwd"})
            short = rows[0] if rows else None
        if long and short:
            ratio = long["median_s"] / short["median_s"]
            targets.append(dict(id=tid, description=desc, met=ratio <= 4.5, value=ratio, threshold=4.5,
                                detail=f"{ratio:.2f}x in {long['mode']} ({_fmt_time(short['median_s'])} -> "
                                f"{_fmt_time(long['median_s'])})"))
        else:
            detail = f"n/a: {config} at N={TARGET_N} and {TARGET_LONG_N} not both measured"
            if config.startswith("elastic") and report.get("elastic_unavailable"):
                detail = f"n/a: ELASTIC unavailable: {report['elastic_unavailable']}"
            targets.append(dict(id=tid, description=desc, met=None, value=None, threshold=4.5,
                                detail=detail))
    return targets


# ------------------------------------------------------------------------- output


def _fmt_time(seconds):
    if seconds is None:
        return "–"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.3g} µs"
    if seconds < 1.0:
        return f"{seconds * 1e3:.3g} ms"
    return f"{seconds:.3g} s"


def _fmt_bytes(n):
    if n is None:
        return "–"
    if abs(n) >= GIB:
        return f"{n / GIB:.2f} GiB"
    if abs(n) >= MIB:
        return f"{n / MIB:.1f} MiB"
    return f"{n / 1024:.0f} KiB"


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
        if _ok(timings, **match):
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
            cells.append(f"{_fmt_time(rec['median_s'])} (IQR {_fmt_time(rec['iqr_s'])})")
            ref = _reference_config(config, timings, n, scope, pas, mode)
            ref_rec = _ok(timings, config=ref, n=n, scope=scope, mode=mode, **{"pass": pas})
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
        and (m.get("status") != "ok" or m.get("method") in ("fresh-subprocess-rss-hwm", "gpu-memory-stats"))
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
                cell = _fmt_bytes(rec["bytes"])
                ref = "softmax-causal" if CONFIGS[config]["causal"] and _primary_memory(memory, "softmax-causal", n) else "softmax"
                ref_rec = _primary_memory(memory, ref, n)
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
            cells.append(_fmt_bytes(rec["bytes"]) if rec else "")
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
    out.append("\n## Targets\n\n")
    rows = []
    for t in report["targets"]:
        verdict = {True: "met", False: "**missed**", None: "n/a"}[t["met"]]
        rows.append([t["description"], verdict, t["detail"]])
    out.append(_table(["target", "verdict", "measured"], rows) + "\n")
    out.append("## Time\n\n")
    for scope in SCOPES[:2]:
        for pas in ("fwdbwd", "fwd"):
            out.append(_time_tables(report, scope, pas))
    out.append("## Memory\n\n")
    out.append(_memory_table(report))
    out.append(_step_memory_table(report))

    out.append("## Fitted exponents in N\n\n")
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

    out.append("## Efficiency limit of LinRec\n\n")
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
            _fmt_time(r["op_s"]), _fmt_time(r["matmuls_s"]),
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
        out.append("## Skipped, failed and unavailable points\n\n" + "\n".join(notes) + "\n")
    return "".join(out)


def plot(report, path):
    import matplotlib

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
            best = _best(timings, config, n)
            if best:
                pts.append((n, best["median_s"]))
        if pts:
            ax_t.plot([p[0] for p in pts], [p[1] * 1e3 for p in pts], **style)
            drawn_t = True
        mpts = []
        for n in report["settings"]["lengths"]:
            rec = _primary_memory(memory, config, n)
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


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "--_worker":
        if len(sys.argv) != 4:
            print("usage: python -m tfrs_linear.bench --_worker SPEC RESULT", file=sys.stderr)
            sys.exit(2)
        sys.exit(_worker_main(sys.argv[2], sys.argv[3]))
    from tfrs_linear.cli import main

    sys.exit(main(["bench"] + sys.argv[1:]))
