"""tfrs_linear.serving.export: versions, atomic rename, models.config, the export command."""

import json
from pathlib import Path

import pytest
import tensorflow as tf

import tfrs_linear
from tests.serving.common import CATALOGUE, VOCAB
from tfrs_linear import serving
from tfrs_linear.cli import main


def test_versions_are_max_plus_one_and_atomic(exports):
    base = exports["base"]
    assert exports["v1"] == base / "1" and exports["v2"].is_dir()
    assert sorted(p.name for p in base.iterdir()) == ["1", "2"]  # no temporary folder left
    for v in ("1", "2"):
        d = base / v
        assert (d / "saved_model.pb").is_file() and (d / "variables").is_dir()
        assert (d / "assets" / "vocab.txt").read_text().split("\n")[:-1] == VOCAB
        assert (d / "assets.extra" / serving.WARMUP_FILE).is_file()
    info = json.loads((base / "2" / "assets.extra" / serving.EXPORT_INFO_FILE).read_text())
    assert info["k"] == len(CATALOGUE) and info["exclude_history"] is True
    assert info["requested_k"] == 100 and Path(info["model_dir"]).name == "model"
    assert info["tfrs_linear"] == tfrs_linear.__version__ and info["tensorflow"] == tf.__version__


def test_next_version_skips_non_numeric(tmp_path):
    assert serving.next_version(tmp_path / "missing") == 1
    for name in ("3", "7", ".tmp-export-abc", "notes", "12a"):
        (tmp_path / name).mkdir()
    assert serving.next_version(tmp_path) == 8


def test_failed_export_removes_its_temporary_folder(trained, tmp_path, monkeypatch):
    root, _ = trained
    base = tmp_path / "saved_models" / "recs"
    (base / "4").mkdir(parents=True)
    seen = []

    def broken_save(obj, export_dir, signatures=None, **kwargs):
        seen.append(Path(export_dir))
        assert Path(export_dir).parent.name.startswith(serving.TMP_PREFIX)
        Path(export_dir).mkdir()
        (Path(export_dir) / "saved_model.pb").write_bytes(b"half written")
        raise OSError("disk full (forced)")

    monkeypatch.setattr(tf.saved_model, "save", broken_save)
    with pytest.raises(OSError, match="forced"):
        serving.export_model_dir(root / "model", base, k=3)
    assert seen and not seen[0].parent.exists()
    assert sorted(p.name for p in base.iterdir()) == ["4"]
    assert not (base.parent / "models.config").exists()


def test_models_config(exports, tmp_path):
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    text = (exports["base"].parent / "models.config").read_text()
    config = text_format.Parse(text, model_server_config_pb2.ModelServerConfig())
    entries = [(c.name, c.base_path, c.model_platform) for c in config.model_config_list.config]
    assert entries == [("recs", "/models/recs", "tensorflow")]

    # Every model folder with a numeric version is listed; others are not.
    for d in ("b_model/1", "a_model/3", "empty_model", ".hidden/1", "c_model/.tmp-export-x"):
        (tmp_path / d).mkdir(parents=True)
    serving.write_models_config(tmp_path)
    config = text_format.Parse((tmp_path / "models.config").read_text(),
                               model_server_config_pb2.ModelServerConfig())
    assert [c.name for c in config.model_config_list.config] == ["a_model", "b_model"]
    assert [c.base_path for c in config.model_config_list.config] == ["/models/a_model",
                                                                     "/models/b_model"]


def test_export_errors_are_one_cli_error_line(trained, tmp_path, capsys, monkeypatch):
    """Bad input is `tfrs-linear export: error: <what, where, the fix>` and exit 2, like
    every subcommand; no version is written."""
    root, _ = trained
    monkeypatch.delenv("TFRS_LINEAR_TRACEBACK", raising=False)
    saved = tmp_path / "saved_models"

    assert main(["export", "--model", str(root / "model"), "--base-path", str(saved / "3")]) == 2
    assert capsys.readouterr().err == (
        "tfrs-linear export: error: --base-path must name a model folder such as "
        f"saved_models/NAME, got {str(saved / '3')!r}\n"
    )
    missing = tmp_path / "nope"
    assert main(["export", "--model", str(missing), "--base-path", str(saved / "recs")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"tfrs-linear export: error: {missing} is not a trained model "
                          "directory: config.json is missing")
    assert err.count("\n") == 1
    assert not saved.exists()
    # --k 0: tests/serving/test_validation.py
