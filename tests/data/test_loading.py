"""``tfrs_linear.data.load_dataset``: one entry point for files, preprocessed directories, synthetic data."""

import tfrs_linear  # noqa: F401  (sets TF_USE_LEGACY_KERAS before tf.keras is touched)
from tfrs_linear import data
from tests.data.common import write


def test_load_dataset_from_file(tmp_path):
    path = write(tmp_path, "s.txt", "u 1\nu 2\nu 3\nv 1\n")
    seq = data.load_dataset(path)
    assert seq.users == ["u"] and seq.dropped_users == 1
    assert seq.vocab == ["[PAD]", "[OOV]", "1", "2", "3"]
