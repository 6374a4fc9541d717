"""``tfrs_linear.bench.plan``: the configurations and the grid of measurements."""

import argparse

from tfrs_linear import bench


def test_configuration_names_are_stable():
    # The names are --attentions values and bench.json keys: the interface of the bench.
    assert list(bench.CONFIGS) == [
        "softmax", "softmax-causal",
        "linrec-paper", "linrec-paper-causal", "linrec-token", "linrec-token-causal",
        "elastic-k16", "elastic-k32", "elastic-k16-causal", "elastic-k32-causal",
        "elastic-k16-causal-recency",
    ]
    assert bench.CONFIGS["linrec-token-causal"] == {
        "attention": "linrec", "causal": True, "normalization": "token",
        "num_interests": None, "recency_bias": False,
    }


def test_default_plan_starts_with_the_memory_subject_and_times_the_op_for_linrec_only():
    parser = argparse.ArgumentParser()
    bench.add_bench_arguments(parser)
    args = parser.parse_args(["--out", "x", "--attentions", "linrec,softmax"])
    bench.resolve_options(args)
    plan = bench.build_plan(args)
    assert plan["softmax"][0] == ("layer", "fwdbwd", "graph")
    assert ("op", "fwdbwd", "xla") in plan["linrec-paper"]
    assert not any(scope == "op" for scope, _, _ in plan["softmax"])
