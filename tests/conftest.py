import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

import tfrs_linear  # noqa: E402,F401  (sets up Keras 2 before any test imports tf.keras)


@pytest.fixture
def float32_policy():
    """Restores the global dtype policy after a test that changes it."""
    import tensorflow as tf

    yield
    tf.keras.mixed_precision.set_global_policy("float32")
