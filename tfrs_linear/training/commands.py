"""The ``tfrs-linear train`` and ``tfrs-linear evaluate`` commands (see tfrs_linear.cli).

``train`` reads the configuration from ``--config`` (a flat JSON file, see
tfrs_linear.config) or the defaults; every flag given overrides the key of the same
name. ``evaluate`` scores a trained run directory by a protocol and writes
``metrics-<protocol>.json`` into it.
"""

from pathlib import Path

from tfrs_linear.config import ModelConfig, TrainConfig, load_config, replace_config
from tfrs_linear.constants import ATTENTIONS, LOSSES, NORMALIZATIONS, PROTOCOLS, REGIMES
from tfrs_linear.data.loading import load_dataset
from tfrs_linear.data.readers import FORMATS
from tfrs_linear.models.model_dir import load_model_dir
from tfrs_linear.training import run_dir
from tfrs_linear.training.evaluator import Evaluator, format_table, metric_subset
from tfrs_linear.training.trainer import train

# Flags of `train` that override the configuration key of the same name when given.
_OVERRIDING_FLAGS = (
    "attention", "normalization", "regime", "loss", "max_len", "d_model", "num_layers",
    "num_heads", "num_interests", "dropout", "epochs", "batch_size", "learning_rate",
    "patience", "seed", "num_negatives",
)


def _log(message):
    print(message, flush=True)


def add_train_arguments(p):
    p.add_argument("--data", help="interactions file (default: the embedded synthetic dataset)")
    p.add_argument("--format", default="auto", choices=FORMATS)
    p.add_argument("--config", help="a JSON configuration (see models/); flags override it")
    p.add_argument("--attention", choices=ATTENTIONS)
    p.add_argument("--normalization", choices=NORMALIZATIONS)
    p.add_argument("--regime", choices=REGIMES)
    p.add_argument("--loss", choices=LOSSES)
    p.add_argument("--num-negatives", type=int,
                   help="shared log-uniform negatives per batch of the sampled loss")
    p.add_argument("--max-len", type=int)
    p.add_argument("--d-model", type=int)
    p.add_argument("--num-layers", type=int)
    p.add_argument("--num-heads", type=int)
    p.add_argument("--num-interests", type=int)
    p.add_argument("--dropout", type=float)
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--learning-rate", type=float)
    p.add_argument("--patience", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--no-xla", action="store_true", help="train without jit_compile")
    p.add_argument("--exclude-history", action="store_true",
                   help="remove history items from the ranking (docs/protocol.md)")
    p.add_argument("--strategy", default="default", choices=("default", "mirrored"),
                   help="tf.distribute strategy (mirrored: all local GPUs)")
    p.add_argument("--steps-per-epoch", type=int, help="cap batches per epoch (quick runs)")
    p.add_argument("--output", required=True, help="the run's directory (resumable)")


def config_from_args(args):
    """``(ModelConfig, TrainConfig)`` of ``tfrs-linear train``: the ``--config`` file (or
    the defaults) with the flags given applied."""
    if args.config:
        model_config, train_config = load_config(args.config)
    else:
        model_config, train_config = ModelConfig(), TrainConfig()
    overrides = {name: getattr(args, name, None) for name in _OVERRIDING_FLAGS}
    if getattr(args, "no_xla", False):
        overrides["xla"] = False
    if getattr(args, "exclude_history", False):
        overrides["exclude_history"] = True
    return replace_config(model_config, train_config, **overrides)


def run_train(args):
    model_config, train_config = config_from_args(args)
    data = load_dataset(args.data, format=args.format)
    train(model_config, train_config, data, args.output, strategy=args.strategy,
          steps_per_epoch=args.steps_per_epoch)
    return 0


def add_evaluate_arguments(p):
    p.add_argument("--model", required=True, help="a directory written by `tfrs-linear train`")
    p.add_argument("--data", help="interactions file (default: the one the model was trained on)")
    p.add_argument("--format", default="auto", choices=FORMATS)
    p.add_argument("--protocol", default="full", choices=PROTOCOLS)
    p.add_argument("--exclude-history", action="store_true")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampled protocols")


def run_evaluate(args):
    model, train_config, vocab = load_model_dir(args.model)
    path = args.data if args.data else run_dir.training_data_source(args.model)
    data = load_dataset(path, format=args.format)
    if list(data.vocab) != list(vocab):
        raise ValueError(
            f"{path or 'the embedded dataset'} does not give the vocabulary {args.model} was "
            "trained with; evaluate on the data it was trained on."
        )
    evaluator = Evaluator(model, train_config)
    results = {
        split: metric_subset(evaluator.evaluate(data, split, protocol=args.protocol,
                                                exclude_history=args.exclude_history,
                                                seed=args.seed))
        for split in ("valid", "test")
    }
    metrics = {"protocol": args.protocol, "exclude_history": bool(args.exclude_history), **results}
    out = run_dir.write_metrics(Path(args.model), metrics, name=f"metrics-{args.protocol}.json")
    _log(f"{args.protocol} protocol (exclude_history={args.exclude_history}):\n" + format_table(results))
    _log(f"wrote {out}")
    return 0


__all__ = ["add_train_arguments", "config_from_args", "run_train", "add_evaluate_arguments",
           "run_evaluate"]
