# Sourced by the other scripts: creates .venv in the repository root (if missing) and
# installs the package with its test, bench, pipelines, keras3 and torch extras (again only
# when setup.py or the extras change).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=".venv/.tfrs-linear-installed"
EXTRAS="test,bench,pipelines,keras3,torch"
want="$( { cat setup.py; echo "extras: $EXTRAS"; } | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "installing tfrs-linear and its dependencies into .venv (log: .venv/install.log)..."
  # No pip cache: a fresh machine (CI) installs once, and the cache would hold a second
  # copy of every wheel (CI once ran out of disk during this install).
  if ! { .venv/bin/python -m pip install -q --no-cache-dir --upgrade pip &&
         .venv/bin/python -m pip install -q --no-cache-dir -e ".[$EXTRAS]"; } \
       > .venv/install.log 2>&1; then
    tail -n 40 .venv/install.log >&2
    echo "installation failed; full log in .venv/install.log" >&2
    if grep -q "No space left on device" .venv/install.log; then
      echo "the disk is full: $(df -h . | tail -1)" >&2
    fi
    exit 1
  fi
  echo "$want" > "$stamp"
fi
export TF_USE_LEGACY_KERAS=1
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
export PYTHONUNBUFFERED=1
