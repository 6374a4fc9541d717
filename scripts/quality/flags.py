"""The values of the flags parse_args checks beyond their type: ``--set KEY=VALUE``
overrides and the ``--stop-starting-at HH:MM`` time."""

import datetime
import json

from tfrs_linear.config import ModelConfig, TrainConfig, replace_config


# Keys a --set may not change: the script sets them per run (--seeds, --attentions) or by
# their own flag.
_NOT_SETTABLE = {"seed": "--seeds", "attention": "--attentions", "precision": "--precision"}


def parse_overrides(items):
    """``{key: value}`` from ``--set KEY=VALUE`` items (VALUE as JSON when it parses,
    else a string), checked against the configuration classes (unknown keys and values of
    the wrong type are refused)."""
    overrides = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"--set: expected KEY=VALUE, got {item!r}")
        if key in _NOT_SETTABLE:
            raise ValueError(f"--set: {key} is set by {_NOT_SETTABLE[key]}")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        overrides[key] = value
    replace_config(ModelConfig(), TrainConfig(), **overrides)  # raises ValueError naming the key
    return overrides


def is_hh_mm(text):
    """Whether ``text`` is a time of day written ``HH:MM`` (00:00 to 23:59)."""
    parts = text.split(":")
    return (len(parts) == 2 and all(len(x) == 2 and x.isdigit() for x in parts)
            and int(parts[0]) < 24 and int(parts[1]) < 60)


def past_stop_time(args):
    """Whether ``--stop-starting-at HH:MM`` (UTC, today) has passed: no run starts then."""
    if not args.stop_starting_at:
        return False
    now = datetime.datetime.now(datetime.timezone.utc)
    return now.strftime("%H:%M") >= args.stop_starting_at
