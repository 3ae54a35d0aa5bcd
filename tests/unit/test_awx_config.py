"""awx/controller.yml cross-checked against the project: every playbook, survey variable, credential, injected
variable and workflow node it names exists, and no secret sits in it."""
from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from ansible.module_utils.providers import Registry

from tests.providers import THIRD_PROVIDER, lab_providers

ROOT = Path(__file__).resolve().parents[2]
# Credential types AWX ships; everything else must be defined in the file.
BUILTIN_CREDENTIAL_TYPES = {"Machine", "Source Control", "Red Hat Ansible Automation Platform"}
# Inputs of the built-in types that hold secrets.
BUILTIN_SECRETS = {"password", "ssh_key_data", "ssh_key_unlock", "become_password", "oauth_token"}


class _Loader(yaml.SafeLoader):
    """YAML as Ansible reads it: `!unsafe` marks a string Ansible does not template."""


_Loader.add_constructor("!unsafe", lambda loader, node: loader.construct_scalar(node))
CONFIG = yaml.load((ROOT / "awx" / "controller.yml").read_text(encoding="utf-8"), Loader=_Loader)  # noqa: S506
TEMPLATES = [CONFIG["controller_template_defaults"] | t for t in CONFIG["controller_templates"]]
CREDENTIAL_TYPES = {t["name"]: t for t in CONFIG["controller_credential_types"]}
CREDENTIALS = {c["name"]: c for c in CONFIG["controller_credentials"]}


