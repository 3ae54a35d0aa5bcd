"""Every playbook AWX runs resolves against inventories/production (issue 13, "a role for every setting").

Two checks per playbook:
- `ansible-playbook -i inventories/production --syntax-check` passes;
- every variable the playbook, the task files it includes and the roles it uses reference is defined: by a role's
  defaults or vars, the production inventory (group_vars of the groups the play targets, hosts.yml), play / block /
  task vars, a register, a set_fact, a loop variable, a magic variable, an extra var the playbook's header documents
  as required (`-e name=...` outside square brackets) or a survey variable of the AWX job template that runs it.
  A reference guarded by `| default(...)`, `is defined` / `is undefined` (in the same expression, a surrounding
  `if`/`and`, or the task's `when`) needs no definition.

The resolver reads the YAML and parses every templated string with Jinja2 (the names a template loads and does not
set itself); it does not run anything. It is deliberately strict (every role default's own references count too), so
its own tests below show it catching an undefined variable and accepting the guarded and documented forms.
"""
from __future__ import annotations

import re
import subprocess
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import jinja2
import pytest
import yaml
from jinja2 import meta, nodes

ROOT = Path(__file__).resolve().parents[2]
PRODUCTION = ROOT / "inventories" / "production"
BIN = ROOT / ".venv" / "bin"

# Variables Ansible itself provides (facts and connection variables all start with ansible_).
MAGIC = {"hostvars", "groups", "group_names", "inventory_hostname", "inventory_hostname_short", "inventory_dir",
         "inventory_file", "playbook_dir", "role_path", "role_name", "role_names", "play_hosts", "omit", "item",
         "vars", "environment", "lookup", "query", "q", "now", "undef", "range", "dict", "lipsum", "cycler", "joiner",
         "namespace", "true", "false", "none", "True", "False", "None", "loop", "ansible_loop"}
# Task keys whose value is a bare Jinja expression, not a template.
EXPRESSIONS = ("when", "changed_when", "failed_when", "until")
# Keys of a task that are not its module.
TASK_KEYS = {"name", "when", "changed_when", "failed_when", "until", "retries", "delay", "register", "loop",
             "loop_control", "vars", "tags", "become", "become_user", "delegate_to", "delegate_facts", "run_once",
             "ignore_errors", "ignore_unreachable", "no_log", "notify", "check_mode", "diff", "environment", "args",
             "any_errors_fatal", "throttle", "timeout", "listen", "collections", "module_defaults", "connection",
             "block", "rescue", "always", "local_action", "async", "poll", "debugger", "become_method"}
INCLUDE_TASKS = {"include_tasks", "import_tasks", "ansible.builtin.include_tasks", "ansible.builtin.import_tasks"}
INCLUDE_ROLE = {"include_role", "import_role", "ansible.builtin.include_role", "ansible.builtin.import_role"}
SET_FACT = {"set_fact", "ansible.builtin.set_fact", "set_stats", "ansible.builtin.set_stats"}
GUARD_FILTERS = {"default", "d"}
GUARD_TESTS = {"defined", "undefined"}


class _Loader(yaml.SafeLoader):
    """YAML as Ansible reads it: `!unsafe` strings are never templated, `!vault` values are opaque."""


_Loader.add_constructor("!unsafe", lambda loader, node: None)
_Loader.add_constructor("!vault", lambda loader, node: None)


def load(path: Path):
    return yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)  # noqa: S506 (safe loader + two tags)


# ---------------------------------------------------------------- Jinja: the names a template needs

class _AnyName(dict):
    """Every filter and test name exists (Ansible's and collections' ones): only the variables are looked at."""

    def __contains__(self, name):
        return True

    def __missing__(self, name):
        return _any_function

    def get(self, name, default=None):
        return super().get(name, _any_function)


def _any_function(*args, **kwargs):
    return None


_ENV = jinja2.Environment(autoescape=False)  # noqa: S701 (parsing only; nothing is rendered)
_ENV.filters, _ENV.tests = _AnyName(_ENV.filters), _AnyName(_ENV.tests)


_FALSY = ("", None, False, 0)


