"""``tfrs-linear train``: its flags (one per configuration field) and how they become the
run's configuration. TensorFlow is imported by :func:`run` only."""

from tfrs_linear.cli.config_flags import (
    add_config_arguments,
    check_directory_flag,
    config_overrides,
    positive_int,
    refuse_inapplicable,
)
from tfrs_linear.config import ModelConfig, TrainConfig, load_config, replace_config
from tfrs_linear.constants import FORMATS, STRATEGIES

HELP = "train an XLA-compiled TFRS retrieval model"


def add_arguments(p):
    """The flags of ``tfrs-linear train``."""
    p.add_argument("--data", help="interactions file or preprocessed directory "
                   "(default: the embedded synthetic dataset)")
    p.add_argument("--format", default="auto", choices=FORMATS,
                   help="the file's format (default: auto, guessed)")
    p.add_argument("--keep-duplicates", action="store_true",
                   help="keep exact duplicate rows (same user, item and timestamp); by "
                   "default they are dropped and counted")
    p.add_argument("--config", help="a JSON configuration (see models/); flags override it")
    p.add_argument("--strategy", default="default", choices=STRATEGIES,
                   help="tf.distribute strategy (mirrored: all local GPUs; multiworker: "
                   "MultiWorkerMirroredStrategy over the worker tasks of TF_CONFIG, worker 0 "
                   "the chief; every worker gets the same flags and --output, a path all "
                   "can read; see docs/getting-started.md)")
    p.add_argument("--steps-per-epoch", type=positive_int,
                   help="cap batches per epoch (quick runs; a positive integer)")
    p.add_argument("--output", required=True, help="the run's directory (resumable)")
    add_config_arguments(p)


def config_from_args(args):
    """``(ModelConfig, TrainConfig)`` of ``tfrs-linear train``: the ``--config`` file (or
    the defaults) with the flags given applied. A flag that would do nothing for the
    resulting model (e.g. ``--normalization`` with softmax) is a ``ValueError``."""
    if getattr(args, "config", None):
        model_config, train_config = load_config(args.config)
    else:
        model_config, train_config = ModelConfig(), TrainConfig()
    given = config_overrides(args)
    model_config, train_config = replace_config(model_config, train_config, **given)
    refuse_inapplicable(model_config, given)
    return model_config, train_config


def check(args):
    """Refuses a bad configuration, or an ``--output`` that is a file, before TensorFlow
    loads (the CLI calls it first)."""
    config_from_args(args)
    check_directory_flag("--output", args.output)


def run(args):
    model_config, train_config = config_from_args(args)  # before anything is read or written
    # Deferred: the CLI's --help must not load TensorFlow.
    from tfrs_linear.training.commands import train_command

    return train_command(model_config, train_config, args.output, data=args.data,
                         format=args.format, keep_duplicates=args.keep_duplicates,
                         strategy=args.strategy, steps_per_epoch=args.steps_per_epoch)
