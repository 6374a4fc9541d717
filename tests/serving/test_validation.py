"""Bad export and check-serving arguments are refused before anything is created or
loaded (issue 14): ``export --k 0`` left an empty model folder behind, and
``check-serving --tolerance -1`` reported false failures."""

import math

import pytest

from tests.serving.common import VOCAB
from tfrs_linear import serving
from tfrs_linear.cli import main


@pytest.mark.parametrize("k", [0, -3, 2.5, True, "5"])
def test_bad_k_creates_nothing(trained, tmp_path, k):
    root, model = trained
    base = tmp_path / "saved_models" / "recs"
    with pytest.raises(ValueError, match=r"^--k must be an integer >= 1, got "):
        serving.export_model_dir(root / "model", base, k=k)
    with pytest.raises(ValueError, match=r"^--k must be an integer >= 1, got "):
        serving.export_model(model, VOCAB, base, k=k)
    assert not base.parent.exists()


@pytest.mark.parametrize("flag", ["1", "yes", 0])
def test_bad_exclude_history_creates_nothing(trained, tmp_path, flag):
    root, _ = trained
    base = tmp_path / "saved_models" / "recs"
    with pytest.raises(ValueError, match="exclude_history must be True, False or None"):
        serving.export_model_dir(root / "model", base, k=3, exclude_history=flag)
    assert not base.parent.exists()


def test_cli_k_zero_is_one_error_line_and_creates_nothing(trained, tmp_path, capsys,
                                                          monkeypatch):
    root, _ = trained
    monkeypatch.delenv("TFRS_LINEAR_TRACEBACK", raising=False)
    saved = tmp_path / "saved_models"
    assert main(["export", "--model", str(root / "model"), "--base-path", str(saved / "recs"),
                 "--k", "0"]) == 2
    assert capsys.readouterr().err == (
        "tfrs-linear export: error: --k must be an integer >= 1, got 0\n")
    assert not saved.exists()


@pytest.mark.parametrize("tolerance", [-1, -1e-9, math.nan, math.inf, "0.1"])
def test_bad_tolerance_is_refused_before_loading(tmp_path, tolerance):
    # A folder that is not even a SavedModel: the tolerance is refused first.
    with pytest.raises(ValueError, match=r"^--tolerance must be a finite number >= 0, got "):
        serving.check_serving(tmp_path / "missing" / "1", tolerance=tolerance)
    # Zero is a valid tolerance: the check runs (and finds no SavedModel there).
    ok, lines = serving.check_serving(tmp_path / "missing" / "1", tolerance=0)
    assert not ok and "no saved_model.pb" in lines[-1]


def test_cli_negative_tolerance(exports, capsys, monkeypatch):
    monkeypatch.delenv("TFRS_LINEAR_TRACEBACK", raising=False)
    assert main(["check-serving", str(exports["v1"]), "--tolerance", "-1"]) == 2
    assert capsys.readouterr().err == (
        "tfrs-linear check-serving: error: --tolerance must be a finite number >= 0, "
        "got -1.0\n")