def _falsy_default(node) -> bool:
    """`x | default('')`, `default([])`, `default(false)`, `default(none)`...: truthy only when x is defined."""
    if not (isinstance(node, nodes.Filter) and node.name in GUARD_FILTERS and node.args):
        return False
    arg = node.args[0]
    return ((isinstance(arg, nodes.Const) and arg.value in _FALSY)
            or (isinstance(arg, (nodes.List, nodes.Dict, nodes.Tuple)) and not arg.items)
            or (isinstance(arg, nodes.Name) and arg.name in ("none", "None", "false", "False")))


def _names(node) -> set[str]:
    return {n.name for n in node.find_all(nodes.Name)} | ({node.name} if isinstance(node, nodes.Name) else set())


def _tested_defined(node) -> set[str]:
    """Names that are defined whenever `node` is true: `x is defined`, `a and b` of such, and any
    `x | default('') ...` (a falsy default) outside a `not`/`or`."""
    if isinstance(node, nodes.Test) and node.name == "defined":
        return _names(node.node)
    if isinstance(node, nodes.Test) and node.name == "undefined":
        return set()
    if isinstance(node, nodes.And):
        return _tested_defined(node.left) | _tested_defined(node.right)
    if isinstance(node, nodes.Not):
        return _false_defined(node.node)
    if isinstance(node, nodes.Or):
        return set()
    found = _names(node.node) if _falsy_default(node) else set()
    for child in node.iter_child_nodes():
        if not isinstance(child, (nodes.Not, nodes.Or)):
            found |= _tested_defined(child)
    return found


def _false_defined(node) -> set[str]:
    """Names that are defined whenever `node` is false: `x is undefined`, `not (x is defined)`, `a or b` of such."""
    if isinstance(node, nodes.Test) and node.name == "undefined":
        return _names(node.node)
    if isinstance(node, nodes.Not):
        return _tested_defined(node.node)
    if isinstance(node, nodes.Or):
        return _false_defined(node.left) | _false_defined(node.right)
    return set()


def _walk(node, guarded: frozenset, out: set[str]) -> None:
    """Adds to `out` the names loaded by `node` outside any guard."""
    if isinstance(node, nodes.Name):
        if node.ctx == "load" and node.name not in guarded:
            out.add(node.name)
        return
    if isinstance(node, nodes.Filter) and node.name in GUARD_FILTERS and node.node is not None:
        for name in node.node.find_all(nodes.Name):
            guarded = guarded | {name.name}
        if isinstance(node.node, nodes.Name):
            guarded = guarded | {node.node.name}
        for child in (*node.args, *[kw.value for kw in node.kwargs]):
            _walk(child, guarded, out)
        _walk(node.node, guarded, out)
        return
    if isinstance(node, nodes.Test) and node.name in GUARD_TESTS:
        return  # `x is defined` reads nothing
    if isinstance(node, nodes.CondExpr):
        _walk(node.test, guarded, out)
        _walk(node.expr1, guarded | _tested_defined(node.test), out)
        if node.expr2 is not None:
            _walk(node.expr2, guarded | _false_defined(node.test), out)
        return
    if isinstance(node, nodes.And):
        _walk(node.left, guarded, out)
        _walk(node.right, guarded | _tested_defined(node.left), out)
        return
    if isinstance(node, nodes.Or):
        _walk(node.left, guarded, out)
        _walk(node.right, guarded | _false_defined(node.left), out)
        return
    if isinstance(node, nodes.If):
        _walk(node.test, guarded, out)
        inner = guarded | _tested_defined(node.test)
        for child in node.body:
            _walk(child, inner, out)
        for child in node.elif_:
            _walk(child, guarded | _false_defined(node.test), out)
        for child in node.else_:
            _walk(child, guarded | _false_defined(node.test), out)
        return
    for child in node.iter_child_nodes():
        _walk(child, guarded, out)


