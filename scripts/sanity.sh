#!/usr/bin/env bash
# Gate: `ansible-test sanity` (validate-modules, import, pylint, pep8) over the project's modules, module_utils and
# doc fragments, through a collection tree generated from them (scripts/sanity_tree.py) — ansible-test only tests
# collections. Runs locally with the project's Python 3.11, no container.
#
# ansible-test gives each test its own virtual environment (pylint, voluptuous, ... at the versions ansible-core
# pins), created once and reused while ansible-core's requirements do not change. They live in a project-local
# HOME (build/ansible-test-home), so they neither leak into nor depend on the user's ~/.ansible. Creating them
# needs the package index once; pip's bootstrap script, which ansible-test downloads from a host that cannot be
# reached here, is replaced by a local stand-in (scripts/sanity_get_pip.py) in its cache.
# Findings that are accepted are listed, each with its reason, in tests/sanity/ignore-2.19.txt.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
# `bash scripts/sanity.sh pylint` runs one test; no argument runs the gate's four.
if [ $# -gt 0 ]; then tests=("$@"); else tests=(validate-modules import pylint pep8); fi

tree=$(.venv/bin/python scripts/sanity_tree.py "$root/build/sanity")
home="$root/build/ansible-test-home"
pip_version=$(.venv/bin/python -c \
  'from ansible_test._internal.python_requirements import get_venv_packages as g
class P: version = "3.11"
print(g(P)["pip"])')
cache="$home/.ansible/test/cache/get_pip_${pip_version//./_}.py"
mkdir -p "$(dirname "$cache")"
cmp -s scripts/sanity_get_pip.py "$cache" || cp scripts/sanity_get_pip.py "$cache"

args=()
for t in "${tests[@]}"; do args+=(--test "$t"); done
start=$SECONDS
cd "$tree"
# Its own throwaway git repository: otherwise ansible-test finds the project's, where build/ is ignored, and sees
# no file at all. Nothing is committed: ansible-test lists untracked files too.
git init -q .
# --requirements: the tests' own venvs get their pinned packages; PATH puts the project's ansible-test first.
HOME="$home" PATH="$root/.venv/bin:$PATH" ANSIBLE_CONFIG=/dev/null \
  "$root/.venv/bin/ansible-test" sanity --python 3.11 --requirements --color no "${args[@]}"
echo "sanity: ${tests[*]} clean in $((SECONDS - start)) s"
