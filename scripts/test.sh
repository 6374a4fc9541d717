#!/usr/bin/env bash
# The whole test suite (README quick start, and what .ci/run calls).
source "$(dirname "$0")/venv.sh"
set +e
.venv/bin/python -m pytest -q -p no:cacheprovider tests "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: that is a failure here" >&2
  rc=1
fi
exit "$rc"
