"""Scratch folders of exports (issue 14): a killed export left ``.tmp-export-*`` folders
that no later export reused or removed. Each export marks its scratch folder with its
pid and host; the next export removes those whose process is gone (same host), and
never a live export's, another host's, or a numeric version."""

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.serving.common import K
from tfrs_linear import serving

REPO = Path(__file__).resolve().parents[2]

# An export that blocks once its scratch folder is written, until it is killed.
_BLOCKED_EXPORT = """
import sys, time
import tensorflow as tf
from tfrs_linear import serving

def blocked(*args, **kwargs):
    print("saving", flush=True)
    time.sleep(600)

tf.saved_model.save = blocked
serving.export_model_dir(sys.argv[1], sys.argv[2], k=3)
"""


def _scratch(base):
    return sorted(p.name for p in base.iterdir() if p.name.startswith(serving.TMP_PREFIX))


def _fake_scratch(base, name, owner=None, age_s=0):
    folder = base / name
    (folder / "version" / "variables").mkdir(parents=True)
    if owner is not None:
        (folder / serving.SCRATCH_OWNER_FILE).write_text(json.dumps(owner))
    if age_s:
        then = time.time() - age_s
        os.utime(folder, (then, then))
    return folder


def _ours(folder):
    """The entries of a temporary directory, but TensorFlow's autograph modules."""
    return [p.name for p in folder.iterdir()
            if not p.name.startswith("__autograph_generated_file")]


def _dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_killed_export_is_cleaned_up_live_one_is_not(trained, tmp_path):
    root, _ = trained
    base = tmp_path / "saved_models" / "recs"
    systemp = tmp_path / "systemp"  # the killed export's system temporary directory
    systemp.mkdir()
    env = dict(os.environ, PYTHONPATH=str(REPO), TMPDIR=str(systemp))
    log = tmp_path / "export.stderr"
    with open(log, "w") as stderr:
        proc = subprocess.Popen([sys.executable, "-c", _BLOCKED_EXPORT, str(root / "model"),
                                 str(base)], stdout=subprocess.PIPE, stderr=stderr, text=True,
                                env=env)
    try:
        assert proc.stdout.readline() == "saving\n", log.read_text()[-2000:]
        [live] = _scratch(base)
        owner = json.loads((base / live / serving.SCRATCH_OWNER_FILE).read_text())
        assert owner["pid"] == proc.pid and owner["host"] == socket.gethostname()

        # A concurrent export leaves the live export's scratch folder alone.
        serving.export_model_dir(root / "model", base, k=K)
        assert _scratch(base) == [live]
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()

    # Killed: it left nothing in the system temporary directory, and the next export
    # removes its scratch folder.
    assert _ours(systemp) == []
    assert (base / live).is_dir()
    serving.export_model_dir(root / "model", base, k=K)
    assert _scratch(base) == [] and serving.numeric_versions(base) == [1, 2]


def test_only_stale_scratch_of_this_host_is_removed(trained, tmp_path, monkeypatch):
    root, _ = trained
    base = tmp_path / "saved_models" / "recs"
    host = socket.gethostname()
    dead = {"pid": _dead_pid(), "host": host}
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        _fake_scratch(base, ".tmp-export-dead", dead)
        _fake_scratch(base, ".tmp-export-live", {"pid": sleeper.pid, "host": host})
        # The pid runs, but it is not the process that made the folder (a reused pid).
        _fake_scratch(base, ".tmp-export-reused", {"pid": sleeper.pid, "host": host,
                                                   "start": -1})
        _fake_scratch(base, ".tmp-export-elsewhere", dict(dead, host="other.invalid"))
        _fake_scratch(base, ".tmp-export-bad-owner", {"pid": "x"}, age_s=60)
        _fake_scratch(base, ".tmp-export-just-made")  # no owner yet: an export starting
        _fake_scratch(base, ".tmp-export-legacy", age_s=2 * 86400)  # unowned, old
        _fake_scratch(base, "9", dead)  # a numeric version is never scratch
        _fake_scratch(base, "notes", dead)
        # No scratch folder in the system temp directory either.
        monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "systemp"))
        (tmp_path / "systemp").mkdir()

        version = serving.export_model_dir(root / "model", base, k=K)
    finally:
        sleeper.kill()
        sleeper.wait()
    assert version == base / "10"
    assert _scratch(base) == [".tmp-export-bad-owner", ".tmp-export-elsewhere",
                              ".tmp-export-just-made", ".tmp-export-live"]
    assert (base / "9" / serving.SCRATCH_OWNER_FILE).is_file() and (base / "notes").is_dir()
    assert _ours(tmp_path / "systemp") == []
