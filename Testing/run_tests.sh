#!/usr/bin/env bash
# The README's test command: sets up (or reuses) .venv, installs the project with its
# test extras (torch first and pinned, the CPU wheel), then runs the whole suite.
# pytest's exit code 5 ("no tests collected") is a failure here, not a success.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q torch==2.13.0
python -m pip install -q -e ".[test]"
set +e
python -m pytest Testing/Python -q "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "run_tests: pytest collected no tests; that is a failure of the suite" >&2
  exit 1
fi
exit "$rc"
