"""Helpers shared by the integration tests: the lab's slot, and running Ansible as an operator would."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "lab"))

# The tests get their own lab slot (addresses 127.0.N.x, own ports and state), so a demo lab can stay up meanwhile.
# Under pytest-xdist each worker gets a slot of its own from LAB_TEST_SLOTS (gw0 the first, gw1 the second...), so
# two workers never share hosts, simulators or a ticket store; a single process keeps LAB_SLOT (default 1).
DEFAULT_TEST_SLOTS = "1,2"


def worker_slot(environ=os.environ) -> str:
    worker = environ.get("PYTEST_XDIST_WORKER", "")
    if not worker:
        return environ.get("LAB_SLOT", "1")
    slots = [s.strip() for s in environ.get("LAB_TEST_SLOTS", DEFAULT_TEST_SLOTS).split(",") if s.strip()]
    n = int(worker.removeprefix("gw"))
    if n >= len(slots):
        raise RuntimeError(f"xdist worker {worker} has no lab slot: LAB_TEST_SLOTS={','.join(slots)} names "
                           f"{len(slots)}; run with -n {len(slots)} or name more slots")
    return slots[n]


# Set in the environment, not only here: labctl reads it at import and the CLI the tests run inherits it.
os.environ["LAB_SLOT"] = worker_slot()

import labctl  # noqa: E402

LAB_HOSTS = int(os.environ.get("LAB_TEST_HOSTS", "3"))


class _Lab:
    """What this process knows of its slot since the last reset: `touched` when any test ran on it, `changed` when a
    test that changes things (fresh_lab) ran. Tests that take `lab` promise to leave it as they found it."""
    touched = True
    changed = True


def running() -> bool:
    """Every part of the slot's lab answers (simulators, mail host, each host's sshd and nginx)."""
    rows = labctl.status()
    return sum(r["name"].startswith("consulta-") for r in rows) == LAB_HOSTS and all(r["up"] for r in rows)


def reset() -> None:
    """Day zero: the slot wiped and started again (RENAPO gen1, hosts trusting only it), the registry seeded."""
    labctl.up(LAB_HOSTS, fresh=True)
    seed_registry()
    _Lab.touched = _Lab.changed = False


def ensure_day_zero(for_change: bool) -> None:
    """Before a test: a test that changes things gets a lab no test has used since its reset; a test that only
    reads gets one no test has changed. Either way a lab that is not fully up (a test stopped it) is reset."""
    if (_Lab.touched if for_change else _Lab.changed) or not running():
        reset()


def mark_used(changed: bool) -> None:
    _Lab.touched = True
    _Lab.changed = _Lab.changed or changed


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

    from tests.providers import lab_providers

    (labctl.STATE / "procedure").mkdir(parents=True, exist_ok=True)
    # With the lab's registry, as anchor.yml passes procedure_providers: the store registers the providers it knows.
    with open_store(str(labctl.STATE / "procedure" / "tickets.db"), providers=lab_providers()) as store:
        if not store.anchors("renapo"):
            store.anchor_seed("renapo", [labctl.pki.ensure(labctl.STATE)["renapo_anchor"].read_text()],
                              actor="lab.seed", reason="lab day zero: the anchor the hosts were built with")
