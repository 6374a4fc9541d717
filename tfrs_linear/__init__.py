"""tfrs-linear: linear-cost attention (LinRec, ELASTIC) for TensorFlow Recommenders.

Importing this package first sets ``TF_USE_LEGACY_KERAS=1`` (when unset) so that
``tf.keras`` resolves to Keras 2 (tf-keras), which TensorFlow Recommenders needs.
TensorFlow reads that variable lazily, at the first ``tf.keras`` access, so the
package also works when ``tensorflow`` itself was imported earlier, as long as
nothing touched ``tf.keras`` with Keras 3 before.
"""

import os as _os

__version__ = "0.1.0"

_os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import tensorflow as _tf  # noqa: E402


def _check_keras_2():
    module = getattr(_tf.keras, "__name__", "")
    if not module.startswith("tf_keras"):
        raise ImportError(
            "tfrs_linear needs Keras 2 (tf-keras) behind tf.keras, but tf.keras is "
            f"{module or _tf.keras!r} (Keras 3). TensorFlow Recommenders only works "
            "with Keras 2: set the environment variable TF_USE_LEGACY_KERAS=1 "
            "before anything imports TensorFlow (for example `export "
            "TF_USE_LEGACY_KERAS=1` in the shell, or os.environ['TF_USE_LEGACY_KERAS'] "
            "= '1' at the very top of your program), and install tf-keras 2.21."
        )


_check_keras_2()

from tfrs_linear import ops  # noqa: E402
from tfrs_linear import layers  # noqa: E402

_LAZY = ("models", "config", "data", "evaluation", "serving", "bench", "cli", "synthetic")


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return importlib.import_module(f"tfrs_linear.{name}")
    raise AttributeError(f"module 'tfrs_linear' has no attribute {name!r}")


__all__ = ["__version__", "ops", "layers", *_LAZY]
