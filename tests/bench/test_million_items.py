"""scripts/million_items.py's arguments: its report's folder exists before anything is
measured (a run into a new folder once measured for minutes, then failed writing its
report), and --render-only without a saved run says which file is missing."""

import importlib.util
import sys
from pathlib import Path

import pytest

_SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
sys.path.insert(0, str(_SCRIPTS))
_spec = importlib.util.spec_from_file_location("million_items", _SCRIPTS / "million_items.py")
million_items = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(million_items)


def test_the_report_folder_is_made_before_the_run(tmp_path):
    out = tmp_path / "new" / "deeper" / "million"
    args = million_items.parse_args(["--out", str(out), "--no-train"])
    assert args.out == str(out)
    assert out.parent.is_dir()


def test_render_only_without_a_saved_run_names_the_file(tmp_path, capsys):
    with pytest.raises(SystemExit):
        million_items.parse_args(["--render-only", "--out", str(tmp_path / "none")])
    assert f"{tmp_path / 'none'}.json" in capsys.readouterr().err