def template_names(text: str, guarded=frozenset()) -> set[str]:
    """The variables a template (a string with {{ }} / {% %}) needs from outside: loaded, not set by the template
    itself, not guarded."""
    if "{{" not in text and "{%" not in text:
        return set()
    with warnings.catch_warnings():  # a regex in a template ('\d') is Ansible's business, not this check's
        warnings.simplefilter("ignore", DeprecationWarning)
        ast = _ENV.parse(text)
    loaded: set[str] = set()
    _walk(ast, frozenset(guarded), loaded)
    # A name the template sets anywhere ({% set %} in one branch, a loop target) is its own, not an outside one.
    own = {n.name for n in ast.find_all(nodes.Name) if n.ctx in ("store", "param")}
    return (loaded & meta.find_undeclared_variables(ast)) - own


def expression_names(expr, guarded=frozenset()) -> set[str]:
    """The same for a bare expression (`when:`, `that:`), a bool or a list of them."""
    if isinstance(expr, list):
        return set().union(*(expression_names(e, guarded) for e in expr)) if expr else set()
    if not isinstance(expr, str):
        return set()
    return template_names("{{ " + expr + " }}", guarded)


def defined_by_when(expr) -> set[str]:
    exprs = expr if isinstance(expr, list) else [expr]
    found = set()
    for e in exprs:
        if isinstance(e, str):
            try:
                found |= _tested_defined(_ENV.parse("{{ " + e + " }}").body[0].nodes[0])
            except (jinja2.TemplateSyntaxError, IndexError, AttributeError):
                pass
    return found


def data_names(value, guarded=frozenset()) -> set[str]:
    """Names every templated string inside a YAML value needs."""
    if isinstance(value, str):
        return template_names(value, guarded)
    if isinstance(value, dict):
        return set().union(set(), *(data_names(v, guarded) for v in value.values()))
    if isinstance(value, list):
        return set().union(set(), *(data_names(v, guarded) for v in value))
    return set()


# ---------------------------------------------------------------- the playbook, its task files and roles

@dataclass
class Scan:
    """What one playbook defines and references (with where each reference is)."""

    defined: set = field(default_factory=set)
    needs: dict = field(default_factory=dict)  # name -> set of "file: place"
    roles_seen: set = field(default_factory=set)
    files_seen: set = field(default_factory=set)

    def need(self, names, where, local=frozenset()):
        for name in names - set(local):
            self.needs.setdefault(name, set()).add(where)


def _rel(path: Path) -> str:
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


def _role_dir(name: str, base: Path) -> Path | None:
    for candidate in (ROOT / "roles" / name, base / "roles" / name):
        if candidate.is_dir():
            return candidate
    return None


def _var_files(directory: Path):
    """main.yml or every file of main/ (Ansible's defaults/vars layout)."""
    if (directory / "main.yml").is_file():
        yield directory / "main.yml"
    if (directory / "main").is_dir():
        yield from sorted((directory / "main").glob("*.yml"))


def scan_role(scan: Scan, name: str, base: Path, tasks_from: str = "main") -> None:
    role = _role_dir(name, base)
    if role is None:
        scan.need({f"<role {name}>"}, f"role {name} not found")
        return
    if name not in scan.roles_seen:
        scan.roles_seen.add(name)
        for kind in ("defaults", "vars"):
            for path in _var_files(role / kind):
                data = load(path) or {}
                scan.defined |= set(data)
                for key, value in data.items():
                    scan.need(data_names(value), f"{_rel(path)}: {key}")
        meta = role / "meta" / "main.yml"
        for dep in ((load(meta) or {}).get("dependencies") or []) if meta.is_file() else []:
            scan_role(scan, dep if isinstance(dep, str) else dep.get("role") or dep.get("name"), base)
    tasks = role / "tasks" / f"{tasks_from}.yml"
    if tasks.is_file():
        scan_tasks(scan, tasks, role / "tasks", frozenset())


def scan_tasks(scan: Scan, path: Path, base: Path, local: frozenset) -> None:
    key = (path, local)
    if key in scan.files_seen:
        return
    scan.files_seen.add(key)
    for task in load(path) or []:
        scan_task(scan, task, path, base, local)


def scan_task(scan: Scan, task: dict, path: Path, base: Path, local: frozenset) -> None:
    where = f"{_rel(path)}: {task.get('name', '(unnamed task)')}"
    mine = set(local) | set(task.get("vars") or {})
    loop_var = (task.get("loop_control") or {}).get("loop_var")
    if loop_var:
        mine.add(loop_var)
    if task.get("register"):
        scan.defined.add(task["register"])
    guarded = frozenset(defined_by_when(task.get("when")))
    scan.need(data_names(task.get("vars") or {}, guarded), where, mine)
    for k in EXPRESSIONS:
        scan.need(expression_names(task.get(k), guarded if k != "when" else frozenset()), where, mine)
    for k in ("name", "loop", "delegate_to", "environment", "args", "notify", "retries", "delay", "run_once",
              "no_log", "ignore_errors", "become_user", "loop_control"):
        scan.need(data_names(task.get(k), guarded), where, mine)
    scan.need(data_names([v for k, v in task.items() if k.startswith("with_")], guarded), where, mine)
    for section in ("block", "rescue", "always"):
        for sub in task.get(section) or []:
            scan_task(scan, sub, path, base, frozenset(mine | guarded))
    for module, args in task.items():
        if module in TASK_KEYS or module.startswith("with_"):
            continue
        if module in SET_FACT and isinstance(args, dict):
            scan.defined |= {k for k in args if k != "cacheable"}
        if module in ("ansible.builtin.assert", "assert") and isinstance(args, dict):
            scan.need(expression_names(args.get("that"), guarded), where, mine)
            args = {k: v for k, v in args.items() if k != "that"}
        if module in ("ansible.builtin.debug", "debug") and isinstance(args, dict) and "var" in args:
            scan.need(expression_names(args["var"], guarded), where, mine)
        if module in ("ansible.builtin.include_vars", "include_vars") and isinstance(args, dict) and args.get("name"):
            scan.defined.add(args["name"])
        if module in ("ansible.builtin.add_host", "add_host") and isinstance(args, dict):
            scan.defined |= {k for k in args if k not in ("name", "hostname", "host", "groups", "group", "groupname")}
        scan.need(data_names(args, guarded), where, mine)
        if module in INCLUDE_TASKS:
            file = args if isinstance(args, str) else (args or {}).get("file")
            if isinstance(file, str) and "{{" not in file and (base / file).is_file():
                scan_tasks(scan, base / file, base, frozenset(mine | guarded))
        if module in INCLUDE_ROLE and isinstance(args, dict):
            scan_role(scan, args["name"], path.parent, args.get("tasks_from", "main"))


def header_extra_vars(path: Path) -> set[str]:
    """Extra vars the playbook's leading comment gives as required: `-e name=...` outside square brackets."""
    header = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("---"):
            continue
        if not line.startswith("#"):
            break
        header.append(line)
    text = " ".join(header)
    text = re.sub(r"\[[^\]]*\]", " ", text)  # optional ones
    return set(re.findall(r"(?:-e|--extra-vars)\s+([A-Za-z_][A-Za-z0-9_]*)=", text))


def awx_survey_vars() -> dict[str, set[str]]:
    """{playbook path: variables AWX passes} from awx/controller.yml (survey questions and job extra_vars)."""
    config = load(ROOT / "awx" / "controller.yml") or {}
    out: dict[str, set[str]] = {}
    for template in config.get("controller_templates") or []:
        names = {q.get("variable") for q in ((template.get("survey_spec") or {}).get("spec") or [])}
        extra = template.get("extra_vars") or {}
        out.setdefault(template.get("playbook", ""), set()).update(
            {n for n in names if n} | (set(extra) if isinstance(extra, dict) else set()))
    return out


