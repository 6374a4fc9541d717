"""Keras 3 LinRec / ELASTIC against `keras.layers.MultiHeadAttention`: TF, JAX, PyTorch.

Times the attention layer, forward+backward (gradients of ``sum(y**2)`` with respect to
the inputs and every weight), for softmax (``MultiHeadAttention``, also with
``use_causal_mask=True``), LinRec (``normalization="paper"``) and ELASTIC
(``LinearDispatcherAttention``, k=16), each non-causal and causal, at each N. Each backend
runs in its own subprocess, started here: ``tensorflow`` (Keras 3, ``tf.function`` without
and with ``jit_compile=True``: modes ``graph``, ``xla``; ``TF_USE_LEGACY_KERAS`` unset),
``jax`` (Keras 3, ``jax.jit`` of ``jax.value_and_grad`` over ``stateless_call``: mode
``jit``), ``torch`` (Keras 3, eager PyTorch, ``torch.autograd.grad``: mode ``eager``;
Keras' own default there) and ``tf-keras`` (the LinRec and ELASTIC layers of
``tfrs_linear.layers``, ``TF_USE_LEGACY_KERAS=1``, the same step function as the Keras 3
TensorFlow process).
Every step returns one scalar (loss plus the sums of the gradients) read back to the host.
Per point: a first (compiling) call, ``--warmup`` calls (none after a first call over
10 s: it already warmed up), ``--repeats`` timed calls, median.
Softmax is skipped where its N x N tensors are predicted not to fit in memory (the host's,
or with ``--device gpu`` the GPU's). Writes ``NAME.json`` (raw times, machine, versions, load
average), ``NAME.md`` (ratios within the run) and ``NAME.png`` (time vs N, log-log, one panel
per backend); NAME is ``--name`` (default ``keras3``).

    .venv/bin/python scripts/bench_keras3.py [--out docs/bench] [--quick]

``--device gpu`` runs the workers on the first GPU instead of hiding it (a worker whose
backend sees no GPU stops with that reason, and the report lists it), e.g. the JAX
backend alone on a machine without TensorFlow::

    python scripts/bench_keras3.py --device gpu --backends jax --name keras3-gpu \
        --lengths 256,1024,4096,16384,65536
"""

import argparse
import functools
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

# The scripts folder is sys.path[0] when this runs as a script (the workers too); added
# only when the file is loaded from elsewhere, as quality_ml100k.py does.
_SCRIPTS = str(Path(__file__).resolve().parent)
if _SCRIPTS not in sys.path:
    sys.path.insert(0, _SCRIPTS)
from bench_keras3_report import (  # noqa: E402
    BACKENDS, MEMORY_FRACTION, MODES, SHAPE, SOFTMAX_NXN_TENSORS, VERSIONS, WARM_FIRST_CALL_S,
    configs_of, write_markdown, write_plot,
)

ROOT = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------- machine info


def _proc_field(path, key):
    """The value after ``key:`` in a /proc file (first match), or None."""
    try:
        with open(path) as f:
            return next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith(key)), None)
    except OSError:
        return None


def _meminfo_bytes(field):
    value = _proc_field("/proc/meminfo", field + ":")
    return None if value is None else int(value.split()[0]) * 1024


def _load():
    return [round(v, 2) for v in os.getloadavg()]


@functools.lru_cache(maxsize=None)
def gpu_info():
    """``nvidia-smi``'s name, memory and driver of the first GPU, or None (asked once)."""
    try:
        line = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
             "--format=csv,noheader"], capture_output=True, text=True, timeout=60,
        ).stdout.splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        return None
    name, memory, driver = (f.strip() for f in line.split(","))
    return {"name": name, "memory": memory, "driver": driver}


def machine_info(device="cpu"):
    """CPU, cores, memory, GPU, Python and package versions (read without importing them)."""
    versions = {}
    for name in VERSIONS:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "cpu_model": _proc_field("/proc/cpuinfo", "model name") or platform.processor(),
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "mem_total_bytes": _meminfo_bytes("MemTotal"),
        "mem_available_bytes": _meminfo_bytes("MemAvailable"),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
        "device": device,
        "gpu": gpu_info() if device == "gpu" else None,
    }


# ------------------------------------------------------------------ worker: subjects


def _gpu_bytes(backend):
    """Memory of the first GPU (JAX: its allocator's limit; else nvidia-smi's), or None."""
    try:
        if backend == "jax":
            import jax

            return jax.devices()[0].memory_stats()["bytes_limit"]
        return int(gpu_info()["memory"].split()[0]) * 2**20  # nvidia-smi's "N MiB"
    except Exception:  # noqa: BLE001 - no figure: measure rather than skip
        return None


