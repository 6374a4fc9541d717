"""The `tfrs-linear` command line: one error path for every subcommand, --help without
TensorFlow, TensorFlow's start-up lines kept from the user unless --verbose."""

import os
import subprocess
import sys

import pytest

from tfrs_linear import serving
from tfrs_linear.cli import COMMANDS, check_serving, main
from tfrs_linear.cli.quiet import NOISE, drop_noise, quiet_environment

ENV_WITHOUT_LOG_LEVEL = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}


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

    monkeypatch.setattr(check_serving, "run", fail)
    assert main(["check-serving", str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"tfrs-linear check-serving: error: {error}\n"


def test_check_serving_runs_the_serving_check_with_its_flags(tmp_path, capsys, monkeypatch):
    calls = []

    def fake_check(path, model_dir=None, compare=True, tolerance=1e-4):
        calls.append((path, model_dir, compare, tolerance))
        return False, ["FAIL: one", "two"]

    monkeypatch.setattr(serving, "check_serving", fake_check)
    assert main(["check-serving", "v/3", "--model", "m", "--no-compare", "--tolerance", "0"]) == 1
    assert calls == [("v/3", "m", False, 0.0)]
    assert capsys.readouterr().err == "FAIL: one\ntwo\n"


def test_a_command_run_in_process_gives_the_tensorflow_logger_back(tmp_path, capsys):
    import tensorflow as tf

    logger = tf.get_logger()
    before = logger.level
    seen = []
    check_serving_run = check_serving.run
    try:
        check_serving.run = lambda args: seen.append(logger.level) or 0
        assert main(["check-serving", str(tmp_path)]) == 0
    finally:
        check_serving.run = check_serving_run
    assert seen == [40] and logger.level == before  # ERROR inside the command only


def test_a_bad_flag_has_the_same_prefix_and_status(capsys):
    for command in COMMANDS:
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--no-such-flag"])
        assert exit_info.value.code == 2
        assert f"tfrs-linear {command}: error: " in capsys.readouterr().err


def test_an_interrupt_exits_130(capsys, monkeypatch, tmp_path):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(check_serving, "run", interrupted)
    assert main(["check-serving", str(tmp_path)]) == 130
    assert capsys.readouterr().err == "interrupted\n"


def test_other_errors_keep_their_traceback(monkeypatch, tmp_path):
    def broken(args):
        raise ZeroDivisionError("a bug, not bad input")

    monkeypatch.setattr(check_serving, "run", broken)
    with pytest.raises(ZeroDivisionError):
        main(["check-serving", str(tmp_path)])


HELP_WITHOUT_TENSORFLOW = """
import sys
from tfrs_linear.cli import main
for argv in ([], ["--help"], ["--version"], ["--verbose", "--help"], ["train", "--help"],
             ["evaluate", "--help"], ["export", "--help"], ["check-serving", "--help"],
             ["bench", "--help"]):
    try:
        main(argv)
    except SystemExit as e:
        assert e.code == (2 if argv == [] else 0), (argv, e.code)
    else:
        raise AssertionError(argv)
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "tf_keras", "numpy"))
assert not heavy, heavy[:5]
"""


def test_help_and_version_answer_without_importing_tensorflow():
    proc = subprocess.run([sys.executable, "-c", HELP_WITHOUT_TENSORFLOW], capture_output=True,
                          text=True, env=ENV_WITHOUT_LOG_LEVEL, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "usage: tfrs-linear bench" in proc.stdout and "--max-len INT" in proc.stdout
    # `python -m tfrs_linear.bench --help` (the worker's module) too.
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "tfrs_linear.bench", "--help"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "--lengths" in proc.stdout
    assert "tensorflow" not in proc.stderr  # -X importtime lists every module imported


# What TensorFlow 2.21 prints on a CPU-only machine when it starts (and on a GPU machine,
# the cuDNN/cuFFT factory lines), and lines that must reach the user.
START_UP = """WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
I0000 00:00:1795857907.155461    6058 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will not be used.
I0000 00:00:1795857907.386479    6058 cpu_feature_guard.cc:227] This TensorFlow binary is optimized to use available CPU instructions in performance-critical operations.
To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow with the appropriate compiler flags.
E0000 00:00:1795857933.584311    6814 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)
E0000 00:00:1732000000.000000    1234 cuda_dnn.cc:8310] Unable to register cuDNN factory: Attempting to register factory for plugin cuDNN when one has already been registered
I0000 00:00:1732000000.000000    1234 port.cc:153] oneDNN custom operations are on. You may see slightly different numerical results.
"""
KEPT = "a warning of the user's own\nE0000 00:00:1.0 1 op_kernel.cc:1] a real op error\n"


def test_start_up_lines_are_dropped_and_others_kept():
    assert drop_noise(START_UP + KEPT) == KEPT
    assert all(NOISE.match(line) for line in START_UP.splitlines())
    env = {}
    assert quiet_environment(env) and env == {"TF_CPP_MIN_LOG_LEVEL": "2"}
    env = {"TF_CPP_MIN_LOG_LEVEL": "0"}
    assert not quiet_environment(env) and env == {"TF_CPP_MIN_LOG_LEVEL": "0"}  # the user's


def test_the_cli_starts_tensorflow_quietly_and_verbose_shows_it(tmp_path):
    """A real `tfrs-linear` process that starts TensorFlow (then fails on a missing model
    directory): its stderr is the one error line; with --verbose, TensorFlow's start-up
    lines are there too."""
    argv = [sys.executable, "-m", "tfrs_linear", "evaluate", "--model", str(tmp_path / "none")]
    quiet = subprocess.run(argv, capture_output=True, text=True, env=ENV_WITHOUT_LOG_LEVEL,
                           timeout=300)
    verbose = subprocess.run(argv[:3] + ["--verbose"] + argv[3:], capture_output=True, text=True,
                             env=ENV_WITHOUT_LOG_LEVEL, timeout=300)
    assert quiet.returncode == verbose.returncode == 2
    assert quiet.stderr.startswith("tfrs-linear evaluate: error: ")
    assert quiet.stderr.count("\n") == 1, quiet.stderr
    assert any(NOISE.match(line) for line in verbose.stderr.splitlines()), verbose.stderr
    assert verbose.stderr.splitlines()[-1] == quiet.stderr.strip()


def test_train_refuses_an_output_that_is_a_file_before_loading_anything(tmp_path, capsys,
                                                                        monkeypatch):
    """--output naming a file: one line naming the flag and the path, before the data is
    read (a missing --data file would otherwise be the first error) or TensorFlow loads."""
    monkeypatch.delenv("TFRS_LINEAR_TRACEBACK", raising=False)
    afile = tmp_path / "afile"
    afile.write_text("not a run\n")
    rc = main(["train", "--data", str(tmp_path / "missing.inter"), "--output", str(afile)])
    assert rc == 2
    err = capsys.readouterr().err
    assert err == f"tfrs-linear train: error: --output {afile}: exists and is not a directory\n"
    assert afile.read_text() == "not a run\n"


@pytest.mark.parametrize("under", [False, True])
def test_export_refuses_a_base_path_that_is_or_lies_under_a_file(tmp_path, capsys,
                                                                 monkeypatch, under):
    """--base-path a file, or a path below one: one line naming the flag, the path and
    the file, before the (missing) model is looked at."""
    monkeypatch.delenv("TFRS_LINEAR_TRACEBACK", raising=False)
    afile = tmp_path / "afile"
    afile.write_text("x")
    base = afile / "recs" if under else afile
    rc = main(["export", "--model", str(tmp_path / "nowhere"), "--base-path", str(base)])
    assert rc == 2
    want = (f"--base-path {base}: cannot be a directory, {afile} is a file" if under
            else f"--base-path {base}: exists and is not a directory")
    assert capsys.readouterr().err == f"tfrs-linear export: error: {want}\n"
    assert afile.read_text() == "x"