def rendered_templates(tmp_path: Path, providers: dict) -> list[dict]:
    """The job templates as awx/configure.yml hands them to awx.awx: controller.yml with configure.yml's play vars
    (the survey choices derived from the provider registry), rendered by ansible-playbook itself."""
    [play] = yaml.safe_load((ROOT / "awx" / "configure.yml").read_text(encoding="utf-8"))
    out = tmp_path / "templates.json"
    playbook = [{"hosts": "localhost", "connection": "local", "gather_facts": False,
                 "vars_files": [str(ROOT / "awx" / "controller.yml")], "vars": play["vars"],
                 "tasks": [{"ansible.builtin.copy": {"content": "{{ controller_templates | to_json }}",
                                                     "dest": str(out), "mode": "0600"}}]}]
    (tmp_path / "render.yml").write_text(yaml.safe_dump(playbook), encoding="utf-8")
    (tmp_path / "extra.json").write_text(json.dumps({"procedure_providers": providers}), encoding="utf-8")
    p = subprocess.run([str(ROOT / ".venv" / "bin" / "ansible-playbook"), "-i", str(ROOT / "inventories" / "lab"),
                        "-e", f"@{tmp_path / 'extra.json'}", str(tmp_path / "render.yml")],
                       capture_output=True, text=True, cwd=ROOT,
                       env=dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg")), timeout=120)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    return [CONFIG["controller_template_defaults"] | t for t in json.loads(out.read_text(encoding="utf-8"))]


def names(key):
    return {item["name"] for item in CONFIG[key]}


def playbook_text(path: Path) -> str:
    """The playbook with every playbook it imports, as text."""
    text = path.read_text(encoding="utf-8")
    for imported in re.findall(r"import_playbook:\s*(\S+)", text):
        text += playbook_text(path.parent / imported)
    return text


@pytest.mark.parametrize("template", TEMPLATES, ids=lambda t: t["playbook"])
def test_every_job_template_runs_a_playbook_of_the_project_with_its_survey_variables(template):
    playbook = ROOT / template["playbook"]
    assert playbook.is_file(), f"{template['name']}: {template['playbook']} is not in the project"
    text = playbook_text(playbook)
    for question in template.get("survey_spec", {}).get("spec", []):
        assert re.search(rf"\b{question['variable']}\b", text), (
            f"{template['name']}: survey variable {question['variable']} is not used by {template['playbook']}")
    assert template["project"] in names("controller_projects")
    assert template["inventory"] in names("controller_inventories")
    assert template["execution_environment"] in names("controller_execution_environments")
    assert set(template.get("credentials", [])) <= set(CREDENTIALS)
    assert template["survey_enabled"] == bool(template.get("survey_spec")) if "survey_enabled" in template else True


def test_the_objects_the_issue_asks_for_are_there():
    playbooks = {t["playbook"] for t in TEMPLATES}
    assert {"playbooks/intake.yml", "playbooks/renew.yml", "playbooks/rollback.yml", "playbooks/padron_consulta.yml",
            "playbooks/kpi_report.yml", "playbooks/expiry_scan.yml"} <= playbooks
    sliced = [t for t in TEMPLATES if t.get("job_slice_count", 1) > 1]
    assert [t["playbook"] for t in sliced] == ["playbooks/rollout_ticket.yml"]


def test_controller_yml_lists_no_provider():
    """Survey choices come from the registry: controller.yml names no provider of the inventory."""
    text = (ROOT / "awx" / "controller.yml").read_text(encoding="utf-8")
    for question in (q for t in TEMPLATES for q in t.get("survey_spec", {}).get("spec", [])):
        templated = {"choices", "default"} if question["type"] == "multiplechoice" else set()
        templated |= {"min", "max"} if question["variable"] == "folio" else set()
        for key in templated:
            value = question.get(key)
            assert value == "" or "{{" in str(value), f"{question['variable']}.{key} is written out: {value!r}"
    assert not re.search(r"choices:\s*\[[^\]]*\b(renapo|sat)\b", text)


@pytest.mark.parametrize("providers", [lab_providers(), lab_providers(**THIRD_PROVIDER)], ids=["lab", "third"])
def test_surveys_offer_the_registry_providers_and_accept_its_folios(tmp_path, providers):
    registry = Registry(providers)
    templates = rendered_templates(tmp_path, providers)
    questions = [q for t in templates for q in t.get("survey_spec", {}).get("spec", [])]
    choices = [q for q in questions if q["type"] == "multiplechoice"]
    assert choices, "no survey asks for a provider"
    for question in choices:
        assert [c for c in question["choices"] if c] == list(registry.names())
        assert question["default"] in question["choices"]
    folios = [q for q in questions if q["variable"] == "folio"]
    assert len(folios) == 2
    lengths = [len(registry.get(name).folio(2026, 1)) for name in registry.names()]
    for question in folios:
        assert question["required"] and (question["min"], question["max"]) == (min(lengths), max(lengths))


def test_the_launch_hook_and_the_renew_template_agree_on_its_name():
    [renew] = [t for t in TEMPLATES if t["playbook"] == "playbooks/renew.yml"]
    module = (ROOT / "library" / "mail_intake.py").read_text(encoding="utf-8")
    assert f'awx_renew_template=dict(type="str", default="{renew["name"]}")' in module
    # The intake template carries the launch credential, whose URL and token file the module reads.
    [intake] = [t for t in TEMPLATES if t["playbook"] == "playbooks/intake.yml"]
    [launch] = [CREDENTIAL_TYPES[CREDENTIALS[c]["credential_type"]] for c in intake["credentials"]
                if "token" in CREDENTIALS[c]["credential_type"]]
    assert {"CONTROLLER_HOST", "RENEWAL_AWX_TOKEN_FILE"} <= set(launch["injectors"]["env"])


def test_workflows_link_existing_templates_and_intake_hands_over_the_folio():
    templates = {t["name"] for t in TEMPLATES}
    for workflow in CONFIG["controller_workflows"]:
        nodes = {n["identifier"]: n for n in workflow["workflow_nodes"]}
        for node in nodes.values():
            assert node["unified_job_template"]["name"] in templates
            for nxt in node.get("related", {}).get("success_nodes", []):
                assert nxt["identifier"] in nodes
    intake = (ROOT / "playbooks" / "intake.yml").read_text(encoding="utf-8")
    assert re.search(r"set_stats:\s*\n\s*data:\s*\n\s*folio:", intake)


@pytest.mark.parametrize("ctype", CONFIG["controller_credential_types"], ids=lambda t: t["name"])
def test_credential_types_inject_files_and_env_only_and_every_variable_is_consumed(ctype):
    fields = {f["id"]: f for f in ctype["inputs"]["fields"]}
    assert set(ctype["injectors"]) <= {"env", "file"}, "secrets never go to extra_vars"
    files = {key.split(".", 1)[1] for key in ctype["injectors"].get("file", {})}
    consumers = "".join(p.read_text(encoding="utf-8") for p in [
        *(ROOT / "playbooks").rglob("*.yml"), *(ROOT / "roles").rglob("*.yml"), *(ROOT / "inventories").rglob("*.yml"),
        ROOT / "library" / "mail_intake.py",
        ROOT / "docs" / "awx.md"])
    secrets = {fid for fid, f in fields.items() if f.get("secret")}
    for injector in ctype["injectors"].values():
        for name, template in injector.items():
            for ref in re.findall(r"\{\{\s*([\w.]+)\s*\}\}", template):
                if ref.startswith("tower.filename."):
                    assert ref.split(".")[-1] in files, f"{name}: no file injector {ref}"
                else:
                    assert ref in fields, f"{name}: {ref} is not an input of {ctype['name']}"
    for env, template in ctype["injectors"].get("env", {}).items():
        # A secret goes to a file; the environment (recorded by ansible-runner) only names the file.
        assert not secrets & set(re.findall(r"\{\{\s*(\w+)\s*\}\}", template)), f"{env} carries a secret"
        # libpq reads PGPASSFILE itself; every other variable must be read by the project.
        assert env == "PGPASSFILE" or re.search(rf"[\"']{env}[\"']", consumers), f"nothing reads {env}"
    for credential in CREDENTIALS.values():
        if credential["credential_type"] == ctype["name"]:
            assert not secrets & set(credential["inputs"]), f"{credential['name']} holds a secret"


def test_credentials_are_placeholders_of_known_types():
    for credential in CREDENTIALS.values():
        assert credential["credential_type"] in BUILTIN_CREDENTIAL_TYPES | set(CREDENTIAL_TYPES)
        assert not BUILTIN_SECRETS & set(credential["inputs"]), f"{credential['name']} holds a secret"
    project = CONFIG["controller_projects"][0]
    assert project["credential"] in CREDENTIALS and project["default_environment"] in names(
        "controller_execution_environments")


def test_the_configuration_playbook_applies_every_kind_of_object():
    tasks = (ROOT / "awx" / "tasks" / "objects.yml").read_text(encoding="utf-8")
    for key, module in [("controller_organizations", "organization"),
                        ("controller_execution_environments", "execution_environment"),
                        ("controller_credential_types", "credential_type"), ("controller_credentials", "credential"),
                        ("controller_projects", "project"), ("controller_inventories", "inventory"),
                        ("controller_inventory_sources", "inventory_source"),
                        ("controller_templates", "job_template"), ("controller_workflows", "workflow_job_template")]:
        assert re.search(rf"awx\.awx\.{module}:\n(?:.*\n)+?\s+loop: \"\{{\{{ {key} \}}\}}\"", tasks), key


def test_the_inventory_source_is_a_file_of_the_project():
    for source in CONFIG["controller_inventory_sources"]:
        assert (ROOT / source["source_path"]).is_file()


def test_awx_collection_is_the_pinned_one_and_configure_yml_checks_against_it():
    """requirements.yml pins awx.awx; bootstrap put exactly that version in .collections (ansible.cfg
    collections_path); configure.yml and its tasks pass ansible-playbook's syntax check with it, no mock."""
    [pin] = [c for c in yaml.safe_load((ROOT / "requirements.yml").read_text(encoding="utf-8"))["collections"]
             if c["name"] == "awx.awx"]
    manifest = ROOT / ".collections" / "ansible_collections" / "awx" / "awx" / "MANIFEST.json"
    assert manifest.is_file(), "awx.awx is not installed: run `make bootstrap`"
    assert json.loads(manifest.read_text(encoding="utf-8"))["collection_info"]["version"] == str(pin["version"])
    assert not (ROOT / "awx" / "requirements.yml").exists(), "one list of collections: the top-level requirements.yml"
    assert "mock_modules" not in (ROOT / ".ansible-lint").read_text(encoding="utf-8")
    p = subprocess.run([str(ROOT / ".venv" / "bin" / "ansible-playbook"), "--syntax-check", "-i",
                        str(ROOT / "inventories" / "production"), str(ROOT / "awx" / "configure.yml")],
                       capture_output=True, text=True, cwd=ROOT,
                       env=dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg")), timeout=120)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    docs = subprocess.run([str(ROOT / ".venv" / "bin" / "ansible-doc"), "awx.awx.job_template"],
                          capture_output=True, text=True, cwd=ROOT,
                          env=dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg")), timeout=120)
    assert docs.returncode == 0 and "survey_spec" in docs.stdout