def softmax_skip(attention, n, device="cpu", backend=None):
    """None, or why softmax at length ``n`` is predicted not to fit in memory."""
    if attention != "softmax":
        return None
    need = SOFTMAX_NXN_TENSORS * SHAPE["batch"] * SHAPE["heads"] * n * n * 4
    available = _gpu_bytes(backend) if device == "gpu" else _meminfo_bytes("MemAvailable")
    if available is None or need <= MEMORY_FRACTION * available:
        return None
    return (f"does not fit (predicted): ~{need / 2**30:.1f} GiB of N x N tensors, "
            f"{available / 2**30:.1f} GiB available")


def make_layer(attention, causal, mha, linrec, elastic):
    """(layer, call(x) -> y) of one configuration from the given layer classes."""
    heads = SHAPE["heads"]
    key_dim = SHAPE["d_model"] // heads
    if attention == "softmax":
        layer = mha(num_heads=heads, key_dim=key_dim)
        return layer, lambda x: layer(x, x, use_causal_mask=causal)
    if attention == "linrec":
        layer = linrec(num_heads=heads, key_dim=key_dim, causal=causal)
        return layer, lambda x: layer(x, x)
    layer = elastic(num_heads=heads, key_dim=key_dim, causal=causal,
                    num_interests=SHAPE["num_interests"])
    return layer, lambda x: layer(x)[0]  # (outputs, interests)


def layer_classes(backend):
    """(MultiHeadAttention, LinRecAttention, LinearDispatcherAttention) of the backend."""
    if backend == "tf-keras":
        import tensorflow as tf

        from tfrs_linear import layers

        return (tf.keras.layers.MultiHeadAttention, layers.LinRecAttention,
                layers.LinearDispatcherAttention)
    import keras

    from tfrs_linear import keras3

    return (keras.layers.MultiHeadAttention, keras3.LinRecAttention,
            keras3.LinearDispatcherAttention)


def tf_step(call, variables, mode):
    """``tf.function`` of the loss and its gradients (inputs and ``variables``) as a scalar."""
    import tensorflow as tf

    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(tf.square(call(x)))
        grads = tape.gradient(loss, [x] + list(variables))
        missing = [i for i, g in enumerate(grads) if g is None]
        if missing:
            raise ValueError(f"no gradient for variables {missing}")
        return loss + tf.add_n([tf.reduce_sum(g) for g in grads])

    return tf.function(step, jit_compile=(mode == "xla"))


def jax_step(layer, call):
    """``jax.jit`` of ``value_and_grad`` (inputs and weights) over ``stateless_call``."""
    import jax
    import jax.numpy as jnp
    import keras

    class Outer(keras.layers.Layer):  # stateless_call of the outer layer keeps __call__
        def __init__(self):
            super().__init__()
            self.inner = layer

        def call(self, x):
            return call(x)

    outer = Outer()
    outer.built = True
    trainable = [v.value for v in outer.trainable_variables]
    non_trainable = [v.value for v in outer.non_trainable_variables]

    def loss(weights, x):
        y, _ = outer.stateless_call(weights, non_trainable, x)
        return jnp.sum(jnp.square(y))

    value_and_grad = jax.value_and_grad(loss, argnums=(0, 1))

    def step(weights, x):
        value, (g_w, g_x) = value_and_grad(weights, x)
        return value + jnp.sum(g_x) + sum(jnp.sum(g) for g in g_w)

    compiled = jax.jit(step)
    return lambda x: compiled(trainable, x)


def torch_step(layer, call):
    """Eager PyTorch: the loss and ``torch.autograd.grad`` (inputs and weights)."""
    import torch

    weights = [v.value for v in layer.trainable_variables]

    def step(x):
        x = x.detach().requires_grad_(True)
        loss = torch.sum(torch.square(call(x)))
        grads = torch.autograd.grad(loss, [x] + weights)
        return loss + sum(torch.sum(g) for g in grads)

    return step


# ------------------------------------------------------------------ worker: timing


def time_step(step, x, warmup, repeats):
    """First call, warm-up, then ``repeats`` timed calls; each reads the scalar back."""

    def once():
        t0 = time.perf_counter()
        float(step(x))
        return time.perf_counter() - t0

    first = once()
    warm = [once() for _ in range(0 if first > WARM_FIRST_CALL_S else warmup)]
    samples = [once() for _ in range(repeats)]
    return {"status": "ok", "first_call_s": first, "warmup_s": warm, "samples_s": samples,
            "median_s": statistics.median(samples), "min_s": min(samples),
            "max_s": max(samples)}


