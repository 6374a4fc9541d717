"""``tfrs-linear check-serving``: its flags; TensorFlow is imported by :func:`run` only."""

import sys

HELP = "verify an export the way TF Serving loads it"


def add_arguments(parser):
    """The flags of ``tfrs-linear check-serving``."""
    parser.add_argument("path", metavar="saved_models/NAME/VERSION",
                        help="an exported version folder")
    parser.add_argument("--model", default=None, metavar="DIR",
                        help="model dir to compare with (default: the one recorded at export)")
    parser.add_argument("--no-compare", dest="compare", action="store_false",
                        help="skip the comparison with the Python model")
    parser.add_argument("--tolerance", type=float, default=1e-4,
                        help="max absolute difference of scores/embeddings, >= 0 (default 1e-4)")


def run(args):
    """The report on stdout (exit 0) or, when a check failed, on stderr (exit 1)."""
    # Deferred: the CLI's --help must not load TensorFlow.
    from tfrs_linear import serving

    ok, lines = serving.check_serving(args.path, model_dir=args.model, compare=args.compare,
                                      tolerance=args.tolerance)
    stream = sys.stdout if ok else sys.stderr
    for line in lines:
        print(line, file=stream)
    return 0 if ok else 1
