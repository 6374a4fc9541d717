"""The machine the bench runs on: device, CPU and memory probes, ELASTIC's availability.

Everything here runs in the driver process: :func:`resolve_device` picks the CPU or the
GPU, :func:`available_memory` gives the memory that softmax points are planned against,
:func:`machine_info` describes the machine in ``bench.json`` and
:func:`elastic_unavailable_reason` says why ELASTIC's rows cannot be measured, if so.
"""

import datetime as _dt
import os
import platform
import subprocess
import warnings

import tensorflow as tf

from tfrs_linear.bench.units import GIB, MIB
from tfrs_linear.layers import LinearDispatcherAttention


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
    """(bytes to plan against, description).

    Args:
      args: the options; ``memory_limit_gib``, when set, wins.
      device: ``"cpu"`` (80% of the available RAM, within the cgroup's limit) or
        ``"gpu"`` (90% of the free memory of GPU 0).
    """
    if args.memory_limit_gib is not None:
        return args.memory_limit_gib * GIB, "--memory-limit-gib"
    if device == "gpu":
        total, free = _gpu_memory_bytes()
        if free is not None:
            return 0.9 * free, "90% of free GPU memory"
        return 16 * GIB, "assumed 16 GiB (nvidia-smi unavailable)"
    import psutil  # optional dependency (the "bench" extra)

    free = psutil.virtual_memory().available
    cgroup = _cgroup_free_bytes()
    if cgroup is not None:
        free = min(free, cgroup)
    return 0.8 * free, "80% of available RAM"


def machine_info(device, gpu_name=None):
    """The ``machine`` section of ``bench.json``: CPU, RAM, versions, device, date, load.

    Args:
      device: ``"cpu"`` or ``"gpu"``, as :func:`resolve_device` resolved it.
      gpu_name: the GPU's name, if any.
    """
    import psutil  # optional dependency (the "bench" extra)

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


def resolve_device(requested):
    """(``"cpu"`` or ``"gpu"``, the GPU's name or None) for ``--device``.

    Args:
      requested: ``"auto"`` (the GPU when TensorFlow sees one), ``"cpu"`` or ``"gpu"``.

    Raises:
      RuntimeError: ``"gpu"`` requested and TensorFlow sees no GPU.
    """
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
    """None when ELASTIC passes a smoke call (non-causal and causal), else a one-line reason."""
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
