"""``tfrs-linear bench``: its flags (:mod:`tfrs_linear.bench.options`, TensorFlow-free);
TensorFlow is imported by :func:`run` only."""

from tfrs_linear.bench.options import add_bench_arguments

HELP = "time and memory of the attentions vs N"


def add_arguments(parser):
    """The flags of ``tfrs-linear bench``."""
    add_bench_arguments(parser)


def run(args):
    # Deferred: the CLI's --help must not load TensorFlow.
    from tfrs_linear.bench.driver import run_bench

    return run_bench(args)
