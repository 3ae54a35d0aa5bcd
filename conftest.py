"""Makes the project's module_utils and library importable by pytest the way Ansible imports them."""
import os
import shutil
import sys
import tempfile
from pathlib import Path

import ansible.module_utils
import pytest

# Every module result a test produces is checked against its RETURN docs (tests/return_docs/plugin.py).
pytest_plugins = ["tests.return_docs.plugin"]

ROOT = Path(__file__).resolve().parent
# `from ansible.module_utils.<name> import ...` resolves to ./module_utils/<name>.py, as with ansible.cfg.
ansible.module_utils.__path__.append(str(ROOT / "module_utils"))
for sub in ("library", "lab"):
    p = str(ROOT / sub)
    if p not in sys.path:
        sys.path.insert(0, p)


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    """Under pytest-xdist a short base temp (/tmp/pt-XXXXXXXX instead of /tmp/pytest-of-<user>/pytest-<n>), because
    every worker nests its tmp_path one level deeper (popen-gwN/) and some tests record tmp paths in ticket notes,
    where a long path must stay as long as it is in a single-process run. Kept when a test failed, else removed."""
    if config.option.basetemp is None and getattr(config.option, "numprocesses", None) \
            and not os.environ.get("PYTEST_XDIST_WORKER"):
        config.option.basetemp = tempfile.mkdtemp(prefix="pt-")
        config._short_basetemp = config.option.basetemp


def pytest_sessionfinish(session, exitstatus):
    base = getattr(session.config, "_short_basetemp", None)
    if base and exitstatus == 0:
        shutil.rmtree(base, ignore_errors=True)
