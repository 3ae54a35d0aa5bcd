#!/usr/bin/env bash
# `make molecule`: every molecule scenario, `molecule test`, from the project root with the venv; fails on the first
# scenario that fails, naming it. The scenarios run on lab slot 3 (addresses 127.0.3.x, state in .lab-3/).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH" ANSIBLE_CONFIG="$PWD/ansible.cfg"
scenarios=(default check)
for s in "${scenarios[@]}"; do
  echo "== molecule test -s $s"
  start=$SECONDS
  if ! molecule test -s "$s"; then
    echo "molecule.sh: scenario '$s' FAILED (see its output above); the lab of slot 3 was taken down by its destroy step" >&2
    exit 1
  fi
  echo "== molecule scenario '$s' passed in $((SECONDS - start))s"
done
echo "molecule.sh: all ${#scenarios[@]} scenarios passed"
