"""Keras 2 (tf-keras) for the parts of the package that need it.

TensorFlow Recommenders only works with Keras 2. In TensorFlow 2.16+ ``tf.keras`` is
Keras 3 unless the environment variable ``TF_USE_LEGACY_KERAS=1`` is set before the
first ``tf.keras`` access (TensorFlow reads it lazily, so importing ``tensorflow``
earlier is fine). :func:`require_keras2` sets it when it is unset and checks that
``tf.keras`` really is tf-keras.

Only the modules that need Keras 2 call it on import: the tf-keras layers
(``tfrs_linear.layers``), the TFRS models (``tfrs_linear.models``), training, serving
and the CLI. The pure-TensorFlow ops (``tfrs_linear.ops``), the configuration and the
data readers never do, so they can be used in a Keras 3 process.
"""

import os

ENV_VAR = "TF_USE_LEGACY_KERAS"


def require_keras2():
    """Makes ``tf.keras`` resolve to Keras 2 (tf-keras), or raises ``ImportError`` saying why.

    Sets ``TF_USE_LEGACY_KERAS=1`` when it is unset, imports TensorFlow and checks that
    ``tf.keras`` is tf-keras. It is not when Keras 3 was reached through ``tf.keras``
    before (or the variable is set to something else): then the error says what to do.
    Returns the ``tf.keras`` module.
    """
    os.environ.setdefault(ENV_VAR, "1")
    import tensorflow as tf

    module = getattr(tf.keras, "__name__", "")
    if not module.startswith("tf_keras"):
        raise ImportError(
            "this part of tfrs_linear needs Keras 2 (tf-keras) behind tf.keras, but tf.keras "
            f"is {module or tf.keras!r} (Keras 3). TensorFlow Recommenders only works with "
            f"Keras 2: set the environment variable {ENV_VAR}=1 before anything touches "
            "tf.keras (for example `export TF_USE_LEGACY_KERAS=1` in the shell, or "
            "os.environ['TF_USE_LEGACY_KERAS'] = '1' at the very top of your program), and "
            "install tf-keras 2.21. The Keras 3 layers are in tfrs_linear.keras3."
        )
    return tf.keras
