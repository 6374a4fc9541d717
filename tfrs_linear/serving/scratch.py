"""Scratch folders of exports: marked in use, removed once their export is gone.

An export builds its version inside the model's base path, never in the system
temporary directory::

    saved_models/NAME/.tmp-export-<pid>-<random>/
      owner.json     {"pid": ..., "host": ..., "start": ...}: the export using it
      vocab.txt      the vocabulary, the source of the SavedModel's asset
      version/       the SavedModel being written; renamed to NAME/<N> when complete

TF Serving ignores the folder (its name is not a number). A completed or failed export
removes its own; a killed one cannot, so every export first removes the scratch
folders of exports that are gone (:func:`remove_stale_scratch`):

* the owner record names this host and its process no longer runs (or its pid now
  belongs to a process started later): removed;
* the owner record names another host: kept (its process cannot be checked from here);
* no readable owner record (an export in the instant between creating the folder and
  writing it, or a folder left by an older tfrs-linear): removed only when unchanged
  for :data:`UNOWNED_STALE_AFTER_S` seconds.

Only folders named ``.tmp-export-*`` are considered: never a numeric version, never a
symbolic link. Everything is created with the process umask (no private ``0700`` /
``0600`` modes), like the version it becomes.
"""

import json
import os
import secrets
import shutil
import socket
import time
from pathlib import Path

TMP_PREFIX = ".tmp-export-"
SCRATCH_OWNER_FILE = "owner.json"
SCRATCH_VERSION = "version"
SCRATCH_VOCAB = "vocab.txt"
UNOWNED_STALE_AFTER_S = 3600


def _process_stat(pid):
    """``(state, start time in clock ticks)`` of a process from ``/proc`` (Linux), or
    ``None`` when it is not readable there."""
    try:
        text = Path(f"/proc/{int(pid)}/stat").read_text()
    except (OSError, ValueError):
        return None
    fields = text[text.rfind(")") + 2:].split()  # fields 3.. (the name may hold spaces)
    try:
        return fields[0], int(fields[19])
    except (IndexError, ValueError):
        return None


def owner_record():
    """The owner record of this process: ``{"pid", "host", "start"}`` (``start``: the
    process start time from ``/proc``, ``None`` where there is none)."""
    stat = _process_stat(os.getpid())
    return {"pid": os.getpid(), "host": socket.gethostname(),
            "start": stat[1] if stat else None}


def make_scratch(base_path):
    """Creates this export's scratch folder under ``base_path`` (which must exist) with
    its owner record; returns its path."""
    base_path = Path(base_path)
    while True:
        folder = base_path / f"{TMP_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
        try:
            folder.mkdir()
        except FileExistsError:
            continue
        try:
            (folder / SCRATCH_OWNER_FILE).write_text(json.dumps(owner_record()) + "\n")
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return folder


def _process_gone(pid, start):
    """Whether process ``pid`` (started at ``start`` when known) no longer runs."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # it runs, as another user
    stat = _process_stat(pid)
    if stat is None:
        return False
    state, started = stat
    return state == "Z" or (start is not None and started != start)


def _read_owner(folder):
    """The folder's owner record ``(pid, host, start)``, or ``None`` when unreadable."""
    try:
        owner = json.loads((folder / SCRATCH_OWNER_FILE).read_text())
        pid, host, start = owner["pid"], owner["host"], owner.get("start")
    except (OSError, ValueError, TypeError, KeyError):
        return None
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
        return None
    if not isinstance(host, str) or not (start is None or isinstance(start, int)):
        return None
    return pid, host, start


def is_stale(folder, now=None):
    """Whether the scratch folder ``folder`` belongs to no running export (see the
    module's rules)."""
    folder = Path(folder)
    owner = _read_owner(folder)
    if owner is None:
        try:
            changed = folder.stat().st_mtime
        except OSError:
            return False
        return (time.time() if now is None else now) - changed > UNOWNED_STALE_AFTER_S
    pid, host, start = owner
    if host != socket.gethostname() or os.name != "posix":
        return False
    return _process_gone(pid, start)


def remove_stale_scratch(base_path):
    """Removes the stale ``.tmp-export-*`` folders directly under ``base_path``; returns
    the removed paths (sorted)."""
    base_path = Path(base_path)
    if not base_path.is_dir():
        return []
    removed = []
    for path in sorted(base_path.iterdir()):
        if (path.name.startswith(TMP_PREFIX) and not path.is_symlink() and path.is_dir()
                and is_stale(path)):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed
