#!/usr/bin/env python3
"""Gate: every module in library/ renders with ansible-doc, and its DOCUMENTATION matches its argument spec.

DOCUMENTATION is read as ansible-doc reads it, with its doc fragments (`extends_documentation_fragment`, from
plugins/doc_fragments/ through ansible.cfg's doc_fragment_plugins) merged in: the `providers` and `store` options
and the `attributes` are documented there once for every module.

The argument spec is taken from the module itself: main() is run with AnsibleModule replaced by a catcher that
records the spec and stops, so nothing the module does after parsing its parameters runs.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("ANSIBLE_CONFIG", str(ROOT / "ansible.cfg"))  # before ansible reads its configuration
from ansible.module_utils import basic  # noqa: E402
from ansible.plugins.loader import fragment_loader  # noqa: E402
from ansible.utils.plugin_docs import get_docstring  # noqa: E402

import conftest  # noqa: E402,F401  (makes ansible.module_utils.<project module> importable)


class _Caught(Exception):
    def __init__(self, spec: dict, kwargs: dict):
        super().__init__("caught")
        self.spec, self.kwargs = spec, kwargs


def _catcher(argument_spec=None, **kwargs):
    raise _Caught(argument_spec or {}, kwargs)


def load(path: Path):
    spec = importlib.util.spec_from_file_location(f"_doccheck_{path.stem}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def argument_spec(path: Path, mod) -> tuple[dict, dict]:
    real = basic.AnsibleModule
    mod.AnsibleModule = _catcher
    basic.AnsibleModule = _catcher
    try:
        mod.main()
    except _Caught as c:
        return c.spec, c.kwargs
    finally:
        basic.AnsibleModule = real
    raise SystemExit(f"{path.name}: main() never built an AnsibleModule")


def compare(where: str, doc: dict, spec: dict) -> list[str]:
    errors = []
    for name in sorted(set(doc) | set(spec)):
        if name not in spec:
            errors.append(f"{where}{name}: documented but not in the argument spec")
            continue
        if name not in doc:
            errors.append(f"{where}{name}: in the argument spec but not documented")
            continue
        d, s = doc[name], spec[name]
        if not d.get("description"):
            errors.append(f"{where}{name}: no description")
        for key, dflt in (("type", "str"), ("required", False), ("default", None), ("choices", None),
                          ("elements", None), ("aliases", None)):
            dv, sv = d.get(key, dflt), s.get(key, dflt)
            if key == "choices" and dv and sv:  # the same choices in another order are the same choices
                dv, sv = sorted(map(str, dv)), sorted(map(str, sv))
            if key == "required" and dv is False and sv is False:
                continue
            if dv != sv:
                errors.append(f"{where}{name}: {key} is {dv!r} in DOCUMENTATION but {sv!r} in the argument spec")
        if "options" in s or "suboptions" in d:
            errors += compare(f"{where}{name}.", d.get("suboptions") or {}, s.get("options") or {})
    return errors


def check(path: Path) -> list[str]:
    mod = load(path)
    ns = vars(mod)
    errors = []
    for block in ("DOCUMENTATION", "EXAMPLES", "RETURN"):
        if block not in ns:
            errors.append(f"{path.name}: no {block}")
    if errors:
        return errors
    doc = get_docstring(str(path.resolve()), fragment_loader, is_module=True)[0]
    attributes = doc.get("attributes") or {}
    for attribute in ("check_mode", "diff_mode"):
        if (attributes.get(attribute) or {}).get("support") not in ("full", "partial", "none", "N/A"):
            errors.append(f"{path.name}: attributes.{attribute}.support is not declared")
    yaml.safe_load(ns["EXAMPLES"])
    ret = yaml.safe_load(ns["RETURN"]) or {}
    for key, val in ret.items():
        missing = [f for f in ("description", "returned", "type") if f not in (val or {})]
        if missing:
            errors.append(f"{path.name}: RETURN {key} lacks {', '.join(missing)}")
    spec, kwargs = argument_spec(path, mod)
    errors += [f"{path.name}: {e}" for e in compare("", doc.get("options") or {}, spec)]
    if not kwargs.get("supports_check_mode"):
        errors.append(f"{path.name}: supports_check_mode is not set")
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"))
    p = subprocess.run([str(ROOT / ".venv/bin/ansible-doc"), "-M", str(ROOT / "library"), path.stem],
                       capture_output=True, text=True, env=env, cwd=ROOT)
    if p.returncode != 0 or "OPTIONS" not in p.stdout or "[WARNING]" in p.stderr:
        errors.append(f"{path.name}: ansible-doc failed: {p.stderr.strip()[:500]}")
    return errors


def main() -> int:
    modules = sorted((ROOT / "library").glob("*.py"))
    errors = []
    for m in modules:
        try:
            errors += check(m)
        except Exception as e:  # noqa: BLE001 - a module that cannot even be read is one more problem to list
            errors.append(f"{m.name}: cannot be checked: {type(e).__name__}: {e}")
    for e in errors:
        print(e)
    print(f"module docs: {len(modules)} modules checked, {len(errors)} problems")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