def inventory_vars(inventory: Path, groups: set[str] | None) -> tuple[set[str], dict[str, set[str]]]:
    """(defined names, {name: where} needed by their values) of group_vars/host vars for `groups` (None: all)."""
    defined, needs = set(), {}
    hosts = load(inventory / "hosts.yml") or {}

    def walk_group(name, body):
        body = body or {}
        if groups is None or name in groups or name == "all":
            defined.update(body.get("vars") or {})
            for host in (body.get("hosts") or {}).values():
                defined.update(host or {})
        for child, child_body in (body.get("children") or {}).items():
            walk_group(child, child_body)

    for name, body in hosts.items():
        walk_group(name, body)
    for group_dir in sorted((inventory / "group_vars").iterdir()):
        group = group_dir.stem
        if groups is not None and group != "all" and group not in groups:
            continue
        files = sorted(group_dir.glob("*.yml")) if group_dir.is_dir() else [group_dir]
        for path in files:
            data = load(path) or {}
            defined |= set(data)
            for key, value in data.items():
                for name in data_names(value):
                    needs.setdefault(name, set()).add(f"{_rel(path)}: {key}")
    return defined, needs


def inventory_groups(inventory: Path) -> dict[str, set[str]]:
    """{group or host name: the groups it stands for} (a host stands for every group it is in)."""
    found: dict[str, set[str]] = {}

    def walk(name, body, parents):
        chain = (*parents, name)
        found.setdefault(name, set()).update(chain)
        for host in ((body or {}).get("hosts") or {}):
            found.setdefault(host, set()).update(chain)
        for child, child_body in ((body or {}).get("children") or {}).items():
            walk(child, child_body, chain)

    for name, body in (load(inventory / "hosts.yml") or {}).items():
        walk(name, body, ())
    return found


def unresolved(playbook: Path, inventory: Path = PRODUCTION, extra: set[str] = frozenset()) -> dict[str, set[str]]:
    """{variable: places referencing it} that nothing defines, for every play of `playbook` (import_playbook
    followed). Registers, set_facts and role defaults count for the whole playbook run (they persist across plays
    for the same host)."""
    known_groups = inventory_groups(inventory)
    survey = awx_survey_vars()
    plays = []

    def collect(path: Path):
        for play in load(path) or []:
            target = play.get("import_playbook") or play.get("ansible.builtin.import_playbook")
            if target:
                collect((path.parent / target).resolve())
            else:
                plays.append((path, play))

    collect(playbook.resolve())
    scan = Scan()
    scan.defined |= MAGIC | set(extra) | header_extra_vars(playbook)
    scan.defined |= survey.get(_rel(playbook), set())
    per_play = []
    for path, play in plays:
        hosts = str(play.get("hosts", ""))
        tokens = set(re.split(r"[:,&!\s]+", hosts)) - {""}
        if "{{" in hosts or "all" in tokens:
            groups = None
        else:
            groups = set().union(set(), *(known_groups.get(t, set()) for t in tokens))
        defined, needs = inventory_vars(inventory, groups)
        # Each play's references are checked against its own hosts' inventory: a role used in two plays is read
        # for each.
        scan.needs, scan.roles_seen, scan.files_seen = {}, set(), set()
        where = f"{_rel(path)}: play {play.get('name', '')}"
        play_vars = set(play.get("vars") or {})
        scan.defined |= play_vars
        scan.need(data_names(play.get("vars") or {}), where)
        scan.need(data_names({k: play.get(k) for k in ("hosts", "name", "serial", "max_fail_percentage")}), where)
        for vars_file in play.get("vars_files") or []:
            file = path.parent / vars_file
            if "{{" not in str(vars_file) and file.is_file():
                scan.defined |= set(load(file) or {})
        for entry in play.get("roles") or []:
            name = entry if isinstance(entry, str) else entry.get("role") or entry.get("name")
            if isinstance(entry, dict):
                scan.defined |= {k for k in entry if k not in ("role", "name", "when", "tags")}
                scan.defined |= set(entry.get("vars") or {})
                scan.need(data_names(entry.get("vars") or {}), where)
            scan_role(scan, name, path.parent)
        for section in ("pre_tasks", "tasks", "post_tasks", "handlers"):
            for task in play.get(section) or []:
                scan_task(scan, task, path, path.parent, frozenset())
        for name, places in scan.needs.items():
            needs.setdefault(name, set()).update(places)
        per_play.append((defined, needs))
    out: dict[str, set[str]] = {}
    for defined, needs in per_play:
        everything = scan.defined | defined  # registers and facts of any play count: they outlive their play
        for name, places in needs.items():
            if name not in everything and not name.startswith("ansible_"):
                out.setdefault(name, set()).update(places)
    return out


