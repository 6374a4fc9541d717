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
* for LinRec, the **efficiency limit**: the LinRec op (``tfrs_linear.ops.linrec_attention``)
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

ELASTIC (``tfrs_linear.layers.LinearDispatcherAttention``) is optional: when it fails a
smoke call, its rows say ``unavailable: <reason>``.

The modules, in the order a run goes through them:

* ``plan``: the configurations (``CONFIGS``), the grid (``build_plan``) and the
  predictions that skip a point;
* ``options``: the flags (``add_bench_arguments``) and their defaults (``resolve_options``);
* ``machine``: the device, the machine's description and its available memory;
* ``driver``: ``run_bench``, point by point, and the report it writes;
* ``worker``: one point in a fresh subprocess (both sides of that protocol);
* ``analysis``: statistics, exponents, efficiency and targets;
* ``report``: ``bench.md`` and ``bench.png``; ``units``: byte units and formatting.

Importing the package is cheap: every name below is loaded from its module on first
access, so ``tfrs_linear.bench.options`` (the flags of ``tfrs-linear bench --help``) and
``plan`` never load TensorFlow.
"""


import importlib as _importlib

# Each module's public names, loaded on first access (``bench.run_bench`` imports driver).
_EXPORTS = {
    "analysis": ("TARGET_LONG_N", "TARGET_N", "best_timing", "compute_efficiency",
                 "compute_exponents", "compute_targets", "fit_exponent", "ok_rows",
                 "primary_memory", "summarize"),
    "driver": ("SCHEMA", "run_bench"),
    "machine": ("available_memory", "elastic_unavailable_reason", "machine_info",
                "resolve_device"),
    "options": ("add_bench_arguments", "resolve_options"),
    "plan": ("CONFIGS", "DEFAULT_LENGTHS", "FAMILIES", "MAIN_CONFIGS", "MODES", "PASSES",
             "QUICK_LENGTHS", "SCOPES", "build_plan", "predict_softmax_bytes",
             "predict_step_seconds"),
    "report": ("PASS_TITLES", "SCOPE_TITLES", "plot", "render_markdown"),
    "units": ("GIB", "MIB", "format_bytes", "format_time"),
}
_HOMES = {name: module for module, names in _EXPORTS.items() for name in names}
_MODULES = ("analysis", "driver", "machine", "options", "plan", "report", "units", "worker")


def __getattr__(name):
    if name in _HOMES:
        return getattr(_importlib.import_module(f"tfrs_linear.bench.{_HOMES[name]}"), name)
    if name in _MODULES:
        return _importlib.import_module(f"tfrs_linear.bench.{name}")
    raise AttributeError(f"module 'tfrs_linear.bench' has no attribute {name!r}")


__all__ = sorted(_HOMES)
