"""The ``tfrs-linear`` command line.

Each subcommand lives in the module of its concept; that module exposes
``add_<name>_arguments(parser)`` and ``run_<name>(args) -> int`` (``-`` in a command's
name becomes ``_``). Only the chosen subcommand's module is imported.
"""

import argparse
import importlib
import os
import sys

COMMANDS = {
    "train": ("tfrs_linear.training", "train an XLA-compiled TFRS retrieval model"),
    "evaluate": ("tfrs_linear.training", "evaluate a trained model by protocol.md"),
    "export": ("tfrs_linear.serving", "export a versioned SavedModel for TF Serving"),
    "check-serving": (
        "tfrs_linear.serving",
        "verify an export the way TF Serving loads it",
    ),
    "bench": ("tfrs_linear.bench", "time and memory of the attentions vs N"),
}


def _command_functions(name):
    module = importlib.import_module(COMMANDS[name][0])
    stem = name.replace("-", "_")
    return getattr(module, f"add_{stem}_arguments"), getattr(module, f"run_{stem}")


def build_parser(only=None):
    parser = argparse.ArgumentParser(
        prog="tfrs-linear",
        description="Linear-cost attention (LinRec, ELASTIC) for TensorFlow Recommenders.",
    )
    from tfrs_linear import __version__

    parser.add_argument("--version", action="version", version=__version__)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, (_, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if only is None or name == only:
            add_arguments, _ = _command_functions(name)
            add_arguments(p)
    return parser


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    only = next((a for a in argv if not a.startswith("-")), None)
    if only not in COMMANDS:
        only = "__none__"
    parser = build_parser(only=only)
    args = parser.parse_args(argv)
    _, run = _command_functions(args.command)
    try:
        return int(run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError) as e:
        # Bad input (a file and line, an id, a shape, a configuration that differs from
        # the run in --output, a missing file): the message says what; a traceback would
        # only bury it. TFRS_LINEAR_TRACEBACK=1 shows it anyway.
        if os.environ.get("TFRS_LINEAR_TRACEBACK"):
            raise
        print(f"tfrs-linear {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
