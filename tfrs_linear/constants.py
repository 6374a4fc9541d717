"""Names shared by every layer of the package: the option lists and the reserved ids.

Pure Python (no TensorFlow), so that configuration, argument parsing and help texts can
use them without loading TensorFlow. Every other module imports these from here; none
defines its own copy.
"""

# Attention mechanisms of TransformerBlock / SequenceEncoder / ModelConfig.
ATTENTIONS = ("softmax", "linrec", "elastic")
# LinRec's two L2 normalizations: "paper" (row/column-wise, the paper's) and "token"
# (per position, the official code's).
NORMALIZATIONS = ("paper", "token")
# Training regimes: "all" (a target at every position, causal encoder) and "last"
# (one target per prefix, the newest position only).
REGIMES = ("all", "last")
# Position embeddings of the sequence encoder: counted from the newest item (not
# streamable), from the user's first event (streamable), or none (order from causality).
POSITIONS = ("from_end", "from_start", "none")
# The encoder's own entries of a streaming state (SequenceEncoder.initial_state): the
# events seen and the newest event's output; each block's are "block_<i>.<name>".
STATE_COUNT = "count"
STATE_NEWEST = "newest_output"
# The newest items a streaming state keeps for history exclusion, by default
# (tfrs-linear export --stream-history).
DEFAULT_STREAM_HISTORY = 100
# tf.distribute strategies of `tfrs-linear train --strategy`.
STRATEGIES = ("default", "mirrored", "multiworker")
# How an export scores the catalogue: the exact float32 scan of the model's table, the
# same scan of a second copy of it (kept for old scripts: nothing gathers the model's
# table sparsely any more, so the plain scan never copies it), or a bfloat16 scan for
# candidates then an exact float32 re-rank.
SCORINGS = ("exact", "exact_copy", "bf16")
# Training losses: full cross-entropy over the catalogue, or sampled softmax.
LOSSES = ("full", "sampled")
# Numeric precision of a training run: float32, or a Keras mixed-precision policy.
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
#: ``TrainConfig.optimizer``: Adam, or Adam with row-wise updates of sparse gradients.
OPTIMIZERS = ("adam", "lazy_adam")
#: ``TrainConfig.lr_schedule``: the learning rate held, or decayed to 0 along a half cosine
#: over the epoch cap (both after ``warmup_steps`` of linear warm-up).
LR_SCHEDULES = ("constant", "cosine")
# Interaction file formats (tfrs_linear.data.readers parses them), "auto" (guess), and
# the output directory of pipelines/preprocess.py.
FILE_FORMATS = ("recbole", "movielens", "udata", "sasrec", "csv")
PREPROCESSED = "preprocessed"
FORMATS = ("auto",) + FILE_FORMATS + (PREPROCESSED,)
# Leave-one-out splits.
SPLITS = ("train", "valid", "test")
# Evaluation protocols: full ranking, or 100 sampled negatives (by popularity, uniform).
PROTOCOLS = ("full", "pop100", "uniform100")

# Reserved vocabulary entries: index 0 pads, index 1 stands for any unknown item. Real
# items start at NUM_RESERVED; neither reserved index is ever ranked or recommended.
PAD = "[PAD]"
OOV = "[OOV]"
PAD_INDEX = 0
OOV_INDEX = 1
NUM_RESERVED = 2