# ---------------------------------------------------------------- the playbooks AWX runs

def awx_playbooks() -> list[str]:
    config = load(ROOT / "awx" / "controller.yml") or {}
    return sorted({t["playbook"] for t in config.get("controller_templates") or [] if t.get("playbook")})


def all_playbooks() -> list[str]:
    return sorted(set(awx_playbooks()) | {_rel(p) for p in (ROOT / "playbooks").glob("*.yml")})


def test_awx_runs_only_playbooks_that_exist():
    missing = [p for p in awx_playbooks() if not (ROOT / p).is_file()]
    assert awx_playbooks() and not missing, missing


def test_every_playbook_passes_syntax_check_against_production():
    books = all_playbooks()
    run = subprocess.run([str(BIN / "ansible-playbook"), "-i", str(PRODUCTION), "--syntax-check", *books],
                         cwd=ROOT, capture_output=True, text=True, timeout=600,
                         env={"ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "PATH": f"{BIN}:/usr/bin:/bin",
                              "HOME": str(Path.home()), "ANSIBLE_NOCOLOR": "1"})
    if run.returncode == 0:
        return
    failing = []
    for book in books:  # name the playbooks that fail, each with its first error line
        one = subprocess.run([str(BIN / "ansible-playbook"), "-i", str(PRODUCTION), "--syntax-check", book],
                             cwd=ROOT, capture_output=True, text=True, timeout=300)
        if one.returncode:
            failing.append(f"{book}: {(one.stderr or one.stdout).strip().splitlines()[0]}")
    pytest.fail("syntax check against inventories/production fails:\n" + "\n".join(failing or [run.stderr]))


@pytest.mark.parametrize("playbook", all_playbooks())
def test_every_variable_resolves_against_production(playbook):
    missing = unresolved(ROOT / playbook)
    assert not missing, "undefined against inventories/production:\n" + "\n".join(
        f"  {name}: {', '.join(sorted(places))}" for name, places in sorted(missing.items()))


# ---------------------------------------------------------------- the resolver itself can fail

@pytest.fixture
def fixture_tree(tmp_path):
    """A playbook next to a role, against a tiny inventory, written per test."""
    (tmp_path / "inventory" / "group_vars" / "all").mkdir(parents=True)
    (tmp_path / "inventory" / "hosts.yml").write_text(
        "all:\n  children:\n    controller:\n      hosts:\n        localhost: {}\n")
    (tmp_path / "inventory" / "group_vars" / "all" / "x.yml").write_text("---\nin_inventory: 1\n")
    role = tmp_path / "roles" / "fixture_role"
    (role / "defaults").mkdir(parents=True)
    (role / "tasks").mkdir()
    (role / "defaults" / "main.yml").write_text("---\nfixture_role_setting: \"{{ in_inventory }}\"\n")
    (role / "tasks" / "main.yml").write_text(
        "---\n- name: Uses its default\n  ansible.builtin.debug:\n    msg: \"{{ fixture_role_setting }}\"\n")

    def write(body, header=""):
        path = tmp_path / "play.yml"
        path.write_text("---\n" + header + "- name: Fixture\n  hosts: controller\n  gather_facts: false\n" + body)
        return unresolved(path, tmp_path / "inventory")

    return write


def test_an_undefined_variable_is_caught(fixture_tree):
    missing = fixture_tree("  tasks:\n    - name: Reads a setting nobody defines\n      ansible.builtin.debug:\n"
                           "        msg: \"{{ nowhere_defined }} {{ in_inventory }}\"\n")
    assert set(missing) == {"nowhere_defined"}
    assert any("Reads a setting nobody defines" in p for p in missing["nowhere_defined"])


