"""``python -m tfrs_linear.bench``: the worker entry point, or the ``bench`` subcommand.

``python -m tfrs_linear.bench --_worker SPEC RESULT`` is how the driver starts a worker
subprocess (see :mod:`tfrs_linear.bench.worker`); any other arguments go to
``tfrs-linear bench``.
"""

import sys

from tfrs_linear.cli import main

if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "--_worker":
        if len(sys.argv) != 4:
            print("usage: python -m tfrs_linear.bench --_worker SPEC RESULT", file=sys.stderr)
            sys.exit(2)
        # Deferred: the worker loads TensorFlow; `python -m tfrs_linear.bench --help` must not.
        from tfrs_linear.bench.worker import worker_main

        sys.exit(worker_main(sys.argv[2], sys.argv[3]))
    sys.exit(main(["bench"] + sys.argv[1:]))
