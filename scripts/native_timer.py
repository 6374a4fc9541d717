"""Times SavedModel signatures from C, through TensorFlow's C API (no Python per call).

The Python side of ``scripts/session_run_timer.c``: :func:`compile_timer` builds the
timer with the system's C compiler against the installed TensorFlow wheel's own headers
(``tensorflow/include``) and libraries (``libtensorflow_cc.so.2``,
``libtensorflow_framework.so.2``); :func:`time_points` writes the feeds and a spec, runs
the timer on the exports and returns every call's wall time. The timer loads each export
on the ``serve`` tag with ``TF_LoadSessionFromSavedModel`` (what TF Serving's
SavedModelBundle calls) and runs each call as one ``TF_SessionRun`` on the signature's
tensor names: what TF Serving runs per request, without the network and the protobuf
conversion, and without the Python binding's per-call work (converting every feed and
fetch between NumPy and tensors, the string tensors element by element).

    from native_timer import compile_timer, time_points
    timer = compile_timer(scratch_dir)
    times = time_points(timer, [export_dir], {"step-b1": (0, feeds, fetches, range(40))},
                        40, scratch_dir)
"""

import os
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np

SOURCE = Path(__file__).with_name("session_run_timer.c")
DTYPES = {np.dtype(np.float32): "f32", np.dtype(np.int32): "i32", np.dtype(np.int64): "i64"}


def compile_timer(out_dir):
    """Compiles ``session_run_timer.c`` into ``out_dir``; returns the binary's path.

    Raises ``RuntimeError`` naming what is missing (no C compiler, no TensorFlow headers,
    a failed compilation with the compiler's message)."""
    import tensorflow as tf

    compiler = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if compiler is None:
        raise RuntimeError("--timer native needs a C compiler (cc or gcc, or $CC) on PATH")
    tf_dir = Path(tf.__file__).parent
    include = tf_dir / "include"
    if not (include / "tensorflow" / "c" / "c_api.h").exists():
        raise RuntimeError(f"--timer native: the TensorFlow wheel has no C headers under {include}")
    binary = Path(out_dir) / "session_run_timer"
    cmd = [compiler, "-O2", "-std=c11", "-D_POSIX_C_SOURCE=200809L", f"-I{include}",
           str(SOURCE), "-o", str(binary), f"-L{tf_dir}", "-l:libtensorflow_cc.so.2",
           "-l:libtensorflow_framework.so.2", f"-Wl,-rpath,{tf_dir}"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"--timer native: compiling {SOURCE.name} failed:\n{done.stderr}")
    return binary


def compile_or_exit(parser, scratch):
    """:func:`compile_timer` for a script's ``--timer native``, called before anything
    is exported: ``parser.error`` (one usage line) naming what is missing otherwise."""
    try:
        return compile_timer(scratch)
    except RuntimeError as e:
        parser.error(str(e))


def _write_feed(handle, value):
    """Appends one feed to the open binary file; returns ``(dtype code, offset)``."""
    offset = handle.tell()
    value = np.asarray(value)
    if value.dtype.kind in "SOU":
        for item in value.reshape(-1):
            raw = item.encode() if isinstance(item, str) else bytes(item)
            handle.write(struct.pack("<I", len(raw)) + raw)
        return "str", offset
    if value.dtype not in DTYPES:
        raise TypeError(f"no native feed for dtype {value.dtype}")
    handle.write(np.ascontiguousarray(value).astype(value.dtype.newbyteorder("<")).tobytes())
    return DTYPES[value.dtype], offset


def time_points(timer, exports, points, rounds, scratch, inter_op=0, intra_op=0):
    """Runs the timer on the exports; returns ``{label: [seconds per timed call]}``.

    ``exports``: the export folders, loaded once each in one process. ``points``:
    ``{label: (export index, feeds, fetches, rounds_of_point[, burst])}`` with ``feeds``
    a dict of tensor name -> NumPy array, ``fetches`` a list of tensor names,
    ``rounds_of_point`` the 0-based rounds (of ``rounds``) the point runs in and ``burst``
    (default 1) its calls in a row in each of them, each timed. Every point runs twice as
    warm-up first (once if that took over 5 s); then the points of each round run one
    after the other, interleaved across the exports. The times of a point are its calls
    in order (``len(rounds_of_point) * burst`` of them). ``inter_op`` and
    ``intra_op``: the session's thread pools (0: TensorFlow's default; ``inter_op`` -1:
    every op in the calling thread), as TF Serving's ``--tensorflow_inter_op_parallelism``
    / ``--tensorflow_intra_op_parallelism`` set them. One process, so one setting per call
    (TensorFlow's pools are per process).
    """
    scratch = Path(scratch)
    data = scratch / "feeds.bin"
    lines = [f"models {len(exports)} " + " ".join(str(Path(e).resolve()) for e in exports),
             f"rounds {rounds}", f"threads {int(inter_op)} {int(intra_op)}"]
    with open(data, "wb") as handle:
        for label, (model, feeds, fetches, plan, *burst) in points.items():
            if not label or any(c.isspace() for c in label):
                raise ValueError(f"a point label is one word: {label!r}")
            burst = int(burst[0]) if burst else 1
            if burst < 1:
                raise ValueError(f"point {label}: burst must be >= 1, got {burst}")
            plan = sorted(plan)
            lines.append(f"point {label} {model} {len(feeds)} {len(fetches)} {burst} "
                         f"{len(plan)} " + " ".join(str(r) for r in plan))
            for name, value in feeds.items():
                code, offset = _write_feed(handle, value)
                shape = np.shape(value)
                lines.append(f"feed {name} {code} {len(shape)} "
                             + " ".join(str(d) for d in shape) + f" {data} {offset}")
            lines.extend(f"fetch {name}" for name in fetches)
    spec = scratch / "spec.txt"
    spec.write_text("\n".join(lines) + "\n")
    done = subprocess.run([str(timer), str(spec)], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"the native timer failed:\n{done.stderr[-4000:]}")
    times = {}
    for line in done.stdout.splitlines():
        label, *values = line.split()
        times[label] = [float(v) for v in values]
    return times