@pytest.mark.parametrize("expression", [
    "{{ optional | default('x') }}",
    "{{ optional.key | default(omit) }}",
    "{{ optional if optional is defined else 'x' }}",
    "{% if optional is defined %}{{ optional }}{% endif %}",
    "{{ optional is defined and optional | length > 0 }}",
    "{{ registered.stdout }} {{ fact_set }} {{ task_local }} {{ hostvars['localhost'].anything }}",
])
def test_guarded_registered_and_local_variables_are_accepted(fixture_tree, expression):
    body = ("  tasks:\n    - name: Register\n      ansible.builtin.command: \"true\"\n      register: registered\n"
            "      changed_when: false\n    - name: Set a fact\n      ansible.builtin.set_fact:\n"
            "        fact_set: 1\n    - name: Uses it\n      ansible.builtin.debug:\n"
            f"        msg: {expression!r}\n      vars:\n        task_local: 1\n")
    assert fixture_tree(body.replace("'{", '"{').replace("}'", '}"').replace("\\'", "'")) == {}


def test_a_when_guard_covers_the_task_and_a_role_default_counts(fixture_tree):
    body = ("  roles:\n    - role: fixture_role\n  tasks:\n    - name: Guarded by its when\n"
            "      ansible.builtin.debug:\n        msg: \"{{ optional }} {{ fixture_role_setting }}\"\n"
            "      when: optional is defined\n")
    assert fixture_tree(body) == {}


def test_documented_required_extra_vars_count_and_optional_ones_do_not(fixture_tree):
    body = ("  tasks:\n    - name: Reads extra vars\n      ansible.builtin.debug:\n"
            "        msg: \"{{ folio }} {{ optional_extra }}\"\n")
    header = "# ansible-playbook play.yml -e folio=DGTIC-X-2026-000001 [-e optional_extra=1]\n"
    assert set(fixture_tree(body, header)) == {"optional_extra"}


def test_a_role_default_referencing_an_undefined_variable_is_caught(fixture_tree, tmp_path):
    (tmp_path / "roles" / "fixture_role" / "defaults" / "main.yml").write_text(
        "---\nfixture_role_setting: \"{{ lab_only_setting }}\"\n")
    missing = fixture_tree("  roles:\n    - role: fixture_role\n")
    assert set(missing) == {"lab_only_setting"}
    assert any("defaults/main.yml: fixture_role_setting" in p for p in missing["lab_only_setting"])


# ---------------------------------------------------------------- the roles' own validation, against production

def _play(tmp_path, body: str, *extra: str) -> subprocess.CompletedProcess:
    play = tmp_path / "play.yml"
    play.write_text("---\n- name: Fixture\n  hosts: controller\n  gather_facts: false\n" + body)
    return subprocess.run([str(BIN / "ansible-playbook"), "-i", str(PRODUCTION), str(play), *extra], cwd=ROOT,
                          capture_output=True, text=True, timeout=300,
                          env={"ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "PATH": f"{BIN}:/usr/bin:/bin",
                               "HOME": str(Path.home()), "ANSIBLE_NOCOLOR": "1"})


def test_production_procedure_settings_pass_the_procedure_roles_validation(tmp_path):
    run = _play(tmp_path, "  tasks:\n    - name: Validate\n      ansible.builtin.import_role:\n"
                          "        name: procedure\n        tasks_from: mail\n")
    assert run.returncode == 0, run.stdout + run.stderr


def test_a_catalog_naming_a_provider_the_registry_lacks_is_refused_naming_it(tmp_path):
    run = _play(tmp_path, "  tasks:\n    - name: Validate\n      ansible.builtin.import_role:\n"
                          "        name: procedure\n        tasks_from: mail\n",
                "-e", '{"procedure_catalog": {"Sistema": ["ine"]}}')
    out = " ".join((run.stdout + run.stderr).split())
    assert run.returncode != 0 and "unknown: ine" in out and "procedure_catalog" in out, out


def test_production_padron_batch_stops_at_once_saying_which_setting_to_set(tmp_path):
    run = _play(tmp_path, "  roles:\n    - role: padron_consulta\n")
    out = " ".join((run.stdout + run.stderr).split())
    assert run.returncode != 0 and "padron_consulta_endpoint" in out and "group_vars/all/padron.yml" in out, out
    assert "Consult every CURP" not in out  # nothing was attempted
