"""Exports respect the umask (issue 14): a TF Serving process running as another user
must be able to read them. Oracle: files ``0o666 & ~umask``, folders ``0o777 & ~umask``."""

import os
import stat

import pytest

from tests.serving.common import K
from tfrs_linear import serving


@pytest.fixture
def umask():
    """Sets the process umask for one test and restores it afterwards."""
    old = os.umask(0o022)
    os.umask(old)
    yield os.umask
    os.umask(old)


def _modes(root):
    """``{relative path: permission bits}`` of every file and folder under ``root``."""
    modes = {".": stat.S_IMODE(os.stat(root).st_mode)}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(folder, name)
            modes[os.path.relpath(path, root)] = stat.S_IMODE(os.lstat(path).st_mode)
    return modes


@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_export_respects_the_umask(trained, tmp_path, umask, mask):
    root, _ = trained
    umask(mask)
    saved = tmp_path / "saved_models"
    version = serving.export_model_dir(root / "model", saved / "recs", k=K)
    serving.export_model_dir(root / "model", saved / "recs", k=K)  # rewrites models.config
    modes = _modes(saved)
    files = {p for p in modes if os.path.isfile(saved / p)}
    assert {"models.config", "recs/1/saved_model.pb", "recs/1/assets/vocab.txt",
            "recs/2/assets.extra/tfrs_linear.json",
            "recs/2/assets.extra/tf_serving_warmup_requests"} <= files
    assert version == saved / "recs" / "1"
    want = {p: (0o666 if p in files else 0o777) & ~mask for p in modes}
    assert {p: oct(m) for p, m in modes.items()} == {p: oct(m) for p, m in want.items()}
