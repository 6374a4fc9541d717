"""The ``tfrs-linear bench`` flags: parsing, grouped as the help lists them, and resolving.

:func:`add_bench_arguments` adds every flag to a parser (the CLI calls it);
:func:`resolve_options` fills the defaults that depend on ``--quick``/``--full`` and
checks the shapes. Flags, defaults and help texts are part of the command's interface.
"""

import argparse

from tfrs_linear.bench.plan import (
    CONFIGS,
    DEFAULT_LENGTHS,
    FAMILIES,
    MODES,
    PASSES,
    QUICK_LENGTHS,
    SCOPES,
)


def _int_list(text):
    try:
        values = [int(v) for v in str(text).replace(" ", "").split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers separated by commas: {text!r}")
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers: {text!r}")
    return sorted(set(values))


def _choice_list(allowed):
    def parse(text):
        values = [v for v in str(text).replace(" ", "").split(",") if v]
        bad = [v for v in values if v not in allowed]
        if bad or not values:
            raise argparse.ArgumentTypeError(
                f"expected a comma-separated subset of {','.join(allowed)}, got {text!r}"
            )
        return list(dict.fromkeys(values))

    return parse


def _attention_list(text):
    names = []
    for token in str(text).replace(" ", "").split(","):
        if not token:
            continue
        if token == "all":
            names.extend(CONFIGS)
        elif token in CONFIGS:
            names.append(token)
        elif token in FAMILIES:
            names.extend(n for n, c in CONFIGS.items() if c["attention"] == token)
        else:
            raise argparse.ArgumentTypeError(
                f"unknown attention {token!r}: use all, a family ({', '.join(FAMILIES)}) "
                f"or a configuration ({', '.join(CONFIGS)})"
            )
    if not names:
        raise argparse.ArgumentTypeError("no attention selected")
    return [n for n in CONFIGS if n in set(names)]


def add_bench_arguments(parser):
    """Adds the bench's flags to ``parser`` (an ``argparse.ArgumentParser``).

    The flags are added group by group, in the order ``--help`` lists them: the grid,
    the model's shape, the repetitions, and the limits.
    """
    _add_grid_arguments(parser)
    _add_shape_arguments(parser)
    _add_repetition_arguments(parser)
    _add_limit_arguments(parser)


def _add_grid_arguments(parser):
    """Where the results go and what is measured: lengths, device, configurations."""
    parser.add_argument(
        "--out", required=True, help="output folder: bench.json, bench.md, bench.png"
    )
    parser.add_argument(
        "--lengths",
        type=_int_list,
        default=None,
        help="sequence lengths N (default 256,1024,4096,16384; --quick 256,1024)",
    )
    parser.add_argument(
        "--device",
        choices=("auto", "cpu", "gpu"),
        default="auto",
        help="where to run (default: the GPU when one is visible, else the CPU)",
    )
    grid = parser.add_mutually_exclusive_group()
    grid.add_argument(
        "--full",
        action="store_true",
        help="every configuration x {layer, encoder, op} x {fwd, fwd+bwd} x modes",
    )
    grid.add_argument(
        "--quick",
        action="store_true",
        help="a small grid: attention layer fwd+bwd only, N 256,1024, 3 repeats",
    )
    parser.add_argument(
        "--attentions",
        type=_attention_list,
        default=None,
        help="configurations (comma-separated): all (default), a family "
        f"({', '.join(FAMILIES)}) or names among {', '.join(CONFIGS)}",
    )
    parser.add_argument(
        "--modes",
        type=_choice_list(MODES),
        default=list(MODES),
        help="execution modes: graph (tf.function), xla (jit_compile=True); default both",
    )
    parser.add_argument(
        "--scopes",
        type=_choice_list(SCOPES),
        default=None,
        help="override the grid: what to time (layer, encoder, op, matmuls; op and "
        "matmuls apply to LinRec only)",
    )
    parser.add_argument(
        "--passes",
        type=_choice_list(PASSES),
        default=None,
        help="override the grid: fwd and/or fwdbwd",
    )


def _add_shape_arguments(parser):
    """The shapes of the measured attention and encoder."""
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--d-model", type=int, default=64)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument(
        "--num-blocks", type=int, default=2, help="blocks of the encoder (default 2)"
    )
    parser.add_argument(
        "--chunk-size", type=int, default=32,
        help="causal LinRec chunk length (default 32, the op's default)"
    )


