"""TensorFlow's start-up noise, kept from the user unless ``--verbose``.

Importing TensorFlow prints C++ and absl lines that say nothing to a user of this command
("All log messages before absl::InitializeLog() is called are written to STDERR",
``cudart_stub`` "Could not find cuda drivers", ``cpu_feature_guard``, oneDNN notices,
"failed call to cuInit" on a machine without a GPU, factory registrations). Two things
keep them out:

* :func:`quiet_environment` sets ``TF_CPP_MIN_LOG_LEVEL=2`` (TensorFlow's own INFO and
  WARNING lines, e.g. XLA's "Compiled cluster using XLA!") when the user has not set it,
  and then the Python logger ``tensorflow`` to ERROR too (its deprecation notices, e.g.
  of the TF1 loader that ``check-serving`` uses on purpose);
* :func:`tensorflow_started` imports TensorFlow and initialises its devices with file
  descriptor 2 redirected to a temporary file, then writes back every line that is not
  known start-up noise (the absl lines are written before TensorFlow's log level applies,
  so no variable hides them).

``--verbose`` does neither. Pure Python until :func:`tensorflow_started` runs.
"""

import contextlib
import logging
import os
import re
import sys
import tempfile

LOG_LEVEL_VAR = "TF_CPP_MIN_LOG_LEVEL"
# The start-up lines dropped: absl's pre-initialisation notice and the C++ log lines of
# the modules that announce the platform, whatever their level.
NOISE = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\) is called"
    r"|[IWE]\d{4} [\d:. ]+\s+\d+ (cudart_stub|cpu_feature_guard|cuda_platform|cuda_executor"
    r"|cuda_dnn|cuda_fft|cuda_blas|cuda_diagnostics|port|computation_placer|gpu_device"
    r"|gpu_helpers|dso_loader)\.cc:\d+\]"
    r"|To enable the following instructions: .* rebuild TensorFlow"
    r"|oneDNN custom operations are on"
    r"|TF-TRT Warning: Could not find TensorRT"
    r"|WARNING: All log messages before absl)"
)


def quiet_environment(environ=None):
    """Sets ``TF_CPP_MIN_LOG_LEVEL=2`` in ``environ`` (default ``os.environ``) unless it is
    set already; returns whether it was set here."""
    environ = os.environ if environ is None else environ
    if LOG_LEVEL_VAR in environ:
        return False
    environ[LOG_LEVEL_VAR] = "2"
    return True


def drop_noise(text):
    """``text`` without the start-up noise lines (:data:`NOISE`)."""
    return "".join(line for line in text.splitlines(keepends=True) if not NOISE.match(line))


@contextlib.contextmanager
def _stderr_captured():
    """File descriptor 2 goes to a temporary file inside the block; the lines that are not
    noise are written back to the real stderr after it, exception or not."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            kept = drop_noise(capture.read().decode("utf-8", "replace"))
            if kept:
                sys.stderr.write(kept)
                sys.stderr.flush()


@contextlib.contextmanager
def tensorflow_started(verbose=False):
    """Imports TensorFlow and initialises its devices, quietly unless ``verbose``; inside
    the block, the ``tensorflow`` Python logger shows errors only (restored after it, so
    that a caller running several commands in one process gets its logger back)."""
    if verbose:
        import tensorflow as tf

        tf.config.list_physical_devices()
        yield
        return
    ours = quiet_environment() or os.environ.get(LOG_LEVEL_VAR) == "2"
    with _stderr_captured():
        import tensorflow as tf

        tf.config.list_physical_devices()  # where cuInit and the device probes print
    logger = tf.get_logger()
    level = logger.level
    if ours:  # the user's own TF_CPP_MIN_LOG_LEVEL other than 2 leaves Python's logs alone
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


__all__ = ["quiet_environment", "drop_noise", "tensorflow_started", "NOISE", "LOG_LEVEL_VAR"]
