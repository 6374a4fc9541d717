"""The ``tfrs-linear`` command line.

One module per subcommand (``tfrs_linear.cli.train``, ``evaluate``, ``export``,
``check_serving``, ``bench``), each with ``HELP``, ``add_arguments(parser)`` and
``run(args) -> int`` (and optionally ``check(args)``: checks that need no TensorFlow, run
first). The argument definitions are TensorFlow-free, so ``--help``,
``--version`` and ``SUBCOMMAND --help`` answer without loading TensorFlow; ``run`` imports
the heavy module it needs. Before ``run``, TensorFlow is started quietly
(:mod:`tfrs_linear.cli.quiet`): its C++/absl start-up lines reach the user only with
``--verbose``.

Errors take one path for every subcommand: bad flags (argparse) and bad input found
while running (a ``ValueError``, ``OSError`` or
:class:`~tfrs_linear.serving.ServingError` raised by ``run``) both print
``tfrs-linear SUBCOMMAND: error: MESSAGE`` on stderr and exit with status 2. Set
``TFRS_LINEAR_TRACEBACK=1`` to get the traceback of a run-time error instead.
"""

import argparse
import importlib
import os
import sys

from tfrs_linear import __version__
from tfrs_linear.cli.quiet import tensorflow_started

# Subcommand -> its module under tfrs_linear.cli.
COMMANDS = {
    "train": "train",
    "evaluate": "evaluate",
    "export": "export",
    "check-serving": "check_serving",
    "bench": "bench",
}
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def command_module(name):
    """The module of subcommand ``name``: ``check-serving`` is ``tfrs_linear.cli.check_serving``."""
    return importlib.import_module(f"tfrs_linear.cli.{COMMANDS[name]}")


def is_user_error(error):
    """Whether ``error`` is bad input (its message says what and where: a file and line, an
    id, a shape, a configuration that differs from the run in --output, a missing file); a
    traceback would only bury it. ``ServingError`` counts once serving has been loaded (it
    cannot be raised before), so this module never imports TensorFlow itself."""
    if isinstance(error, (ValueError, OSError)):
        return True
    wire = sys.modules.get("tfrs_linear.serving.wire")
    return wire is not None and isinstance(error, wire.ServingError)


def _add_verbose(parser, default):
    parser.add_argument("--verbose", action="store_true", default=default,
                        help="show TensorFlow's C++/absl start-up lines and INFO logs")


def build_parser():
    """The ``tfrs-linear`` parser with every subcommand's flags (no TensorFlow imported)."""
    parser = argparse.ArgumentParser(
        prog="tfrs-linear",
        description="Linear-cost attention (LinRec, ELASTIC) for TensorFlow Recommenders.",
    )
    parser.add_argument("--version", action="version", version=__version__)
    _add_verbose(parser, default=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        module = command_module(name)
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        _add_verbose(p, default=argparse.SUPPRESS)  # after the command too; keeps the top's
    return parser


def error_message(command, error):
    """The one line a failed subcommand prints: ``tfrs-linear COMMAND: error: ...``, the
    prefix argparse gives a bad flag of the same subcommand."""
    return f"tfrs-linear {command}: error: {error}"


def main(argv=None):
    """Runs ``tfrs-linear``; returns the exit status (0, 1 for a failed check, 2 for an
    error, 130 when interrupted)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)  # a bad flag exits 2 here, --help 0
    module = command_module(args.command)
    try:
        if hasattr(module, "check"):
            module.check(args)  # bad input is refused before TensorFlow loads
        with tensorflow_started(verbose=args.verbose):
            return int(module.run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:
        if not is_user_error(e) or os.environ.get("TFRS_LINEAR_TRACEBACK"):
            raise
        print(error_message(args.command, e), file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