def _subject(backend, attention, causal, cache):
    """(layer, call) of a configuration, built once per process (eagerly, at N=8)."""
    key = (attention, causal)
    if key not in cache:
        import numpy as np

        layer, call = make_layer(attention, causal, *layer_classes(backend))
        call(np.zeros((SHAPE["batch"], 8, SHAPE["d_model"]), "float32"))
        cache[key] = (layer, call)
    return cache[key]


def measure(backend, mode, attention, causal, n, args, cache):
    """One point's record (times, or why it was skipped or failed)."""
    import numpy as np

    skip = softmax_skip(attention, n, args.device, backend)
    if skip:
        return {"status": "skipped", "reason": skip}
    layer, call = _subject(backend, attention, causal, cache)
    x = np.random.default_rng(n).standard_normal(
        (SHAPE["batch"], n, SHAPE["d_model"])).astype("float32")
    if backend == "jax":
        import jax.numpy as jnp

        return time_step(jax_step(layer, call), jnp.asarray(x), args.warmup, args.repeats)
    if backend == "torch":
        from keras import ops

        return time_step(torch_step(layer, call), ops.convert_to_tensor(x), args.warmup,
                         args.repeats)
    import tensorflow as tf

    variables = layer.trainable_variables
    if backend == "tensorflow":
        variables = [v.value for v in variables]  # the tf.Variable behind each keras one
    step = tf_step(call, variables, mode)
    return time_step(step, tf.constant(x), args.warmup, args.repeats)


def _device_check(backend, device):
    """The device the backend computes on; raises when ``--device gpu`` finds no GPU."""
    if backend == "jax":
        import jax

        platform_name = jax.devices()[0].platform
        kind = getattr(jax.devices()[0], "device_kind", platform_name)
    elif backend == "torch":
        import torch

        gpu = torch.cuda.is_available()
        platform_name, kind = ("gpu", torch.cuda.get_device_name(0)) if gpu else ("cpu", "cpu")
    else:
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        platform_name, kind = ("gpu", gpus[0].name) if gpus else ("cpu", "cpu")
    if device == "gpu" and platform_name != "gpu":
        raise RuntimeError(f"--device gpu: the {backend} backend sees no GPU ({platform_name})")
    return kind


def _worker_env_check(backend, device="cpu"):
    legacy = os.environ.get("TF_USE_LEGACY_KERAS")
    if backend == "tf-keras":
        import tensorflow as tf

        keras2 = tf.keras.__name__
        if legacy != "1" or not keras2.startswith("tf_keras"):
            raise RuntimeError(f"tf-keras worker: TF_USE_LEGACY_KERAS={legacy}, tf.keras={keras2}")
        return {"TF_USE_LEGACY_KERAS": legacy, "tf.keras": keras2,
                "device": _device_check(backend, device)}
    if legacy is not None:
        raise RuntimeError(f"Keras 3 worker started with TF_USE_LEGACY_KERAS={legacy}")
    import keras

    if keras.config.backend() != backend:
        raise RuntimeError(f"Keras backend {keras.config.backend()}, expected {backend}")
    return {"TF_USE_LEGACY_KERAS": None, "keras_backend": keras.config.backend(),
            "device": _device_check(backend, device)}


def worker_main(args):
    """The subprocess of one backend: every point, the result rewritten after each."""
    out = {"backend": args.worker, "pid": os.getpid(), "load_average_start": _load(),
           "env": _worker_env_check(args.worker, args.device), "points": []}
    cache = {}
    for n in args.lengths:
        for name, attention, causal in configs_of(args.worker):
            for mode in MODES[args.worker]:
                rec = {"backend": args.worker, "mode": mode, "config": name, "n": n,
                       "load_average_before": _load()}
                try:
                    rec.update(measure(args.worker, mode, attention, causal, n, args, cache))
                except Exception as e:  # noqa: BLE001 - record it and go on
                    rec.update(status="failed",
                               reason=f"{type(e).__name__}: {e}".splitlines()[0][:300])
                out["points"].append(rec)
                print(f"[{args.worker}] {name} {mode} N={n}: "
                      f"{rec.get('median_s', rec.get('reason'))}", file=sys.stderr, flush=True)
                out["load_average_end"] = _load()
                Path(args.result).write_text(json.dumps(out))
    return 0


# ------------------------------------------------------------------ driver


