"""What the other modules share: the RecBole anchors, the tolerance, the issue's seeds,
the attentions compared, the metrics, the output files' names and the progress log."""

import time

# RecBole 1.2.1 on this machine, full ranking, no exclusion (docs/protocol.md).
ANCHORS = {
    "sasrec": {"label": "RecBole SASRec (anchor)", "hr@10": 0.1188, "ndcg@10": 0.0526,
               "mrr@10": 0.0327, "best_valid_ndcg@10": 0.0655, "best_epoch": 6,
               "note": "max_len 50, prefix augmentation, batch 512, seed 2020; ≈165 s/epoch"},
    "linrec": {"label": "RecBole + official LinRec (anchor)", "hr@10": 0.1283, "ndcg@10": 0.0571,
               "mrr@10": 0.0359, "best_valid_ndcg@10": 0.0656, "best_epoch": 5,
               "note": "same setting, official LinRec attention; ≈150 s/epoch"},
    "mostpop": {"label": "RecBole most-popular (anchor)", "hr@10": 0.0498, "ndcg@10": 0.0224,
                "mrr@10": None, "note": "same protocol"},
}
VALID_TARGET = ANCHORS["sasrec"]["best_valid_ndcg@10"]
RELATIVE_TOLERANCE = 0.03
# The issue's quality bar is over these 3 seeds; runs with further seeds are reported as a
# second seed set ("all"), never mixed into the first.
ISSUE_SEEDS = (2020, 2021, 2022)
NUM_TEST_USERS = 943  # ml-100k, no user dropped: one hit moves HR@10 by 0.00106

VARIANTS = {
    "softmax": {"attention": "softmax"},
    "linrec": {"attention": "linrec", "normalization": "paper"},
    "linrec-token": {"attention": "linrec", "normalization": "token"},
    # ELASTIC as the package builds it by default: with the learned per-interest recency
    # slopes on the aggregate logits (an exponential decay of each interest's weights with
    # the item's age; this library's addition, not in the paper).
    "elastic-recency": {"attention": "elastic", "num_interests": 16, "recency_bias": True},
    # ELASTIC as elastic.md describes it (no recency bias): the causal form, k=16 and k=32.
    "elastic": {"attention": "elastic", "num_interests": 16, "recency_bias": False},
    "elastic-k32": {"attention": "elastic", "num_interests": 32, "recency_bias": False},
    # ELASTIC as the paper builds it (regime "last" settings only): non-causal dispatcher
    # attention with the interests handed from block to block, with and without the
    # product-key interest memory that initialises them.
    "elastic-noncausal": {"attention": "elastic", "num_interests": 16, "causal": False,
                          "recency_bias": False},
    "elastic-memory": {"attention": "elastic", "num_interests": 16, "causal": False,
                       "use_memory": True, "recency_bias": False},
    # Earlier runs, kept in the report: the same configurations trained before the interest
    # tokens' initializer changed from Keras' random_normal (stddev 0.05) to stddev 1.
    "elastic-smallinit": {"attention": "elastic", "num_interests": 16, "recency_bias": False},
    "elastic-k32-smallinit": {"attention": "elastic", "num_interests": 32,
                              "recency_bias": False},
}
METRICS = ("ndcg@10", "hr@10", "mrr@10")

# The files written next to results.json.
PRECISION_FILE = "precision.md"
PLOT_FILE = "valid_ndcg_vs_seconds.png"


def log(msg):
    """Prints ``msg`` to stdout after the wall-clock time, flushed."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)
