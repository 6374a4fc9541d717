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


def pytest_collection_finish(session):
    """Starts the Keras 3 backend subprocesses (tests/keras3/test_backends.py) right after
    collection when one of their tests was selected: they then run beside the rest of the
    suite instead of holding it up for minutes when their module's turn comes.

    Under pytest-xdist (``scripts/test.sh`` runs two workers) every worker collects every
    test but only one runs that module: the workers leave the start to the module's own
    fixture, or each would start its own pair of subprocesses."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        return
    if any(item.nodeid.startswith("tests/keras3/test_backends.py") for item in session.items):
        from tests.keras3.test_backends import start_backend_runs
        start_backend_runs()
