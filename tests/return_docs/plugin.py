"""pytest plugin: every key a project module returned during the test run is documented in its RETURN.

While the tests run, every `ansible` / `ansible-playbook` they start (the module tests run the modules as operators
do, `ansible localhost -m <module>`) inherits a callback (record_results.py) that records the keys of each result
of a module in library/. At the end of the session the keys are checked against the module's RETURN; an
undocumented key fails the run, naming the module and the key. Keys every module may return (changed, msg,
invocation, diff, ...) are Ansible's own and need no RETURN entry.
Enabled by `-p tests.return_docs.plugin` (conftest.py's pytest_plugins).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
# Ansible's common return values (https://docs.ansible.com/ansible/latest/reference_appendices/common_return_values.html)
# and what Ansible adds to every result.
COMMON = {"changed", "failed", "msg", "invocation", "diff", "warnings", "deprecations", "exception", "skipped",
          "skip_reason", "rc", "stdout", "stderr", "stdout_lines", "stderr_lines", "backup_file", "ansible_facts",
          "item", "ansible_loop_var", "_ansible_no_log", "_ansible_item_label", "_ansible_verbose_always",
          "_ansible_verbose_override", "_ansible_ignore_errors", "_ansible_delegated_vars", "module_stdout",
          "module_stderr", "attempts", "censored", "failed_when_result", "changed_when_result",
          "ansible_index_var"}
_record: Path | None = None


def documented(module: str) -> set[str] | None:
    path = ROOT / "library" / f"{module}.py"
    if not path.is_file():
        return None  # not one of the project's modules
    ns: dict = {}
    text = path.read_text(encoding="utf-8")
    start = text.index('RETURN = r"""')
    exec(text[start:text.index('"""', start + 13) + 3], ns)  # noqa: S102 - the module's own RETURN literal
    return set(yaml.safe_load(ns["RETURN"]) or {})


def undocumented(lines) -> list[str]:
    problems = set()
    for line in lines:
        entry = json.loads(line)
        keys = documented(entry["module"])
        if keys is None:
            continue
        for key in set(entry["keys"]) - keys - COMMON:
            problems.add(f"{entry['module']}: returned {key!r} ({entry['status']}) is not documented in RETURN")
    return sorted(problems)


def pytest_configure(config):
    global _record
    if hasattr(config, "workerinput"):
        return  # an xdist worker: its ansible runs write into the controller's record file (inherited environment)
    fd, name = tempfile.mkstemp(prefix="return-docs-", suffix=".jsonl")
    os.close(fd)
    _record = Path(name)
    callbacks = [c for c in os.environ.get("ANSIBLE_CALLBACKS_ENABLED", "").split(",") if c]
    os.environ.update({
        "RETURN_DOCS_RECORD": name,
        "ANSIBLE_CALLBACK_PLUGINS": os.pathsep.join(
            p for p in (str(Path(__file__).parent / "callbacks"), os.environ.get("ANSIBLE_CALLBACK_PLUGINS", "")) if p),
        "ANSIBLE_CALLBACKS_ENABLED": ",".join([*callbacks, "record_results"]),
        "ANSIBLE_LOAD_CALLBACK_PLUGINS": "1",  # ad hoc `ansible` loads only the stdout callback otherwise
    })


def pytest_sessionfinish(session, exitstatus):
    if _record is None or not _record.exists():
        return
    lines = _record.read_text(encoding="utf-8").splitlines()
    _record.unlink()
    problems = undocumented(lines)
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter:
        reporter.ensure_newline()
    write = reporter.write_line if reporter else print
    modules = {json.loads(line)["module"] for line in lines} & {p.stem for p in (ROOT / "library").glob("*.py")}
    write(f"RETURN docs: {len(lines)} module results checked ({', '.join(sorted(modules)) or 'no project module'})")
    if problems:
        write(f"RETURN docs: {len(problems)} returned keys are not documented:", red=True)
        for p in problems:
            write(f"  {p}")
        session.exitstatus = 1
