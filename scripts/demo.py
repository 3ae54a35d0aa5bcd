#!/usr/bin/env python3
"""`make demo`: the product's main job on the local lab, told as a story with real servers.

Act 1 — the outage the product exists to prevent: RENAPO publishes and switches its certificate, nobody renews the
hosts, and every consultation through every host fails on TLS verification.
Act 2 — the renewal: on a fresh lab, RENAPO publishes; an operator confirms the new anchor's fingerprint by another
channel and the registry approves it; the renewal is validated against the registry and rolled out host by host; a
rerun changes nothing; RENAPO switches while a probe consults every host continuously, and not one consultation
fails. Then the recovery path: a host added from an old image fails after the
switch, and a rollout to it fixes it.

Every step is a real `ansible`/`ansible-playbook` run; its full output goes to .lab/demo/NN-step.log.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "lab"))
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
# isort: off
import conftest  # noqa: E402,F401  (first: makes ansible.module_utils.<project module> importable)
import demo_procedure  # noqa: E402
import labctl  # noqa: E402
from cryptography import x509  # noqa: E402
from sim import padron  # noqa: E402
from ansible.module_utils.consulta import ConsultaError, consult  # noqa: E402
# isort: on

LOGS = labctl.STATE / "demo"
ANCHOR = [".venv/bin/ansible-playbook", "playbooks/anchor.yml", "-e", "provider=renapo", "-e", "operator=jdoe"]
_step = 0


def say(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m", flush=True)


def ansible(args: list[str], title: str, expect_ok: bool = True) -> subprocess.CompletedProcess:
    """Runs one ansible command, keeps its output in a log, prints its recap."""
    global _step
    _step += 1
    LOGS.mkdir(parents=True, exist_ok=True)
    log = LOGS / f"{_step:02d}-{re.sub(r'[^a-z0-9]+', '-', title.lower()).strip('-')}.log"
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_NOCOLOR="1",
               PATH=f"{ROOT / '.venv/bin'}:{os.environ.get('PATH', '')}")
    print(f"   $ {' '.join(args)}", flush=True)
    t0 = time.monotonic()
    p = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True)
    log.write_text(p.stdout + p.stderr)
    recap = [ln for ln in p.stdout.splitlines() if re.match(r"^\S+\s+: ok=", ln) or " | SUCCESS" in ln
             or " | UNREACHABLE" in ln or " | FAILED" in ln]
    for ln in recap:
        print(f"     {ln.strip()}")
    print(f"     ({time.monotonic() - t0:.1f}s, rc={p.returncode}, log {log.relative_to(ROOT)})")
    if expect_ok and p.returncode != 0:
        print(p.stdout[-3000:], p.stderr[-2000:])
        raise SystemExit(f"demo: step failed: {' '.join(args)}")
    return p


def hosts() -> list[tuple[str, str]]:
    return [(t.name, f"http://{labctl.host_ip(int(t.name.rsplit('-', 1)[1]))}:{labctl.GATEWAY_PORT}")
            for t in sorted((labctl.STATE / "hosts").glob("consulta-*")) if labctl._read_pid(t.name)]


def anchors(host: str) -> str:
    """The RENAPO anchors a host trusts now, by generation (G1, G2...), read from its own file tree."""
    path = labctl.STATE / "hosts" / host / "etc-consulta" / "trust" / "renapo-bundle.pem"
    certs = x509.load_pem_x509_certificates(path.read_bytes())
    names = [c.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value for c in certs]
    return "+".join(n.rsplit(" ", 1)[-1] for n in names)


def consult_host(url: str) -> tuple[bool, str, float]:
    t0 = time.monotonic()
    try:
        r = consult("curp_soap", url, curp=padron.check_curp(labctl.STATE), usuario="DGTIC_LAB",
                    password="lab-renapo-pass", timeout=5)  # noqa: S106 - the lab simulator's own credentials
        return True, f"{r['status_oper']} {r['status_curp']}", (time.monotonic() - t0) * 1000
    except ConsultaError as e:
        return False, f"FAIL: {e.kind}", (time.monotonic() - t0) * 1000


def tls_cause(host: str) -> str:
    """What nginx said when it could not call RENAPO: the last upstream SSL line of the host's error log."""
    log = labctl.STATE / "hosts" / host / "log-nginx" / "error.log"
    lines = [ln for ln in log.read_text(errors="replace").splitlines() if "SSL" in ln or "certificate" in ln]
    if not lines:
        return ""
    m = re.search(r"(upstream SSL certificate verify error: \([^)]*\)|certificate verify failed[^,]*)", lines[-1])
    return m.group(1) if m else lines[-1][-90:]


