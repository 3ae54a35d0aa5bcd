"""The README's operator's guide, walked command by command on a lab slot with plain `ansible-playbook`: each shell
block marked `<!-- operator-guide -->` runs in order (one shell's variables carried from block to block, as an operator
types them in one terminal) and every `# prints: …` line of the block must appear in what it printed. The commands
come from the README itself, so the README cannot drift from the product.

    LAB_SLOT=9 .venv/bin/python -m pytest tests/integration/test_operator_guide.py -q
"""
from __future__ import annotations

import os
import re
import subprocess

import pytest
from labtools import LAB_HOSTS, ROOT, labctl

SECTION = "## Running the procedure by hand (operator's guide)"
MARK = "<!-- operator-guide -->"


def guide_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    section = text[start:end if end != -1 else None]
    return re.findall(re.escape(MARK) + r"\s*```sh\n(.*?)```", section, flags=re.S)


def expected(block: str) -> list[str]:
    return [m.strip() for m in re.findall(r"^# prints: (.*)$", block, flags=re.M)]


@pytest.fixture(scope="module")
def shell(tmp_path_factory):
    """Runs one block as the next command typed in the same terminal: the variables the blocks set (the exported
    inventory, PATH, FOLIO...) carry over; the environment is an operator's, with no inventory preset."""
    state = tmp_path_factory.mktemp("guide") / "shell-state.sh"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env.update(ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0", HOSTS=str(LAB_HOSTS), LAB_SLOT=str(labctl.SLOT))

    def run(block: str) -> subprocess.CompletedProcess:
        script = (f"set -eo pipefail\n[ -f {state} ] && source {state}\n{block}\n"
                  f"{{ export -p; declare -p | grep -E '^declare -- [A-Z][A-Z0-9_]*=' | grep -v '^declare -- BASH'; }}"
                  f" > {state}\n")
        return subprocess.run(["bash", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=600)

    yield run
    labctl.down(quiet=True)


def test_the_guide_has_every_step():
    blocks = "\n".join(guide_blocks())
    for step in ("labctl.py env", "mailhost.py send", "intake.yml", "ticket.yml", "[Ticket #", "labctl.py publish",
                 "-e channel=telefono", "renew.yml", "check.yml", "rollback.yml", "expiry_scan.yml",
                 "padron_consulta.yml", "kpi_report.yml", "board.yml"):
        assert step in blocks, step
    for label in ("Solicitante:", "Correo:", "Unidad Administrativa:", "Sistema:", "Servicio:", "Turnado por:",
                  "Cargo:"):
        assert label in blocks, label


def test_walk_the_operator_guide_on_a_lab_slot(shell):
    assert labctl.SLOT != 0, "run it on a lab slot of its own: LAB_SLOT=9"
    blocks = guide_blocks()
    assert len(blocks) >= 10
    for i, block in enumerate(blocks):
        p = shell(block)
        out = p.stdout + p.stderr
        first = block.strip().splitlines()[0]
        assert p.returncode == 0, f"block {i} ({first}) exited {p.returncode}:\n{out[-4000:]}"
        for text in expected(block):
            assert text in out, f"block {i} ({first}) did not print {text!r}:\n{out[-4000:]}"
    # The slot's own inventory was used, with plain ansible-playbook.
    assert (labctl.STATE / "procedure" / "tickets.db").exists()


def test_a_missing_lab_says_to_start_it_or_export_the_slot(shell):
    """The lab down (or another slot's inventory): the playbook says what to do at its first task."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env.update(ANSIBLE_NOCOLOR="1", LAB_SLOT=str(labctl.SLOT), ANSIBLE_INVENTORY="inventories/lab/controller.yml")
    p = subprocess.run([str(ROOT / ".venv" / "bin" / "ansible-playbook"), "playbooks/intake.yml"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode != 0
    assert "make lab-up" in p.stdout and "export ANSIBLE_INVENTORY=.lab-N/inventory" in p.stdout, p.stdout[-2000:]
    env["ANSIBLE_INVENTORY"] = "inventories/lab"  # slot 0's inventory while LAB_SLOT names another slot
    p = subprocess.run([str(ROOT / ".venv" / "bin" / "ansible-playbook"), "playbooks/ticket.yml", "-e", "ticket=1"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode != 0
    assert f"ANSIBLE_INVENTORY=.lab-{labctl.SLOT}/inventory" in p.stdout or "make lab-up" in p.stdout, p.stdout[-2000:]
    out = subprocess.run([str(ROOT / ".venv" / "bin" / "python"), "lab/labctl.py", "env"], cwd=ROOT, env=env,
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == f"export ANSIBLE_INVENTORY=.lab-{labctl.SLOT}/inventory"
