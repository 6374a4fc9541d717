"""What the bench measures: the attention configurations, the grid and the skip predictions.

A *configuration* is one attention as the bench builds it (``CONFIGS``: its family, its
causality and its options). The *plan* maps every selected configuration to the
measurements of one point, ``(scope, pass, mode)`` triples whose first item is the
point's memory subject (see :func:`build_plan`). Before a point runs, the driver asks
:func:`predict_softmax_bytes` and :func:`predict_step_seconds` whether it would run out
of memory or time, and skips it if so.
"""

from tfrs_linear.constants import ATTENTIONS, NORMALIZATIONS

DEFAULT_LENGTHS = (256, 1024, 4096, 16384)
QUICK_LENGTHS = (256, 1024)
MODES = ("graph", "xla")
SCOPES = ("layer", "encoder", "op", "matmuls")
PASSES = ("fwd", "fwdbwd")


def _config(attention, causal=False, normalization=None, num_interests=None,
            recency_bias=False):
    return {
        "attention": attention,
        "causal": causal,
        "normalization": normalization,
        "num_interests": num_interests,
        "recency_bias": recency_bias,
    }


CONFIGS = {
    "softmax": _config("softmax"),
    "softmax-causal": _config("softmax", causal=True),
    # linrec-paper, linrec-paper-causal, linrec-token, linrec-token-causal.
    **{
        f"linrec-{normalization}{suffix}": _config(
            "linrec", causal, normalization=normalization
        )
        for normalization in NORMALIZATIONS
        for causal, suffix in ((False, ""), (True, "-causal"))
    },
    "elastic-k16": _config("elastic", num_interests=16),
    "elastic-k32": _config("elastic", num_interests=32),
    "elastic-k16-causal": _config("elastic", True, num_interests=16),
    "elastic-k32-causal": _config("elastic", True, num_interests=32),
    # The causal form as SequentialRetrievalModel builds it by default (recency bias on).
    "elastic-k16-causal-recency": _config("elastic", True, num_interests=16, recency_bias=True),
}
# The attention families that --attentions accepts as a shorthand for their configurations.
FAMILIES = ATTENTIONS
# The configurations that also get the encoder in the default grid.
MAIN_CONFIGS = ("softmax", "linrec-paper", "elastic-k32")


def build_plan(args):
    """``{config: [(scope, pass, mode), ...]}``; a point's first item is its memory subject.

    Args:
      args: the resolved options (see ``resolve_options``): ``attentions``, ``modes``,
        ``scopes``, ``passes`` (overrides), ``full`` and ``quick`` (the grid).
    """
    modes = list(args.modes)
    plan = {}
    for name in args.attentions:
        cfg = CONFIGS[name]
        linrec = cfg["attention"] == "linrec"
        items = []

        def add(scope, passes, item_modes):
            for pas in passes:
                for mode in item_modes:
                    if (scope, pas, mode) not in items:
                        items.append((scope, pas, mode))

        if args.scopes or args.passes:
            for scope in args.scopes or ["layer"]:
                if scope in ("op", "matmuls") and not linrec:
                    continue
                add(scope, args.passes or ["fwdbwd"], modes)
        elif args.full:
            scopes = ["layer", "encoder"] + (["op", "matmuls"] if linrec else [])
            for scope in scopes:
                add(scope, ["fwdbwd", "fwd"], modes)
        elif args.quick:
            add("layer", ["fwdbwd"], modes)
            if name == "linrec-paper":
                add("op", ["fwdbwd"], modes)
                add("matmuls", ["fwdbwd"], modes)
        else:
            # The default grid (about 10 minutes on 2 idle cores): the attention layer
            # fwd+bwd in every mode for every configuration; forward and the encoder
            # (first mode) for the main configurations; LinRec's efficiency limit.
            add("layer", ["fwdbwd"], modes)
            if name in MAIN_CONFIGS:
                add("layer", ["fwd"], modes[:1])
                add("encoder", ["fwdbwd"], modes[:1])
            if name == "linrec-paper":
                add("op", ["fwdbwd"], modes)
                add("matmuls", ["fwdbwd"], modes)
        plan[name] = items
    return plan


def predict_softmax_bytes(cfg, scope, pas, n, args):
    """Predicted memory of softmax's N x N score tensors, or None for linear attentions.

    Args:
      cfg: a configuration of ``CONFIGS``.
      scope, pas: what is measured (``"layer"`` or ``"encoder"``; ``"fwd"`` or ``"fwdbwd"``).
      n: the sequence length.
      args: the options ``batch_size``, ``heads``, ``num_blocks`` and
        ``softmax_memory_factor`` (score tensors live for forward+backward).
    """
    if cfg["attention"] != "softmax" or scope not in ("layer", "encoder"):
        return None
    one = float(args.batch_size) * args.heads * n * n * 4  # float32 [B, H, N, N]
    factor = args.softmax_memory_factor
    if pas == "fwd":
        factor = factor / 2.0
    elif scope == "encoder":
        factor += args.num_blocks - 1  # the probabilities each block keeps for backward
    return one * factor


def predict_step_seconds(history, name, cfg, key, n):
    """Step time extrapolated from the largest smaller N measured (N² softmax, N else).

    Args:
      history: ``{(config, scope, pass, mode): [(n, median seconds), ...]}`` so far.
      name, cfg: the configuration's name and entry of ``CONFIGS``.
      key: the measurement, ``(scope, pass, mode)``.
      n: the sequence length to predict; None when no smaller N was measured.
    """
    pts = [(m, t) for m, t in history.get((name,) + key, []) if m < n]
    if not pts:
        return None
    n0, t0 = max(pts)
    exponent = 2.0 if cfg["attention"] == "softmax" else 1.0
    return t0 * (float(n) / n0) ** exponent