def table(rows: list[dict], cols: list[str]) -> None:
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in cols}
    print("   " + "  ".join(c.ljust(widths[c]) for c in cols))
    print("   " + "  ".join("-" * widths[c] for c in cols))
    for r in rows:
        print("   " + "  ".join(str(r.get(c, "")).ljust(widths[c]) for c in cols))


class Probe(threading.Thread):
    """Consults every host continuously (through its gateway) and counts failures, while RENAPO switches."""

    def __init__(self, targets: list[tuple[str, str]]):
        super().__init__(daemon=True)
        self.targets, self.stop, self.ok, self.failed = targets, threading.Event(), {}, {}

    def run(self) -> None:
        while not self.stop.is_set():
            for name, url in self.targets:
                good = consult_host(url)[0]
                bucket = self.ok if good else self.failed
                bucket[name] = bucket.get(name, 0) + 1


def fingerprint_from_letter(outbox: Path) -> str:
    text = (outbox / "oficio.txt").read_text(encoding="utf-8", errors="replace")
    return re.search(r"((?:[0-9A-F]{2}:){31}[0-9A-F]{2})", text).group(1)


def act1(n: int) -> None:
    say(f"Act 1 — the outage. Lab up: {n} web-service hosts (sshd + nginx each), RENAPO/SAT simulators, SMTP sink")
    r = labctl.up(n, fresh=True)
    print(f"   lab up in {r['seconds']}s")
    ansible([".venv/bin/ansible", "consulta_hosts", "-m", "ansible.builtin.ping", "-o"], "ping every host")
    say("Day zero of the anchor registry: an operator seeds it, once, from what every host trusts today")
    ansible(ANCHOR + ["-e", "op=seed"], "seed the anchor registry")
    say("One consultation through every host's gateway (nginx verifies RENAPO against the host's trust bundle), "
        "and what each host trusts compared with the registry")
    ansible([".venv/bin/ansible-playbook", "playbooks/check.yml"], "consult through every host")
    before = {h: consult_host(u) for h, u in hosts()}
    say("RENAPO publishes its renewed certificate and switches to it — and nobody renewed the hosts")
    pub = labctl.pki.publish(labctl.STATE)
    print(f"   published {pub['generation']}: new anchor fingerprint {pub['fingerprint_sha256'][:23]}...")
    print(f"   RENAPO now presents {labctl.pki.switch(labctl.STATE)}")
    ansible([".venv/bin/ansible-playbook", "playbooks/check.yml"], "consult after the switch", expect_ok=False)
    rows = []
    for h, u in hosts():
        ok, what, ms = consult_host(u)
        rows.append({"host": h, "trusts": anchors(h), "before the switch": before[h][1],
                     "after the switch": what, "why (nginx error.log)": tls_cause(h) or "-"})
    table(rows, ["host", "trusts", "before the switch", "after the switch", "why (nginx error.log)"])
    failed = sum(1 for r in rows if r["after the switch"].startswith("FAIL"))
    print(f"\n   {failed} of {len(rows)} hosts stopped answering consultations: "
          "this is the outage the product prevents.")


