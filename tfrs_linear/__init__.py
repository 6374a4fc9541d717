"""tfrs-linear: linear-cost attention (LinRec, ELASTIC) for TensorFlow Recommenders.

Importing the package itself is cheap: it imports neither TensorFlow nor Keras. Each
submodule is loaded on first use (``tfrs_linear.ops``, ``tfrs_linear.layers``, ...).

Keras versions: the tf-keras layers, the TFRS models, training, serving and the CLI need
Keras 2 behind ``tf.keras`` (TensorFlow Recommenders only works with it); importing them
sets ``TF_USE_LEGACY_KERAS=1`` when it is unset (see :mod:`tfrs_linear.keras2`). The
pure-TensorFlow ops (``tfrs_linear.ops``) never touch that variable.
"""

import importlib as _importlib

__version__ = "0.2.0.dev0"

# Submodules loaded on first attribute access; "synthetic" is the old home of
# tfrs_linear.data.synthetic.
_SUBMODULES = {
    name: f"tfrs_linear.{name}"
    for name in ("ops", "layers", "models", "config", "constants", "data", "evaluation",
                 "serving", "training", "bench", "cli", "keras2")
}
_SUBMODULES["synthetic"] = "tfrs_linear.data.synthetic"


def __getattr__(name):
    if name in _SUBMODULES:
        return _importlib.import_module(_SUBMODULES[name])
    raise AttributeError(f"module 'tfrs_linear' has no attribute {name!r}")


__all__ = ["__version__", *_SUBMODULES]
