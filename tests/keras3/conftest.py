"""The Keras 3 tests run in processes of their own, one per backend.

The main pytest process has ``TF_USE_LEGACY_KERAS=1`` (tests/conftest.py: the tf-keras
and TFRS suite needs Keras 2 behind ``tf.keras``), so the backend modules
(``backend_*.py``) are not collected there: ``test_backends.py`` runs them in a
subprocess per Keras backend, without that variable and with ``--confcutdir`` at this
folder, so that tests/conftest.py is not loaded there either.
"""

import os

# Set by test_backends.py in the subprocesses that run the backend modules.
BACKEND_RUN_VAR = "TFRS_LINEAR_KERAS3_BACKEND_RUN"

collect_ignore_glob = [] if os.environ.get(BACKEND_RUN_VAR) else ["backend_*.py"]
