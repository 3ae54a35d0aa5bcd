"""The execution environment: `ansible-builder create` writes a build context that holds the project's pins.

No image is built here (no container engine); the builder's own introspection script, which the build runs in
its builder stage, is run on the generated context instead.
"""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
BIN = ROOT / ".venv" / "bin"
# Needed only by the lab, the tests, the gates or to build the image itself: never inside the image.
NOT_IN_IMAGE = {"aiosmtpd", "pytest", "pytest-timeout", "zeep", "molecule", "ansible-lint", "ruff", "ansible-builder",
                "pytest-xdist", "execnet"}
# The builder installs these two itself (dependencies.ansible_core / ansible_runner).
BUILDER_MANAGED = {"ansible-core", "ansible-runner"}


def pins(lines) -> dict[str, str]:
    """{normalised name: version} of every `name==version` line (comments and blanks ignored)."""
    out = {}
    for line in lines:
        m = re.match(r"\s*([A-Za-z0-9_.-]+)\s*==\s*([^\s#;]+)", line)
        if m:
            out[m[1].lower().replace("_", "-")] = m[2]
    return out


@pytest.fixture(scope="module")
def context(tmp_path_factory) -> Path:
    ctx = tmp_path_factory.mktemp("ee-context")
    p = subprocess.run([str(BIN / "ansible-builder"), "create", "--file", "execution-environment.yml",
                        "--context", str(ctx), "--output-filename", "Containerfile"],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    return ctx


def test_context_has_a_containerfile_on_the_pinned_base_with_python_311(context):
    containerfile = (context / "Containerfile").read_text()
    definition = yaml.safe_load((ROOT / "execution-environment.yml").read_text())
    assert definition["version"] == 3
    assert f'ARG EE_BASE_IMAGE="{definition["images"]["base_image"]["name"]}"' in containerfile
    assert 'ARG PYCMD="/usr/bin/python3.11"' in containerfile
    assert "COPY _build/requirements.txt requirements.txt" in containerfile
    assert "COPY _build/bindep.txt bindep.txt" in containerfile
    assert "LABEL ansible-execution-environment=true" in containerfile


def test_ansible_core_and_runner_are_the_project_pins(context):
    project = pins((ROOT / "requirements.txt").read_text().splitlines())
    refs = re.search(r'ARG ANSIBLE_INSTALL_REFS="([^"]*)"', (context / "Containerfile").read_text())[1]
    assert pins(refs.split()) == {name: project[name] for name in BUILDER_MANAGED}


def test_python_requirements_are_the_runtime_pins_of_requirements_txt(context):
    project = pins((ROOT / "requirements.txt").read_text().splitlines())
    image = pins((context / "_build" / "requirements.txt").read_text().splitlines())
    runtime = {name: version for name, version in project.items() if name not in NOT_IN_IMAGE | BUILDER_MANAGED}
    assert image == runtime
    # and every one agrees with the full pinned set the venv is built from
    constraints = pins((ROOT / "constraints.txt").read_text().splitlines())
    assert {name: constraints[name] for name in image} == image


def test_system_dependencies_pass_the_builders_own_introspection(context, tmp_path):
    bindep = (context / "_build" / "bindep.txt").read_text()
    assert "openssh-clients [platform:rpm]" in bindep
    p = subprocess.run([str(BIN / "python"), str(context / "_build" / "scripts" / "introspect.py"), "introspect",
                        f"--user-pip={context / '_build' / 'requirements.txt'}",
                        f"--user-bindep={context / '_build' / 'bindep.txt'}",
                        f"--write-pip={tmp_path / 'pip.txt'}", f"--write-bindep={tmp_path / 'bindep.txt'}"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    found = yaml.safe_load(p.stdout)
    assert [s.split("  #")[0] for s in found["system"]] == [
        ln for ln in bindep.splitlines() if ln.strip() and not ln.startswith("#")]
