"""The ``tfrs-linear`` command line.

Each subcommand lives in the module of its concept; that module exposes
``add_<name>_arguments(parser)`` and ``run_<name>(args) -> int`` (``-`` in a command's
name becomes ``_``). Only the chosen subcommand's module is imported (``importlib``,
by the name in :data:`COMMANDS`).

Errors take one path for every subcommand: bad flags (argparse) and bad input found
while running (a ``ValueError``, ``OSError`` or
:class:`~tfrs_linear.serving.ServingError` raised by ``run_<name>``) both print
``tfrs-linear SUBCOMMAND: error: MESSAGE`` on stderr and exit with status 2. Set
``TFRS_LINEAR_TRACEBACK=1`` to get the traceback of a run-time error instead.
"""

import argparse
import importlib
import os
import sys

from tfrs_linear import __version__
from tfrs_linear.keras2 import require_keras2

require_keras2()  # every subcommand builds tf-keras layers or models: Keras 2 first.

from tfrs_linear.serving import ServingError  # noqa: E402

COMMANDS = {
    "train": ("tfrs_linear.training.commands", "train an XLA-compiled TFRS retrieval model"),
    "evaluate": ("tfrs_linear.training.commands", "evaluate a trained model by docs/protocol.md"),
    "export": ("tfrs_linear.serving", "export a versioned SavedModel for TF Serving"),
    "check-serving": (
        "tfrs_linear.serving",
        "verify an export the way TF Serving loads it",
    ),
    "bench": ("tfrs_linear.bench", "time and memory of the attentions vs N"),
}
# What a subcommand raises for bad input: the message says what and where (a file and
# line, an id, a shape, a configuration that differs from the run in --output, a missing
# file); a traceback would only bury it.
USER_ERRORS = (ValueError, OSError, ServingError)
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def _command_functions(name):
    module = importlib.import_module(COMMANDS[name][0])
    stem = name.replace("-", "_")
    return getattr(module, f"add_{stem}_arguments"), getattr(module, f"run_{stem}")


def build_parser(only=None):
    """The ``tfrs-linear`` parser; ``only`` names the one subcommand whose flags are
    added (and whose module is imported); ``None`` adds every subcommand's."""
    parser = argparse.ArgumentParser(
        prog="tfrs-linear",
        description="Linear-cost attention (LinRec, ELASTIC) for TensorFlow Recommenders.",
    )
    parser.add_argument("--version", action="version", version=__version__)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, (_, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if only is None or name == only:
            add_arguments, _ = _command_functions(name)
            add_arguments(p)
    return parser


def error_message(command, error):
    """The one line a failed subcommand prints: ``tfrs-linear COMMAND: error: ...``, the
    prefix argparse gives a bad flag of the same subcommand."""
    return f"tfrs-linear {command}: error: {error}"


def main(argv=None):
    """Runs ``tfrs-linear``; returns the exit status (0, 1 for a failed check, 2 for an
    error, 130 when interrupted)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    only = next((a for a in argv if not a.startswith("-")), None)
    if only not in COMMANDS:
        only = "__none__"
    args = build_parser(only=only).parse_args(argv)  # a bad flag exits 2 here
    _, run = _command_functions(args.command)
    try:
        return int(run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except USER_ERRORS as e:
        if os.environ.get("TFRS_LINEAR_TRACEBACK"):
            raise
        print(error_message(args.command, e), file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
