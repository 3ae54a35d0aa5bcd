"""The RETURN-docs check (tests/return_docs/plugin.py) itself: it reads every module's RETURN and flags a returned
key that is neither documented there nor one of Ansible's common keys. The check runs over the real results of the
whole test session when the plugin is enabled (conftest.py's pytest_plugins)."""
import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.return_docs.plugin import COMMON, documented, undocumented

ROOT = Path(__file__).resolve().parents[2]
# A module known to return an undocumented or clashing key would be listed here (xfail, strict); none is.
KNOWN = {}
MODULES = [pytest.param(m, marks=pytest.mark.xfail(strict=True, reason=KNOWN[m])) if m in KNOWN else m
           for m in sorted(p.stem for p in (ROOT / "library").glob("*.py"))]


@pytest.mark.parametrize("module", MODULES)
def test_every_module_documents_what_it_returns(module):
    keys = documented(module)
    assert keys, f"{module}: RETURN is empty"
    clash = keys & COMMON - {"msg", "changed", "diff"}
    assert not clash, f"{module}: RETURN redefines keys Ansible gives a meaning of its own: {sorted(clash)}"


def test_an_undocumented_key_is_named_and_common_keys_are_not():
    lines = [json.dumps({"module": "fleet_lock", "status": "ok", "keys": ["changed", "invocation", "holder", "x"]}),
             json.dumps({"module": "not_ours", "status": "ok", "keys": ["anything"]})]
    assert undocumented(lines) == ["fleet_lock: returned 'x' (ok) is not documented in RETURN"]


def test_the_callback_records_a_real_module_result(tmp_path):
    record = tmp_path / "record.jsonl"
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), RETURN_DOCS_RECORD=str(record),
               ANSIBLE_CALLBACK_PLUGINS=str(ROOT / "tests" / "return_docs"), ANSIBLE_CALLBACKS_ENABLED="record_results",
               ANSIBLE_LOAD_CALLBACK_PLUGINS="1")
    p = subprocess.run([str(ROOT / ".venv" / "bin" / "ansible"), "localhost", "-m", "cert_deploy", "-a",
                        json.dumps({"action": "list", "backup_dir": str(tmp_path / "backups")})],
                       capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    [entry] = [json.loads(line) for line in record.read_text(encoding="utf-8").splitlines()]
    assert entry["module"] == "cert_deploy" and "backups" in entry["keys"]
    assert undocumented([json.dumps(entry)]) == []
