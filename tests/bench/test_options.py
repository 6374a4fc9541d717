"""``tfrs_linear.bench.options``: the flags and the defaults they resolve to."""

import argparse

from tfrs_linear import bench


def parse(argv):
    parser = argparse.ArgumentParser()
    bench.add_bench_arguments(parser)
    return parser.parse_args(argv)


def test_default_lengths_and_family_selection_in_config_order():
    args = parse(["--out", "x", "--attentions", "linrec,softmax"])
    bench.resolve_options(args)
    assert args.lengths == [256, 1024, 4096, 16384]
    assert args.attentions == [
        "softmax", "linrec-paper", "linrec-paper-causal", "linrec-token", "linrec-token-causal"
    ]
