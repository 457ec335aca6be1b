#!/usr/bin/env bash
# The README's test command.
#  1. The whole suite in .venv (this Python, torch first and pinned, the CPU wheel), with
#     ASSFT_REQUIRE_TORCH=1 so that nothing there passes by skipping what needs torch.
#  2. The torch-free tests (workspace, volumes, query, SSFT selection, MRML bridge, the
#     module's logic) under the Pythons and NumPys that Slicer ships: Python 3.9 + NumPy 1.26
#     (Slicer 5.6/5.8) in .venv-py39 and Python 3.12 + NumPy 2.0 (Slicer 5.10) in .venv-py312.
#     torch has no wheel for them here: tests that need it skip (importorskip / @pytest.mark.torch).
#     An interpreter that is missing is skipped with a printed reason (ASSFT_PY39 / ASSFT_PY312
#     name one explicitly; ASSFT_SKIP_OTHER_PYTHONS=1 skips both).
# pytest's exit code 5 ("no tests collected") is a failure here, not a success.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q torch==2.13.0
.venv/bin/python -m pip install -q -e ".[test]"

status=0
run_pytest() {  # LABEL PYTHON ARGS...: run pytest, remember a failure (exit 5 = no tests = failure)
  local label=$1 python=$2
  shift 2
  echo "run_tests: [$label] $("$python" -c 'import sys, numpy; print("Python", sys.version.split()[0], "NumPy", numpy.__version__)')"
  set +e
  "$python" -m pytest Testing/Python -q "$@"
  local rc=$?
  set -e
  if [ "$rc" -eq 5 ]; then
    echo "run_tests: [$label] pytest collected no tests; that is a failure of the suite" >&2
    rc=1
  fi
  if [ "$rc" -ne 0 ]; then
    echo "run_tests: [$label] FAILED (exit $rc)" >&2
    status=1
  fi
}

. .venv/bin/activate  # the main run as before: the venv's `python` and `assft` first on PATH
ASSFT_REQUIRE_TORCH=1 run_pytest "main" python "$@"

# The project's dependencies (ASSFT/Resources/requirements.txt, the one list) and test extras, less torch and
# what needs torch, with NumPy pinned to the series that the Slicer release ships.
torch_free_requirements() {  # NUMPY_SPEC WITH_SLICER(0|1)
  .venv/bin/python - "$1" "$2" <<'EOF'
import re, sys, tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
needs_torch = {"torch", "monai", "einops"}
slicer_only = {"slicer-core", "pyside6-essentials"}
runtime = [line.split("#")[0].strip() for line in open("ASSFT/Resources/requirements.txt")]
for req in [r for r in runtime if r] + project["optional-dependencies"]["test"]:
    name = re.split(r"[<>=!~ \[;]", req, maxsplit=1)[0].lower()
    if name in needs_torch or (name in slicer_only and sys.argv[2] != "1"):
        continue
    print(sys.argv[1] if name == "numpy" else req)
EOF
}

find_python() {  # VERSION ENVVAR: an interpreter for that version, or nothing
  local version=$1 explicit=${!2:-}
  if [ -n "$explicit" ]; then echo "$explicit"; return; fi
  if command -v pyenv >/dev/null 2>&1; then
    local p
    for p in "$(pyenv root)"/versions/"$version".*/bin/python"$version"; do
      if [ -x "$p" ]; then echo "$p"; return; fi
    done
  fi
  command -v "python$version" 2>/dev/null || true
}

other_python() {  # LABEL VERSION ENVVAR NUMPY_SPEC WITH_SLICER
  local label=$1 version=$2 envvar=$3 numpy=$4 with_slicer=$5
  local python
  python=$(find_python "$version" "$envvar")
  if [ -z "$python" ] || [ ! -x "$python" ]; then
    echo "run_tests: [$label] SKIPPED: no Python $version interpreter found (install it with pyenv, or set $envvar)"
    return
  fi
  local venv=.venv-$label
  if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
  fi
  local reqs_text reqs
  reqs_text=$(torch_free_requirements "$numpy" "$with_slicer")
  mapfile -t reqs <<<"$reqs_text"
  if ! "$venv/bin/python" -m pip install -q "${reqs[@]}"; then
    echo "run_tests: [$label] FAILED: could not install the torch-free dependencies: ${reqs[*]}" >&2
    status=1
    return
  fi
  # The library from this checkout (not installed: pip would want torch).
  PYTHONPATH="$REPO" run_pytest "$label" "$venv/bin/python" -p no:cacheprovider
}

if [ "${ASSFT_SKIP_OTHER_PYTHONS:-0}" = "1" ]; then
  echo "run_tests: Python 3.9 / 3.12 runs SKIPPED (ASSFT_SKIP_OTHER_PYTHONS=1)"
else
  # slicer-core has no wheel for Python 3.9: the MRML and module tests skip there, and run under 3.12.
  other_python py39 3.9 ASSFT_PY39 "numpy>=1.26,<2" 0
  other_python py312 3.12 ASSFT_PY312 "numpy>=2.0,<2.1" 1
fi
exit "$status"
