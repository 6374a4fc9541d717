#!/usr/bin/env bash
# The whole test suite (README quick start, and what .ci/run calls).
source "$(dirname "$0")/venv.sh"
set +e
# Two pytest-xdist workers, one test file each at a time (module fixtures built once): much
# of the suite waits on one core (graph building, XLA compilation, subprocess start-up), so
# two workers finish it in about two thirds of the time on two cores. TEST_WORKERS=0 runs it
# in one process.
.venv/bin/python -m pytest -q -p no:cacheprovider -n "${TEST_WORKERS:-2}" --dist loadfile \
  tests "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: that is a failure here" >&2
  rc=1
fi
exit "$rc"
