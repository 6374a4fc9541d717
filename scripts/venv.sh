# Sourced by the other scripts: creates .venv in the repository root (if missing) and
# installs the package with its test, bench, pipelines and keras3 extras (again only when setup.py
# or the extras change).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=".venv/.tfrs-linear-installed"
EXTRAS="test,bench,pipelines,keras3"
want="$( { cat setup.py; echo "extras: $EXTRAS"; } | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "installing tfrs-linear and its dependencies into .venv (log: .venv/install.log)..."
  if ! { .venv/bin/python -m pip install -q --upgrade pip &&
         .venv/bin/python -m pip install -q -e ".[$EXTRAS]"; } > .venv/install.log 2>&1; then
    tail -n 40 .venv/install.log >&2
    echo "installation failed; full log in .venv/install.log" >&2
    exit 1
  fi
  echo "$want" > "$stamp"
fi
export TF_USE_LEGACY_KERAS=1
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
export PYTHONUNBUFFERED=1
