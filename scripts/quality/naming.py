"""A run's configuration, the overrides that set it apart from its setting's own, and
the run and setting names made from them."""

import json
from pathlib import Path

from tfrs_linear.config import ModelConfig, TrainConfig, replace_config

from quality.common import VARIANTS


DEFAULT_EPOCHS = 60  # the script's epoch cap; another cap is an override (in the run's name)
# How an override appears in run and setting names; other keys as KEY_VALUE.
_NAME_FORMS = {"max_len": "len{}", "batch_size": "batch{}", "epochs": "ep{}", "precision": "{}"}


def make_config(variant, seed, args, base=None, overrides=None):
    """``(ModelConfig, TrainConfig)`` of one run: ``base`` (a loaded ``--base-config``, or
    the defaults) with the variant, the seed, the flags and ``overrides`` (flat config
    keys, from ``--set``/``--precision``) applied; ``overrides=None`` takes the script's
    own (``args.overrides``), ``{}`` none of them."""
    model_config, train_config = base if base is not None else (ModelConfig(), TrainConfig())
    values = dict(VARIANTS[variant])
    values.update(seed=seed, epochs=args.epochs)
    if base is None:
        values.update(max_len=args.max_len or 200, batch_size=args.batch_size or 128)
    else:
        if args.max_len:
            values["max_len"] = args.max_len
        if args.batch_size:
            values["batch_size"] = args.batch_size
    values.update(getattr(args, "overrides", {}) if overrides is None else overrides)
    return replace_config(model_config, train_config, **values)


def effective_overrides(variant, seed, args, base=None, overrides=None):
    """``{key: value}`` of the run's configuration that differ from the setting's own
    (the base configuration with the variant and the seed, at the script's default
    max_len, batch and epoch cap), in naming order: max_len, batch_size, epochs, the other
    keys alphabetically, precision last. An override equal to the setting's value is none."""
    class Plain:
        max_len = batch_size = None
        epochs = DEFAULT_EPOCHS
    reference = make_config(variant, seed, Plain, base, overrides={})
    effective = make_config(variant, seed, args, base, overrides)
    ref = {**reference[0].to_dict(), **reference[1].to_dict()}
    eff = {**effective[0].to_dict(), **effective[1].to_dict()}
    diff = {k: v for k, v in eff.items() if ref.get(k) != v}
    first, last = ("max_len", "batch_size", "epochs"), ("precision",)
    order = [k for k in first if k in diff] + sorted(k for k in diff if k not in first + last) + [
        k for k in last if k in diff]
    return {k: diff[k] for k in order}


def override_suffix(overrides):
    """``"-len50-ep20-mixed_bfloat16"`` for ``{"max_len": 50, "epochs": 20, "precision":
    "mixed_bfloat16"}`` ("" for none): what run and setting names end with."""
    tokens = []
    for key, value in overrides.items():
        text = json.dumps(value) if isinstance(value, bool) or value is None else str(value)
        token = _NAME_FORMS.get(key, key + "_{}").format(text)
        tokens.append("".join(c if c.isalnum() or c in "._" else "_" for c in token))
    return "".join(f"-{t}" for t in tokens)


def base_setting_name(args):
    """``"default"``, or the ``--base-config`` file's stem."""
    return "default" if not args.base_config else Path(args.base_config).stem


def setting_name(args, overrides=None):
    """The result group: the base setting's name, then the run's overrides."""
    return base_setting_name(args) + override_suffix(overrides or {})


def run_name(variant, seed, args, overrides=None):
    """A run's directory name: the variant, the base configuration, the seed, the overrides."""
    tag = "" if not args.base_config else f"-{Path(args.base_config).stem}"
    return f"{variant}{tag}-seed{seed}{override_suffix(overrides or {})}"