def _add_repetition_arguments(parser):
    """How often and how long one measurement is repeated."""
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="timed repetitions at most (default 7; --quick 3; --full 9)",
    )
    parser.add_argument(
        "--min-repeats",
        type=int,
        default=3,
        help="timed repetitions at least, even for slow steps (default 3)",
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=1,
        help="warm-up calls after the first (tracing/compiling) call (default 1)",
    )
    parser.add_argument(
        "--measure-seconds",
        type=float,
        default=2.0,
        help="time budget of the timed repetitions of one measurement; repetitions "
        "are reduced down to --min-repeats to fit it, and a first call slower than "
        "this counts as the warm-up (default 2)",
    )


def _add_limit_arguments(parser):
    """Memory and time limits (points predicted above them are skipped), and the rest."""
    parser.add_argument(
        "--memory-limit-gib",
        type=float,
        default=None,
        help="memory to plan against instead of 80%% of the available RAM (CPU) or of "
        "the device memory (GPU); softmax points predicted above it are skipped",
    )
    parser.add_argument(
        "--softmax-memory-factor",
        type=float,
        default=8.0,
        help="N x N float32 score tensors assumed live for softmax forward+backward "
        "(half for forward; +1 per extra encoder block); default 8 (measured on CPU "
        "in graph mode: about 8 GiB at batch 8, 2 heads, N=4096)",
    )
    parser.add_argument(
        "--max-step-seconds",
        type=float,
        default=8.0,
        help="skip a point whose step time, extrapolated from the previous N "
        "(N² for softmax, N otherwise), exceeds this (default 8)",
    )
    parser.add_argument(
        "--point-timeout",
        type=float,
        default=900.0,
        help="wall-clock limit of one point's subprocess in seconds (default 900)",
    )
    parser.add_argument(
        "--baseline-length",
        type=int,
        default=16,
        help="the tiny N of the memory baseline in each subprocess (default 16)",
    )
    parser.add_argument(
        "--peak-matmul-size",
        type=int,
        default=None,
        help="size of the square dense matmul used as the FLOP/s reference "
        "(default 2048 on CPU, 8192 on GPU)",
    )
    parser.add_argument("--seed", type=int, default=0)


def resolve_options(args):
    """Fills the defaults of ``args`` that depend on the grid and checks the shapes.

    ``--lengths`` and ``--repeats`` default by grid (``--quick``, ``--full`` or the
    default), ``--attentions`` to every configuration; ``--min-repeats`` is clamped to
    ``[1, --repeats]`` and ``--warmup`` to ``>= 0``. Changes ``args`` in place.

    Raises:
      ValueError: a shape flag below 1, or ``--d-model`` not divisible by ``--heads``.
    """
    if args.lengths is None:
        args.lengths = list(QUICK_LENGTHS if args.quick else DEFAULT_LENGTHS)
    if args.repeats is None:
        args.repeats = 3 if args.quick else (9 if args.full else 7)
    if args.attentions is None:
        args.attentions = list(CONFIGS)
    args.min_repeats = max(1, min(args.min_repeats, args.repeats))
    args.warmup = max(0, args.warmup)
    for name in ("batch_size", "d_model", "heads", "num_blocks", "chunk_size"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
    if args.d_model % args.heads:
        raise ValueError(
            f"--d-model {args.d_model} is not divisible by --heads {args.heads}"
        )
