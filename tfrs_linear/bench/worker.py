"""One point (a configuration at one N) measured in a fresh subprocess.

Both sides of the protocol live here. The driver calls :func:`run_worker`, which writes
the point's *spec* (a JSON file: the configuration, N, the shapes, the measurements
``(scope, pass, mode)`` and the repetition settings) and runs
``python -m tfrs_linear.bench --_worker SPEC RESULT``; that process runs
:func:`worker_main`, which measures each item and rewrites ``RESULT`` after each one, so
that a crash or a timeout still leaves what was measured.

A fresh process per point makes the memory figures honest on CPU: the resident-set
high-water mark (``VmHWM``) only grows, so the first measurement (the point's memory
subject) runs at a tiny N first (the baseline) and then at N, and memory = peak -
baseline. The other measurements get a per-step figure: the mark reset through
``/proc/self/clear_refs`` before one warm step. On GPU, TensorFlow's memory stats are
used instead.

The environment (``TF_USE_LEGACY_KERAS``, ``CUDA_VISIBLE_DEVICES`` on CPU,
``TF_CPP_MIN_LOG_LEVEL``) is set by :func:`run_worker` for the child process, so the
TensorFlow and layer imports at the top of this module are safe in the worker.
"""

import json
import os
import subprocess
import sys
import tempfile
import time

import tensorflow as tf

from tfrs_linear.bench.analysis import summarize
from tfrs_linear.layers import LinearDispatcherAttention, LinRecAttention, TransformerBlock
from tfrs_linear.ops import linrec_attention

# ------------------------------------------------------------------ RSS probes (CPU)


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
    import resource  # Unix only; reached only where /proc is missing (macOS)

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def _rss_now():
    value = _proc_status_bytes("VmRSS")
    if value is not None:
        return value
    import psutil  # optional dependency (the "bench" extra)

    return psutil.Process().memory_info().rss


def _reset_high_water():
    """Resets VmHWM to the current RSS (Linux >= 4.0); False where that is impossible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


# ------------------------------------------------------------------------ subjects


def _make_attention(cfg, spec):
    heads, d_model = spec["heads"], spec["d_model"]
    key_dim = d_model // heads
    if cfg["attention"] == "softmax":
        layer = tf.keras.layers.MultiHeadAttention(num_heads=heads, key_dim=key_dim)
        causal = cfg["causal"]
        return layer, lambda x: layer(x, x, use_causal_mask=causal)
    if cfg["attention"] == "linrec":
        layer = LinRecAttention(
            num_heads=heads,
            key_dim=key_dim,
            normalization=cfg["normalization"],
            causal=cfg["causal"],
            chunk_size=spec["chunk_size"],
        )
        return layer, lambda x: layer(x, x)
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


def build_subject(scope, cfg, spec):
    """(forward(*inputs) -> tensor, make_inputs(n) -> tuple, variables) of one scope.

    Args:
      scope: ``"layer"`` (the attention layer), ``"encoder"`` (``num_blocks``
        TransformerBlocks), ``"op"`` (LinRec's op on projected ``[B, H, N, d]``
        tensors) or ``"matmuls"`` (the op's two matmuls ``KᵀV`` and ``Q·S`` alone).
      cfg: a configuration of ``CONFIGS``.
      spec: the point's spec (``batch_size``, ``d_model``, ``heads``, ``num_blocks``,
        ``chunk_size``).
    """
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


def step_function(forward, variables, pas, mode):
    """A ``tf.function`` returning a scalar: the forward pass, or forward+backward.

    Args:
      forward, variables: from :func:`build_subject`.
      pas: ``"fwd"`` (sum of the outputs) or ``"fwdbwd"`` (gradients of the squared
        outputs' sum with respect to the inputs and the variables).
      mode: ``"graph"`` or ``"xla"`` (``jit_compile=True``).
    """
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


# ----------------------------------------------------------------- one measurement


def _gpu_memory(fn, inputs):
    """(seconds, peak - before, before, peak) of one call, from TF's GPU memory stats."""
    tf.config.experimental.reset_memory_stats("GPU:0")
    before = tf.config.experimental.get_memory_info("GPU:0")["current"]
    seconds = _call(fn, inputs)
    peak = tf.config.experimental.get_memory_info("GPU:0")["peak"]
    return seconds, peak - before, before, peak


def _point_memory(fn, make_inputs, spec, gpu):
    """(inputs at N, first call's seconds, memory) of the point's memory subject.

    The baseline at a tiny N, then the real N, in this fresh process (the high-water
    mark only grows).
    """
    n = spec["n"]
    tiny = make_inputs(min(spec["baseline_length"], n))
    _call(fn, tiny)
    _call(fn, tiny)
    del tiny
    if gpu:
        inputs = make_inputs(n)
        first, delta, base, peak = _gpu_memory(fn, inputs)
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
    return inputs, first, mem


def _step_memory(fn, inputs, gpu):
    """(seconds, memory) of one warm step: what it adds on top of the process."""
    if gpu:
        seconds, delta, base, peak = _gpu_memory(fn, inputs)
        method = "gpu-memory-stats"
    else:
        _reset_high_water()
        base = _rss_now()
        seconds = _call(fn, inputs)
        peak = _rss_high_water()
        delta = peak - base
        method = "step-rss-hwm"
    return seconds, {"method": method, "bytes": delta, "baseline_bytes": base, "peak_bytes": peak}


def _measure(index, item, spec, subjects, rec, gpu, can_reset):
    """Runs one measurement, filling ``rec``; returns its memory record or None."""
    scope, pas, mode = item
    if scope not in subjects:
        subjects[scope] = build_subject(scope, spec["cfg"], spec)
    forward, make_inputs, variables = subjects[scope]
    fn = step_function(forward, variables, pas, mode)
    mem = None
    if index == 0:
        inputs, first, mem = _point_memory(fn, make_inputs, spec, gpu)
    else:
        inputs = make_inputs(spec["n"])
        first = _call(fn, inputs)
    rec["first_call_s"] = first
    # A first call slower than the whole budget already warmed everything up.
    n_warm = 0 if first > spec["measure_seconds"] else spec["warmup"]
    warm = [_call(fn, inputs) for _ in range(n_warm)]
    rec["warmup_s"] = warm  # the per-step memory call below is appended to it
    if index > 0 and (gpu or can_reset):
        seconds, mem = _step_memory(fn, inputs, gpu)
        warm.append(seconds)
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
    return mem


# ------------------------------------------------------------------ the two sides


def _save_json(data, path):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f)
    os.replace(tmp, path)


