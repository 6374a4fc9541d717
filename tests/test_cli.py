"""The `tfrs-linear` command line: one error path for every subcommand."""

import pytest

from tfrs_linear import serving
from tfrs_linear.cli import COMMANDS, main


def test_cli_reports_bad_input_as_one_error_line(tmp_path, capsys, monkeypatch):
    """Bad input through the CLI: exit status 2 and one line naming what is wrong, no
    traceback (TFRS_LINEAR_TRACEBACK=1 re-raises)."""
    monkeypatch.delenv("TFRS_LINEAR_TRACEBACK", raising=False)
    bad = tmp_path / "bad.json"
    bad.write_text('{"attention": "linrec",\n "max_len": }')
    assert main(["train", "--config", str(bad), "--output", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tfrs-linear train: error: ") and "line 2" in err
    assert "Traceback" not in err
    assert main(["evaluate", "--model", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert "tfrs-linear evaluate: error: " in err and "not a trained model directory" in err
    monkeypatch.setenv("TFRS_LINEAR_TRACEBACK", "1")
    with pytest.raises(ValueError, match="line 2"):
        main(["train", "--config", str(bad), "--output", str(tmp_path / "run")])


def test_export_of_a_missing_model_dir_is_an_error_line(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("TFRS_LINEAR_TRACEBACK", raising=False)
    rc = main(["export", "--model", str(tmp_path / "nowhere"), "--base-path",
               str(tmp_path / "saved" / "recs")])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("tfrs-linear export: error: ") and "not a trained model directory" in err
    assert err.count("\n") == 1 and "export failed" not in err
    assert not (tmp_path / "saved" / "recs").exists() or not list((tmp_path / "saved" / "recs").iterdir())


@pytest.mark.parametrize("error", [ValueError("bad value"), FileNotFoundError("no such file"),
                                   serving.ServingError("the server said no")])
def test_every_subcommand_reports_its_errors_the_same_way(tmp_path, capsys, monkeypatch, error):
    monkeypatch.delenv("TFRS_LINEAR_TRACEBACK", raising=False)

    def fail(args):
        raise error

    monkeypatch.setattr(serving, "run_check_serving", fail)
    assert main(["check-serving", str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"tfrs-linear check-serving: error: {error}\n"


def test_a_bad_flag_has_the_same_prefix_and_status(capsys):
    for command in COMMANDS:
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--no-such-flag"])
        assert exit_info.value.code == 2
        assert f"tfrs-linear {command}: error: " in capsys.readouterr().err


def test_an_interrupt_exits_130(capsys, monkeypatch, tmp_path):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(serving, "run_check_serving", interrupted)
    assert main(["check-serving", str(tmp_path)]) == 130
    assert capsys.readouterr().err == "interrupted\n"


def test_other_errors_keep_their_traceback(monkeypatch, tmp_path):
    def broken(args):
        raise ZeroDivisionError("a bug, not bad input")

    monkeypatch.setattr(serving, "run_check_serving", broken)
    with pytest.raises(ZeroDivisionError):
        main(["check-serving", str(tmp_path)])
