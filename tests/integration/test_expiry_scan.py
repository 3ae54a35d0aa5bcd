"""playbooks/expiry_scan.yml on the lab: hosts' files, live TLS of the simulators, ticket store, SMTP sink, and
trust drift against the approved-anchor registry."""
from __future__ import annotations

import datetime as dt
import email
import email.header
import re

from ansible.module_utils.ticket_store import open_store
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from labtools import LAB_HOSTS, ROOT, run

PLAYBOOK = str(ROOT / ".venv" / "bin" / "ansible-playbook")
MESA = "mesa.servicios@agricultura.gob.mx"


def scan(*args, check=True):
    return run([PLAYBOOK, "playbooks/expiry_scan.yml", *args], check=check)


def monitor_tickets(lab):
    db = lab.STATE / "procedure" / "tickets.db"
    if not db.exists():
        return []
    with open_store(str(db)) as store:
        return [t for t in store.find() if t["source"] == "monitor"]


def expiry_notices(lab):
    new = lab.STATE / "mail" / "sink" / "new"
    msgs = [email.message_from_bytes(p.read_bytes()) for p in sorted(new.iterdir())] if new.is_dir() else []
    subjects = [str(email.header.make_header(email.header.decode_header(m["Subject"]))) for m in msgs]
    return [(s, m) for s, m in zip(subjects, msgs, strict=True) if " vence en " in s]


def near_expiry_anchor(days=10):
    """An old RENAPO anchor with `days` whole days left (plus two hours, so the count does not tick meanwhile)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "RENAPO Lab Root G0")])
    now = dt.datetime.now(dt.UTC)
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=355))
            .not_valid_after(now + dt.timedelta(days=days, hours=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))


def self_signed_ca(cn, days=3650):
    """A CA anyone can make: what an attacker plants in one host's trust bundle."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = dt.datetime.now(dt.UTC)
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))


def table_lines(out, prefix):
    """The scan table's lines starting with `prefix`, as the debug task prints them (a JSON list of strings)."""
    return sorted(set(re.findall(r'^\s*"(%s [^"]*)",?$' % prefix, out, flags=re.M)))


def test_healthy_fleet_opens_no_ticket(fresh_lab):
    out = scan().stdout
    assert monitor_tickets(fresh_lab) == [] and expiry_notices(fresh_lab) == []
    # every host's three files and both live endpoints were read, nothing alerts
    assert re.search(r"(\d+) certificates, 0 crossings \(0 new tickets, 0 notices\), 0 problems", out)
    assert f"{fresh_lab.RENAPO[0]}:{fresh_lab.RENAPO[1]}  renapo   live" in out


def test_ten_days_from_expiry_on_one_host_opens_exactly_one_ticket_over_three_scans(fresh_lab):
    lab = fresh_lab
    cert = near_expiry_anchor(10)
    bundle = lab.STATE / "hosts" / "consulta-02" / "etc-consulta" / "trust" / "renapo-bundle.pem"
    bundle.write_bytes(bundle.read_bytes() + cert.public_bytes(serialization.Encoding.PEM))
    dry = scan("--check").stdout  # a dry run shows the crossing, opens and sends nothing
    assert re.search(r"consulta-02\s+renapo\s+trusts\s+10\s+<=15d\s", dry)
    assert monitor_tickets(lab) == [] and expiry_notices(lab) == []
    outputs = [scan().stdout for _ in range(3)]

    [ticket] = monitor_tickets(lab)
    sha = cert.fingerprint(hashes.SHA256()).hex()
    assert ticket["service"] == "renapo" and ticket["state"] == "received"
    assert ticket["message_id"] == f"expiry:renapo:{sha}:15" and ticket["hosts"] == ["consulta-02"]
    [(subject, notice)] = expiry_notices(lab)
    assert subject == "El certificado de RENAPO (consulta de CURP) vence en 10 días"
    assert notice["X-Lab-Rcpt-To"] == MESA
    body = notice.get_payload()[0].get_payload(decode=True).decode("utf-8")
    assert "quedan 10 días" in body and "consulta-02" in body and format(cert.serial_number, "X") in body
    for out in outputs:  # the table names the host and the days left, every time
        assert re.search(r"consulta-02\s+renapo\s+trusts\s+10\s+<=15d\s", out), out[-3000:]
    assert "(1 new tickets, 1 notices)" in outputs[0]
    assert all("(0 new tickets, 0 notices)" in out for out in outputs[1:])


def test_unreachable_host_is_reported_not_silently_skipped(fresh_lab):
    fresh_lab.stop_host("consulta-03")
    try:
        p = scan(check=False)
    finally:
        fresh_lab.up(LAB_HOSTS)  # later tests on the session's lab find every host up
    assert p.returncode != 0  # ansible-playbook says a host was unreachable
    assert "PROBLEM consulta-03 -: not scanned (unreachable or failed)" in p.stdout
    assert monitor_tickets(fresh_lab) == []


def test_rogue_anchor_planted_on_one_host_is_drift_on_that_host_only(fresh_lab):
    lab = fresh_lab
    with open_store(str(lab.STATE / "procedure" / "tickets.db")) as store:  # conftest seeded gen1, approved
        [gen1] = store.approved_anchors("renapo")
    rogue = self_signed_ca("RENAPO Lab Root G1")  # the look-alike name a forger would pick
    rogue_fp = rogue.fingerprint(hashes.SHA256()).hex(":").upper()
    bundle = lab.STATE / "hosts" / "consulta-02" / "etc-consulta" / "trust" / "renapo-bundle.pem"
    bundle.write_bytes(bundle.read_bytes() + rogue.public_bytes(serialization.Encoding.PEM))

    out = scan().stdout

    drift = table_lines(out, "DRIFT")
    assert len(drift) == 1, out[-4000:]
    assert drift[0].startswith(f"DRIFT consulta-02 renapo held, not approved: {rogue_fp} CN=RENAPO Lab Root G1 "
                               f"not_after {rogue.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ} in /etc/consulta/trust/")
    assert gen1["fingerprint"] not in "\n".join(drift)  # the approved anchor is held everywhere: nothing missing
    assert "TRUST DRIFT against the approved-anchor registry: 1 held but not approved, 0 approved but missing" in out
    # SAT's registry was never seeded in the lab: one notice, not its anchors one by one
    assert [line.split(" (hosts:")[0] for line in table_lines(out, "REGISTRY")] == [
        "REGISTRY registry empty for sat: seed it (playbooks/anchor.yml -e action=seed -e provider=sat)"]
    assert re.search(r"0 problems, 1 trust drift \(1 providers with an empty registry\)", out)
    # drift is reported, never ticketed or mailed
    assert monitor_tickets(lab) == [] and expiry_notices(lab) == []
