"""Runs the Keras 3 backend test modules, one subprocess per backend, and checks them.

Each subprocess has ``KERAS_BACKEND`` set and ``TF_USE_LEGACY_KERAS`` removed from its
environment (the main pytest process sets it for the tf-keras suite), loads no conftest
above tests/keras3 (``--confcutdir``) and collects ``backend_*.py``. The three backends
(TensorFlow, JAX, PyTorch) run concurrently (they are started when this module's first
test runs); a test fails with the subprocess's output when any of its tests fails, is
skipped or errors.

Environment of the subprocesses, besides the above: ``JAX_ENABLE_X64=1`` on JAX (the
float64 checks need it; without it JAX silently computes float64 layers in float32) and
``XLA_FLAGS=--xla_backend_optimization_level=0`` (XLA's CPU code generation without
LLVM's optimisation passes: the same results, compiled several times faster, which
keeps the suite within its time on two cores); ``OMP_NUM_THREADS=1`` on PyTorch (its
small eager ops gain nothing from a second thread on a machine the rest of the suite
keeps busy).
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.keras3.conftest import BACKEND_RUN_VAR

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
BACKENDS = ("tensorflow", "jax", "torch")
MODULES = sorted(str(p.relative_to(ROOT)) for p in HERE.glob("backend_*.py"))
TIMEOUT_S = 900


def _environment(backend):
    env = {k: v for k, v in os.environ.items()
           if k != "TF_USE_LEGACY_KERAS" and not k.startswith("PYTEST_")}
    env.update({
        "KERAS_BACKEND": backend,
        BACKEND_RUN_VAR: "1",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "XLA_FLAGS": "--xla_backend_optimization_level=0",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
    })
    if backend == "jax":
        env["JAX_ENABLE_X64"] = "1"
    if backend == "torch":
        env["OMP_NUM_THREADS"] = "1"
    return env


def _start(backend):
    command = [sys.executable, "-m", "pytest", "-q", "-rfEs", "-p", "no:cacheprovider",
               f"--confcutdir={HERE}", "-o", "python_files=backend_*.py",
               "-W", "ignore::DeprecationWarning", *MODULES]
    return subprocess.Popen(command, cwd=ROOT, env=_environment(backend), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


# The subprocesses, started once: by tests/conftest.py as soon as collection has selected a
# test of this module (so they run beside the rest of the suite, much of which waits on
# one core), or by the fixture below when this module runs first.
_PROCESSES = {}


def start_backend_runs():
    """Starts the backend subprocesses unless they were started; returns them."""
    if not _PROCESSES:
        _PROCESSES.update({backend: _start(backend) for backend in BACKENDS})
    return _PROCESSES


@pytest.fixture(scope="module")
def runs():
    processes = start_backend_runs()
    yield processes
    for process in processes.values():
        if process.poll() is None:
            process.kill()
            process.wait()


def _summary(output):
    counts = {}
    for line in output.strip().splitlines()[-3:]:
        for count, word in re.findall(r"(\d+) (passed|failed|skipped|errors?|xfailed)", line):
            counts[word.rstrip("s") if word.startswith("error") else word] = int(count)
    return counts


@pytest.mark.parametrize("backend", BACKENDS)
def test_backend_suite_passes(runs, backend):
    process = runs[backend]
    try:
        output, _ = process.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        output = process.communicate()[0]
        pytest.fail(f"KERAS_BACKEND={backend}: no result in {TIMEOUT_S} s\n{output[-20000:]}")
    counts = _summary(output)
    problems = {k: v for k, v in counts.items() if k != "passed" and v}
    assert process.returncode == 0 and counts.get("passed", 0) > 0 and not problems, (
        f"KERAS_BACKEND={backend}: exit status {process.returncode}, {counts}\n"
        + output[-20000:]
    )