def run_backend(backend, args, result_path):
    """Runs one backend's subprocess; returns its result (or a failure record)."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    if args.device == "cpu":
        env.update(CUDA_VISIBLE_DEVICES="-1", JAX_PLATFORMS="cpu")
    else:  # the first GPU; JAX allocates as it goes (no 75% preallocation)
        env.update(CUDA_VISIBLE_DEVICES="0", XLA_PYTHON_CLIENT_PREALLOCATE="false")
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"]
                                     if env.get("PYTHONPATH") else "")
    for name in ("TF_USE_LEGACY_KERAS", "KERAS_BACKEND"):
        env.pop(name, None)
    env.update({"TF_USE_LEGACY_KERAS": "1"} if backend == "tf-keras" else
               {"KERAS_BACKEND": backend})
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_worker", backend,
           "--_result", str(result_path), "--lengths", ",".join(map(str, args.lengths)),
           "--repeats", str(args.repeats), "--warmup", str(args.warmup),
           "--device", args.device, "--batch", str(args.batch)]
    t0 = time.perf_counter()
    error = None
    try:
        # stderr (the progress lines, a traceback) goes to this process's stderr.
        proc = subprocess.run(cmd, env=env, timeout=args.worker_timeout,
                              stdout=subprocess.DEVNULL)
        if proc.returncode != 0:
            error = f"worker exited with {proc.returncode} (its traceback is above)"
    except subprocess.TimeoutExpired:
        error = f"timed out after {args.worker_timeout} s"
    try:
        result = json.loads(Path(result_path).read_text())
    except (OSError, ValueError):
        result = {"backend": backend, "points": []}
    result.update(wall_s=round(time.perf_counter() - t0, 1), error=error)
    return result


# ------------------------------------------------------------------ command line


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="bench_keras3.py", description=__doc__.split("\n")[0])
    p.add_argument("--out", default=str(ROOT / "docs" / "bench"), help="output folder")
    p.add_argument("--lengths", default=None, help="comma-separated N (default 256,1024,4096)")
    p.add_argument("--quick", action="store_true", help="N = 256,1024")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per point (median)")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls after the first")
    p.add_argument("--backends", default=",".join(BACKENDS), help="subset of " + ",".join(BACKENDS))
    p.add_argument("--worker-timeout", type=float, default=3600.0, help="seconds per backend")
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu",
                   help="cpu: hide any GPU (default); gpu: the workers run on the first GPU")
    p.add_argument("--batch", type=int, default=SHAPE["batch"], help="sequences per step")
    p.add_argument("--name", default="keras3", help="stem of the output files")
    p.add_argument("--_worker", dest="worker", choices=BACKENDS, help=argparse.SUPPRESS)
    p.add_argument("--_result", dest="result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.lengths and args.quick:
        p.error("--lengths and --quick exclude each other")
    text = args.lengths or ("256,1024" if args.quick else "256,1024,4096")
    try:
        args.lengths = [int(s) for s in text.split(",")]
    except ValueError:
        p.error(f"--lengths: expected comma-separated integers, got {text!r}")
    if any(n < 1 for n in args.lengths):
        p.error(f"--lengths: every N must be >= 1, got {text!r}")
    if args.repeats < 1 or args.warmup < 0:
        p.error(f"--repeats must be >= 1 and --warmup >= 0, got {args.repeats}, {args.warmup}")
    if args.batch < 1:
        p.error(f"--batch must be >= 1, got {args.batch}")
    if not args.name or not all(c.isalnum() or c in "-_." for c in args.name):
        p.error(f"--name: letters, digits, '-', '_' and '.' only, got {args.name!r}")
    SHAPE["batch"] = args.batch
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        p.error(f"--out: {args.out} exists and is not a folder")
    args.backends = [b for b in args.backends.split(",") if b]
    unknown = sorted(set(args.backends) - set(BACKENDS))
    if unknown or not args.backends:
        p.error(f"--backends: unknown {unknown or 'empty list'}; choose from {list(BACKENDS)}")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        return worker_main(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": machine_info(args.device), "load_average_start": _load(), "shape": SHAPE,
            "lengths": args.lengths, "repeats": args.repeats, "warmup": args.warmup,
            "results": []}
    t0 = time.perf_counter()
    for backend in args.backends:
        partial = out / f".{args.name}-{backend}.json"
        data["results"].append(run_backend(backend, args, partial))
        partial.unlink(missing_ok=True)
    data.update(load_average_end=_load(), wall_s=round(time.perf_counter() - t0, 1))
    stem = out / args.name
    stem.with_suffix(".json").write_text(json.dumps(data, indent=1))
    write_markdown(data, stem.with_suffix(".md"))
    write_plot(data, stem.with_suffix(".png"))
    print(f"wrote {stem}.json, .md, .png in {data['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
