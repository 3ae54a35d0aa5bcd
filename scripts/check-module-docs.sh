#!/usr/bin/env bash
# Gate: ansible-doc renders every module in library/, and DOCUMENTATION matches each argument spec.
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python scripts/check_module_docs.py
