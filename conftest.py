"""Makes the project's module_utils and library importable by pytest the way Ansible imports them."""
import sys
from pathlib import Path

import ansible.module_utils

ROOT = Path(__file__).resolve().parent
# `from ansible.module_utils.<name> import ...` resolves to ./module_utils/<name>.py, as with ansible.cfg.
ansible.module_utils.__path__.append(str(ROOT / "module_utils"))
for sub in ("library", "lab"):
    p = str(ROOT / sub)
    if p not in sys.path:
        sys.path.insert(0, p)
