"""``tfrs-linear export``: its flags; TensorFlow is imported by :func:`run` only."""

from pathlib import Path

from tfrs_linear.cli.config_flags import check_directory_flag
from tfrs_linear.config import load_saved_config
from tfrs_linear.constants import DEFAULT_STREAM_HISTORY, SCORINGS

HELP = "export a versioned SavedModel for TF Serving"

# The export's default R, as help text.
STREAM_HISTORY_DEFAULT_TEXT = str(DEFAULT_STREAM_HISTORY)


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
    parser.add_argument("--stream-history", type=int, default=None, metavar="R",
                        help="streamable models only (causal linrec/elastic, positions "
                        "from_start or none): R, how many of a user's newest items the "
                        "streaming state keeps so that `step` never recommends them; older "
                        "items may come back. An integer >= 0 (default: "
                        f"{STREAM_HISTORY_DEFAULT_TEXT}); 0 with --keep-history")
    parser.add_argument("--scoring", choices=SCORINGS, default="exact",
                        help="how the catalogue is scored: exact (the float32 scan, default), "
                        "exact_copy (the same scan of a float32 copy of the item table; no "
                        "faster than exact, which no longer copies the table; the "
                        "export grows by 4*items*d bytes), bf16 (bfloat16 "
                        "candidates then an exact float32 re-rank; fast only on CPUs/GPUs "
                        "with fast bfloat16 matmuls)")
    parser.add_argument("--candidates", type=int, default=None, metavar="C",
                        help="--scoring bf16 only: candidates re-ranked exactly, >= k "
                        "(default: max(400, k))")


def check(args):
    """Refuses, before TensorFlow loads and anything is written: a ``--base-path`` that is
    (or lies under) a file, ``--candidates`` without ``--scoring bf16``, and a bad
    ``--stream-history`` (a negative R, a positive R with ``--keep-history``, any R for a
    model that cannot stream, read from its ``config.json`` when it is there; a missing
    model dir is reported by :func:`run`)."""
    check_directory_flag("--base-path", args.base_path)
    if args.candidates is not None and args.scoring != "bf16":
        raise ValueError("--candidates applies to --scoring bf16 only (the exact scans "
                         "rank every item); drop it or add --scoring bf16")
    r = args.stream_history
    if r is None:
        return
    if r < 0:
        raise ValueError(f"--stream-history must be an integer >= 0, got {r}")
    if r > 0 and args.exclude_history is False:
        raise ValueError(f"--stream-history {r} keeps items for history exclusion, which "
                         "--keep-history turns off (R is 0 then); drop one of the two flags")
    config_file = Path(args.model) / "config.json"
    if config_file.is_file():
        model_config, _ = load_saved_config(config_file)
        if not model_config.resolved().is_streamable:
            raise ValueError(
                f"--stream-history: the model in {args.model} cannot stream (attention "
                f"{model_config.attention!r}, positions {model_config.positions!r}; only causal "
                "linrec/elastic with positions from_start or none have encode_state/step), "
                "so R does nothing; drop the flag")


def run(args):
    """A missing or invalid model directory or a bad argument raises (``OSError`` /
    ``ValueError``); the CLI prints it as ``tfrs-linear export: error: ...``, exit 2."""
    # Deferred: the CLI's --help must not load TensorFlow.
    from tfrs_linear import serving

    extra = {"scoring": args.scoring, "candidates": args.candidates}
    if args.stream_history is not None:
        extra["stream_history"] = args.stream_history
    path = serving.export_model_dir(args.model, args.base_path, k=args.k,
                                    exclude_history=args.exclude_history, **extra)
    print(f"exported version {path.name} to {path}")
    print(f"TF Serving config: {Path(args.base_path).parent / serving.MODELS_CONFIG}")
    if args.scoring == "exact_copy":
        print("note: --scoring exact_copy scans a second copy of the item table, which is "
              "no faster than --scoring exact any more (the exact scan no longer copies the "
              "table per request) and makes the export bigger; exact is the default")
    return 0
