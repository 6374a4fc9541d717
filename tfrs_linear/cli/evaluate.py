"""``tfrs-linear evaluate``: its flags; TensorFlow is imported by :func:`run` only."""

from tfrs_linear.constants import FORMATS, PROTOCOLS

HELP = "evaluate a trained model by docs/protocol.md"


def add_arguments(p):
    """The flags of ``tfrs-linear evaluate``."""
    p.add_argument("--model", required=True, help="a directory written by `tfrs-linear train`")
    p.add_argument("--data", help="interactions file (default: the one the model was trained on)")
    p.add_argument("--format", default="auto", choices=FORMATS,
                   help="the file's format (default: auto, guessed)")
    p.add_argument("--keep-duplicates", action="store_true", default=None,
                   help="keep exact duplicate rows (default: as the run was trained, when its "
                   "data.json records it; otherwise dropped)")
    p.add_argument("--protocol", default="full", choices=PROTOCOLS,
                   help="full ranking, or 100 sampled negatives (default: full)")
    p.add_argument("--exclude-history", action="store_true",
                   help="remove history items from the ranking (docs/protocol.md)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampled protocols (default: 0)")


def run(args):
    # Deferred: the CLI's --help must not load TensorFlow.
    from tfrs_linear.training.commands import evaluate_command

    return evaluate_command(args.model, data=args.data, format=args.format,
                            protocol=args.protocol, exclude_history=args.exclude_history,
                            seed=args.seed, keep_duplicates=args.keep_duplicates)