def worker_main(spec_path, result_path):
    """The worker process: measures the spec's items, rewriting the result after each.

    Args:
      spec_path: the point's spec (JSON), written by :func:`run_worker`.
      result_path: where the result goes (JSON: ``timings``, ``memory`` and, when asked,
        ``peak_matmul``). A failed measurement is recorded with its reason and the next
        one runs.

    Returns:
      0, the process's exit status.
    """
    with open(spec_path) as f:
        spec = json.load(f)
    gpu = spec["device"] == "gpu"
    if gpu:
        for device in tf.config.list_physical_devices("GPU"):
            tf.config.experimental.set_memory_growth(device, True)
    tf.random.set_seed(spec["seed"])
    result = {
        "config": spec["config"], "n": spec["n"], "pid": os.getpid(), "timings": [], "memory": []
    }
    subjects = {}
    can_reset = None if gpu else _reset_high_water()
    _save_json(result, result_path)
    for index, (scope, pas, mode) in enumerate(spec["measurements"]):
        rec = {"scope": scope, "pass": pas, "mode": mode, "status": "failed"}
        result["timings"].append(rec)
        try:
            mem = _measure(index, (scope, pas, mode), spec, subjects, rec, gpu, can_reset)
            if mem is not None:
                result["memory"].append(mem)
        except Exception as e:  # noqa: BLE001 - report and go on with the next
            rec["reason"] = f"{type(e).__name__}: {e}".splitlines()[0][:400]
        _save_json(result, result_path)
    if spec.get("peak_matmul_size"):
        try:
            result["peak_matmul"] = _peak_matmul(
                spec["peak_matmul_size"], spec["modes"], spec["min_repeats"]
            )
        except Exception as e:  # noqa: BLE001
            result["peak_matmul"] = {"error": f"{type(e).__name__}: {e}"[:400]}
    _save_json(result, result_path)
    return 0


def _worker_error(proc):
    """A one-line error for a worker that exited with a non-zero status."""
    tail = " | ".join(
        line for line in proc.stderr.strip().splitlines()[-3:] if line.strip()
    )
    if proc.returncode < 0:
        error = f"worker killed by signal {-proc.returncode}"
    else:
        error = f"worker exited with {proc.returncode}"
    return error + (f": {tail[-300:]}" if tail else "")


def run_worker(spec, args, device):
    """Runs one point in a fresh subprocess; returns (result dict or None, error).

    Args:
      spec: the point's spec (see the driver's ``worker_spec``).
      args: the options (``point_timeout``: the subprocess's wall-clock limit).
      device: ``"cpu"`` (the child sees no GPU) or ``"gpu"``.

    Returns:
      The worker's result as far as it got (None when it wrote nothing readable), and
      None or a one-line error (exit status, signal, or timeout).
    """
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["TF_USE_LEGACY_KERAS"] = "1"
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = "-1"
    # The folder that holds the tfrs_linear package (this file is tfrs_linear/bench/worker.py).
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
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
                error = _worker_error(proc)
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
