"""One ``tfrs-linear train`` flag per configuration field, generated from the dataclasses.

Field ``x_y`` of :class:`~tfrs_linear.config.ModelConfig` or
:class:`~tfrs_linear.config.TrainConfig` is the flag ``--x-y`` (a boolean field is the pair
``--x-y`` / ``--no-x-y``). Its help text, choices and default come from the field itself
(:func:`tfrs_linear.config.config_field`), so a new field gets its flag and its ``--help``
line by being declared. A flag left out is ``None`` and keeps the ``--config`` file's value
(or the default); a flag given overrides it. Pure Python: no TensorFlow.
"""

import argparse
import dataclasses
from pathlib import Path

from tfrs_linear.config import ModelConfig, TrainConfig

CONFIG_FIELDS = tuple(dataclasses.fields(ModelConfig)) + tuple(dataclasses.fields(TrainConfig))
# Flags of 0.1.0 that set a field under another name, kept: `--no-xla` also sets no_xla.
_LEGACY_DESTS = {"xla": "no_xla"}


def flag_name(name):
    """The flag of field ``name``: ``max_len`` -> ``--max-len``."""
    return "--" + name.replace("_", "-")


class _Switch(argparse.Action):
    """``--x`` sets the field to True, ``--no-x`` to False; ``legacy_dest`` (e.g. ``no_xla``)
    records the negative form too."""

    def __init__(self, option_strings, dest, legacy_dest=None, **kwargs):
        super().__init__(option_strings, dest, nargs=0, **kwargs)
        self.legacy_dest = legacy_dest

    def __call__(self, parser, namespace, values, option_string=None):
        value = not option_string.startswith("--no-")
        setattr(namespace, self.dest, value)
        if self.legacy_dest:
            setattr(namespace, self.legacy_dest, not value)


def _default_text(field):
    if "default_help" in field.metadata:
        return field.metadata["default_help"]
    if field.type is bool:
        return "on" if field.default else "off"
    return f"{field.default:g}" if isinstance(field.default, float) else str(field.default)


def _help(field):
    return f"{field.metadata.get('help', '')} (default: {_default_text(field)})".replace("%", "%%")


def _scalar_type(field):
    types = getattr(field.type, "__args__", None) or (field.type,)
    return next(t for t in types if t is not type(None))


def add_config_arguments(parser):
    """Adds one flag per configuration field to ``parser`` (in an argument group)."""
    model = parser.add_argument_group(
        "model (ModelConfig; a flag overrides the --config file's value)")
    run = parser.add_argument_group(
        "run (TrainConfig; a flag overrides the --config file's value)")
    model_names = {f.name for f in dataclasses.fields(ModelConfig)}
    for field in CONFIG_FIELDS:
        group = model if field.name in model_names else run
        flag = flag_name(field.name)
        if _scalar_type(field) is bool:
            legacy = _LEGACY_DESTS.get(field.name)
            if legacy:
                parser.set_defaults(**{legacy: False})
            group.add_argument(flag, "--no-" + flag[2:], dest=field.name, action=_Switch,
                               default=None, legacy_dest=legacy, help=_help(field))
            continue
        kind = _scalar_type(field)
        group.add_argument(flag, dest=field.name, type=kind, default=None,
                           choices=field.metadata.get("choices"),
                           metavar=None if "choices" in field.metadata else kind.__name__.upper(),
                           help=_help(field))


def config_overrides(args):
    """``{field: value}`` of the configuration flags given on the command line."""
    return {f.name: getattr(args, f.name) for f in CONFIG_FIELDS
            if getattr(args, f.name, None) is not None}


def refuse_inapplicable(model_config, given):
    """Raises ``ValueError`` when a flag in ``given`` (field names) does nothing for
    ``model_config`` (:meth:`~tfrs_linear.config.ModelConfig.inapplicable_fields`)."""
    why = model_config.inapplicable_fields()
    bad = [name for name in given if name in why]
    if bad:
        reasons = "; ".join(f"{flag_name(name)}: {why[name]}" for name in bad)
        raise ValueError(
            f"{', '.join(flag_name(n) for n in bad)} would do nothing for this model (attention "
            f"{model_config.attention!r}, loss {model_config.loss!r}, "
            f"{'causal' if model_config.is_causal else 'non-causal'}): {reasons}; leave it out"
        )


def positive_int(text):
    """An ``argparse`` type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def check_directory_flag(flag, path):
    """Raises ``ValueError`` naming ``flag`` and ``path`` when ``path`` (a directory a
    command will create or write into) cannot be one: it, or the nearest of its parents
    that exists, is a file."""
    path = Path(path)
    for candidate in (path, *path.parents):
        if candidate.exists():
            if candidate.is_dir():
                return
            if candidate == path:
                raise ValueError(f"{flag} {path}: exists and is not a directory")
            raise ValueError(f"{flag} {path}: cannot be a directory, {candidate} is a file")


__all__ = ["CONFIG_FIELDS", "flag_name", "add_config_arguments", "config_overrides",
           "refuse_inapplicable", "positive_int", "check_directory_flag"]