def act2(n: int) -> None:
    say("Act 2 — the renewal. A fresh lab: every host trusts only today's RENAPO anchor (G1)")
    labctl.up(n, fresh=True)
    start = {h: anchors(h) for h, _ in hosts()}
    anchor = ANCHOR
    ansible(anchor + ["-e", "op=seed"], "seed the anchor registry")
    pub = labctl.pki.publish(labctl.STATE)
    outbox = Path(pub["outbox"])
    fp = fingerprint_from_letter(outbox)
    cert = outbox / f"renapo_ws_{pub['generation']}.pem"
    print(f"   RENAPO published {pub['generation']} (not presented yet); its letter states fingerprint {fp[:23]}...")
    say("Hosts trust only what the registry approves: the operator confirms the fingerprint by telephone, approves")
    ansible(anchor + ["-e", f"fingerprint={fp}", "-e", "channel=telefono"], "record the confirmed fingerprint")
    p = ansible(anchor + ["-e", "op=approve", "-e", f"certificate={cert}"], "approve the new anchor")
    for line in re.findall(r'"(APPROVED  [^"]+)"', p.stdout):
        print(f"     {line}")
    say("Rollout: validated on the controller against the registry, then host by host, canary first")
    rollout = [".venv/bin/ansible-playbook", "playbooks/rollout.yml", "-e", "rollout_service=renapo",
               "-e", f"rollout_certificate={cert}"]
    t0 = time.monotonic()
    ansible(rollout, "rollout")
    rollout_s = time.monotonic() - t0
    say("Rerun with nothing to do: changed=0 on every host")
    p = ansible(rollout, "rollout rerun")
    changed = sum(int(m) for m in re.findall(r"changed=(\d+)", p.stdout))
    print(f"   total changed on the rerun: {changed}")
    say("RENAPO switches while a probe consults every host continuously")
    probe = Probe(hosts())
    probe.start()
    time.sleep(1.0)
    print(f"   RENAPO now presents {labctl.pki.switch(labctl.STATE)}")
    time.sleep(2.0)
    probe.stop.set()
    probe.join()
    total_ok, total_failed = sum(probe.ok.values()), sum(probe.failed.values())
    print(f"   probe: {total_ok} consultations ok, {total_failed} failed")
    rows = []
    for h, u in hosts():
        ok, what, ms = consult_host(u)
        rows.append({"host": h, "trusted before": start[h], "trusted after": anchors(h), "check": what,
                     "probe ok/failed": f"{probe.ok.get(h, 0)}/{probe.failed.get(h, 0)}", "time": f"{ms:.0f} ms"})
    table(rows, ["host", "trusted before", "trusted after", "check", "probe ok/failed", "time"])
    print(f"\n   rollout to {len(rows)} hosts took {rollout_s:.1f}s; zero failed consultations at the switch: "
          f"{'YES' if total_failed == 0 else 'NO'}")

    new = n + 1
    say(f"Recovery path: consulta-{new:02d} joins from an old image (trusts only G1) after the switch")
    labctl.up(new)
    name, url = hosts()[-1]
    print(f"   {name}: trusts {anchors(name)}; consultation: {consult_host(url)[1]} ({tls_cause(name) or '-'})")
    ansible(rollout + ["--limit", name], f"rollout to {name}")
    print(f"   {name}: trusts {anchors(name)}; consultation: {consult_host(url)[1]}")
    if total_failed or changed or not consult_host(url)[0]:
        raise SystemExit("demo: the renewal did not keep every host answering")


def act4() -> None:
    say("Act 4 — before the next expiry, and the procedure's KPIs")
    ansible([".venv/bin/ansible-playbook", "playbooks/expiry_scan.yml"], "expiry scan")
    ansible([".venv/bin/ansible-playbook", "playbooks/padron_consulta.yml"], "padron consultation batch")
    p = ansible([".venv/bin/ansible-playbook", "playbooks/kpi_report.yml"], "kpi report")
    m = re.search(r"Reporte de indicadores: (\S+\.html)", p.stdout)
    report = Path(m.group(1)) if m else labctl.STATE / "reports" / "kpi_report.html"
    data = json.loads(report.with_suffix(".json").read_text(encoding="utf-8"))
    for name, kpi in data.get("indicadores", {}).items():
        if isinstance(kpi, dict) and "valor" in kpi:
            print(f"   {name:<28} {kpi['valor']}  ({kpi.get('numerador')}/{kpi.get('denominador')})")
    print(f"\n   KPI report (Spanish, self-contained HTML): {report}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hosts", type=int, default=5)
    args = ap.parse_args()
    act1(args.hosts)
    act2(args.hosts)
    say("Act 3 — the whole procedure: from the request e-mail to the closed ticket")
    rc = demo_procedure.run(args.hosts)
    if rc:
        return rc
    act4()
    say("Done. The lab keeps running for you to explore (`make lab-status`, `make lab-down`).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
