"""Helpers shared by the integration tests: the lab's slot, and running Ansible as an operator would."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "lab"))
# The tests get their own lab slot (addresses 127.0.1.x, own ports and state), so a demo lab can stay up meanwhile.
os.environ.setdefault("LAB_SLOT", "1")

import labctl  # noqa: E402

LAB_HOSTS = int(os.environ.get("LAB_TEST_HOSTS", "3"))
def ansible_env() -> dict:
    env = dict(os.environ)
    env.update(ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_INVENTORY=str(labctl.INVENTORY),
               ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0",
               PATH=f"{ROOT / '.venv' / 'bin'}:{env.get('PATH', '')}")
    return env


def run(cmd: list[str], check: bool = True, timeout: int = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """Runs a command from the project root with the project's Ansible settings; output kept for assertions."""
    p = subprocess.run(cmd, cwd=ROOT, env=env or ansible_env(), capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {p.returncode}\n"
                             f"STDOUT:\n{p.stdout[-4000:]}\nSTDERR:\n{p.stderr[-4000:]}")
    return p


def seed_registry() -> None:
    """Day zero of the anchor registry, as an operator's one-time seed would leave it: RENAPO's gen1 anchor approved
    (playbooks/anchor.yml -e op=seed is tested on its own in test_trust.py)."""
    from ansible.module_utils.ticket_store import open_store

    (labctl.STATE / "procedure").mkdir(parents=True, exist_ok=True)
    with open_store(str(labctl.STATE / "procedure" / "tickets.db")) as store:
        if not store.anchors("renapo"):
            store.anchor_seed("renapo", [labctl.pki.ensure(labctl.STATE)["renapo_anchor"].read_text()],
                              actor="lab.seed", reason="lab day zero: the anchor the hosts were built with")
