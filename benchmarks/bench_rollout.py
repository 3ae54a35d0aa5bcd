"""Rollout wall time on N lab hosts, side by side with the floor (issue 4, performance).

    python benchmarks/bench_rollout.py [--hosts 5] [--runs 1] [--profile]

(a) the full rollout of RENAPO's published renewal (fresh lab: every host trusts only G1, serial [1, "50%"]),
(b) the idempotent rerun (nothing to do, changed=0 asserted),
(c) the floor: `ansible -m ping` plus one `ansible.builtin.copy` of the bundle to the same hosts.
All three run with warm ssh control masters, one after the other in one lab. Prints a/c and b/c (targets at 20 hosts:
a/c <= 1.5, b/c <= 1.0), the absolute seconds, and with --profile the wall time per task from the junit callback.
Runs on the lab slot in LAB_SLOT (default 3, the molecule/benchmark slot); leaves that lab down. (b) takes no fleet
lock: the plan finds nothing to change.
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("LAB_SLOT", "3")
sys.path.insert(0, str(ROOT / "lab"))
sys.path.insert(0, str(ROOT))

# isort: off
import conftest  # noqa: E402,F401  (first: makes ansible.module_utils.<project module> importable)
import labctl  # noqa: E402
from ansible.module_utils.ticket_store import open_store  # noqa: E402

sys.path.insert(0, str(ROOT / "tests"))
from providers import lab_providers  # noqa: E402  (tests/providers.py: the lab inventory's provider registry)
# isort: on

BIN = ROOT / ".venv" / "bin"
FLOOR_DEST = "/etc/consulta/bench-floor.pem"  # per-host tree (bind-mounted), never read by nginx


def ansible(args: list[str], junit_dir: Path | None = None) -> tuple[float, str]:
    """Runs one ansible command from the project root against the lab; returns (wall seconds, stdout)."""
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_INVENTORY=str(labctl.INVENTORY),
               ANSIBLE_NOCOLOR="1", PATH=f"{BIN}:{os.environ.get('PATH', '')}")
    if junit_dir:
        env.update(ANSIBLE_CALLBACKS_ENABLED="junit", JUNIT_OUTPUT_DIR=str(junit_dir), JUNIT_HIDE_TASK_ARGUMENTS="true")
    t0 = time.perf_counter()
    p = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"bench_rollout: {' '.join(args)} exited {p.returncode}\n"
                         f"{p.stdout[-3000:]}\n{p.stderr[-2000:]}")
    return wall, p.stdout


def published_delivery() -> tuple[Path, str, str]:
    """RENAPO publishes its renewal: the certificate it mails, the fingerprint its letter states, the new anchor,
    approved in the lab's registry (seeded with G1) on an operator's recorded confirmation, as an operator would."""
    pub = labctl.pki.publish(labctl.STATE)
    outbox = Path(pub["outbox"])
    fp = re.search(r"(?:[0-9A-F]{2}:){31}[0-9A-F]{2}", (outbox / "oficio.txt").read_text(errors="replace")).group(0)
    (labctl.STATE / "procedure").mkdir(parents=True, exist_ok=True)
    with open_store(str(labctl.STATE / "procedure" / "tickets.db"), providers=lab_providers()) as store:
        store.anchor_seed("renapo", [Path(labctl.pki.ensure(labctl.STATE)["renapo_anchor"]).read_text()],
                          actor="bench", reason="lab day zero")
        store.anchor_record("renapo", Path(pub["anchor"]).read_text(), actor="bench")
        store.anchor_add_evidence("renapo", fp, "operator", "confirmada por teléfono (benchmark)", actor="bench")
        store.anchor_approve("renapo", fp, actor="bench", policy={"accept": ["operator"], "operators": 1})
    return outbox / f"renapo_ws_{pub['generation']}.pem", fp, Path(pub["anchor"]).read_text()


def batches(hosts: list[str]) -> list[list[str]]:
    """The rollout's batches for serial [1, "50%"]: the canary, then half the fleet at a time."""
    size = max(1, int(len(hosts) * 0.5))
    return [hosts[:1]] + [hosts[i:i + size] for i in range(1, len(hosts), size)]


