"""``tfrs-linear export``: its flags; TensorFlow is imported by :func:`run` only."""

from pathlib import Path

HELP = "export a versioned SavedModel for TF Serving"


def add_arguments(parser):
    """The flags of ``tfrs-linear export``."""
    parser.add_argument("--model", required=True, metavar="DIR",
                        help="trained model directory (config.json, vocab.txt, weights/)")
    parser.add_argument("--base-path", required=True, metavar="saved_models/NAME",
                        help="the model's TF Serving base path; version max+1 is written")
    parser.add_argument("--k", type=int, default=100,
                        help="recommendations per request, >= 1 (capped at the catalogue "
                        "size; default: 100)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--exclude-history", dest="exclude_history", action="store_true",
                       default=None, help="never recommend items of the request's history (the "
                       "default of an export, whatever the run was evaluated with)")
    group.add_argument("--keep-history", dest="exclude_history", action="store_false",
                       help="history items may be recommended")


def run(args):
    """A missing or invalid model directory or a bad argument raises (``OSError`` /
    ``ValueError``); the CLI prints it as ``tfrs-linear export: error: ...``, exit 2."""
    # Deferred: the CLI's --help must not load TensorFlow.
    from tfrs_linear import serving

    path = serving.export_model_dir(args.model, args.base_path, k=args.k,
                                    exclude_history=args.exclude_history)
    print(f"exported version {path.name} to {path}")
    print(f"TF Serving config: {Path(args.base_path).parent / serving.MODELS_CONFIG}")
    return 0
