# Copyright: (c) 2026, DGTIC Operaciones
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Test-only callback: appends the result keys of every task that ran one of the project's modules to
$RETURN_DOCS_RECORD (one JSON line per result), for tests/return_docs/plugin.py to check against RETURN."""

import json
import os

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = r"""
name: record_results
type: aggregate
short_description: Record the keys of the project's module results (tests only)
description: Appends module name, status and result keys to the file E(RETURN_DOCS_RECORD) names.
"""


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "record_results"
    CALLBACK_NEEDS_ENABLED = True

    def _record(self, result, status):
        path = os.environ.get("RETURN_DOCS_RECORD")
        module = result._task.action.rpartition(".")[2]
        data = result._result
        if not path or not isinstance(data, dict) or "results" in data and isinstance(data.get("results"), list):
            return  # a loop's aggregate: its items are recorded one by one
        # Keys the task adds, not the module: a loop's own variable (loop_control.loop_var) and its index.
        added = {data.get("ansible_loop_var"), data.get("ansible_index_var")} - {None}
        keys = sorted(str(k) for k in data if k not in added)
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"module": module, "status": status, "keys": keys}) + "\n")

    def v2_runner_on_ok(self, result):
        self._record(result, "ok")

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._record(result, "failed")

    def v2_runner_item_on_ok(self, result):
        self._record(result, "ok")

    def v2_runner_item_on_failed(self, result):
        self._record(result, "failed")