def task_walls(junit_dir: Path, hosts: list[str]) -> list[tuple[str, float, int]]:
    """Wall seconds per task: per batch the slowest host (hosts of a batch run a task in parallel), summed."""
    per = defaultdict(dict)  # task -> host -> seconds
    order, includes = [], set()
    for xml in junit_dir.glob("*.xml"):
        for case in ET.parse(xml).getroot().iter("testcase"):  # noqa: S314 - our own callback's report
            m = re.match(r"\[(\S+)\] (.*)", case.get("name", ""))
            if not m:
                continue
            host, task = m.groups()
            if host == "include":  # an include spans its own tasks, which are counted on their own
                includes.add(task)
                continue
            if task not in per:
                order.append(task)
            per[task][host] = per[task].get(host, 0.0) + float(case.get("time", 0))
    rows = []
    for task in (t for t in order if t not in includes):
        times = per[task]
        if len(times) == len(hosts) and not task.startswith("Roll out"):
            groups = [hosts]  # an unbatched play (validation): all hosts at once
        else:
            groups = batches(hosts)
        wall = sum(max((times.get(h, 0.0) for h in g), default=0.0) for g in groups)
        rows.append((task, wall, len(times)))
    return rows


def one_run(n: int, profile: bool, tmp: Path) -> dict:
    labctl.up(n, fresh=True)
    cert, fp, new_anchor = published_delivery()
    bundle = tmp / "bundle.pem"
    bundle.write_text(Path(labctl.pki.ensure(labctl.STATE)["renapo_anchor"]).read_text() + new_anchor)
    adhoc = [str(BIN / "ansible"), "consulta_hosts"]
    ansible(adhoc + ["-m", "ansible.builtin.ping"])  # warm-up: every measurement below reuses the ssh masters
    ping, _ = ansible(adhoc + ["-m", "ansible.builtin.ping"])
    copy, _ = ansible(adhoc + ["-m", "ansible.builtin.copy", "-a", f"src={bundle} dest={FLOOR_DEST} mode=0644"])
    ansible(adhoc + ["-m", "ansible.builtin.file", "-a", f"path={FLOOR_DEST} state=absent"])
    rollout = [str(BIN / "ansible-playbook"), "playbooks/rollout.yml", "-e", "service=renapo",
               "-e", f"rollout_certificate={cert}", "-e", f"rollout_expected_fingerprint={fp}"]
    a, _ = ansible(rollout, tmp / "junit-a" if profile else None)
    b, out = ansible(rollout, tmp / "junit-b" if profile else None)
    changed = [int(c) for c in re.findall(r"changed=(\d+)", out)]
    if len(changed) != n or any(changed):
        raise SystemExit(f"bench_rollout: the rerun was not a no-op (changed per host: {changed})")
    return {"a": a, "b": b, "ping": ping, "copy": copy, "c": ping + copy}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hosts", type=int, default=5, help="lab hosts (default 5; the targets are stated at 20)")
    ap.add_argument("--runs", type=int, default=1, help="fresh-lab runs; medians are printed (default 1)")
    ap.add_argument("--profile", action="store_true", help="wall time per task of (a) and (b), junit callback")
    args = ap.parse_args()
    if not 1 <= args.hosts <= 50:
        ap.error(f"--hosts must be between 1 and 50, not {args.hosts}")
    hosts = [labctl.host_name(i) for i in range(1, args.hosts + 1)]
    runs = []
    try:
        for r in range(args.runs):
            with tempfile.TemporaryDirectory() as tmp:
                runs.append(one_run(args.hosts, args.profile and r == args.runs - 1, Path(tmp)))
                if args.profile and r == args.runs - 1:
                    for label in ("a", "b"):
                        rows = task_walls(Path(tmp) / f"junit-{label}", hosts)
                        total = sum(w for _, w, _ in rows)
                        print(f"\nper-task wall time of ({label}), slowest first (sum {total:.2f}s of "
                              f"{runs[-1][label]:.2f}s; the rest is startup, parsing, includes, batching):")
                        for task, wall, count in sorted(rows, key=lambda x: -x[1])[:15]:
                            print(f"  {wall:6.2f}s  x{count:<3} {task[:100]}")
    finally:
        labctl.down()
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    print(f"\nrollout on {args.hosts} lab hosts (slot {labctl.SLOT}), median of {len(runs)} run(s), warm ssh masters:")
    print(f"  (a) full rollout      {med['a']:6.2f}s   a/c = {med['a'] / med['c']:.2f}   (target at 20 hosts <= 1.5)")
    print(f"  (b) idempotent rerun  {med['b']:6.2f}s   b/c = {med['b'] / med['c']:.2f}   (target at 20 hosts <= 1.0)")
    print(f"  (c) floor             {med['c']:6.2f}s   = ansible -m ping {med['ping']:.2f}s + "
          f"ansible -m copy (bundle) {med['copy']:.2f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
