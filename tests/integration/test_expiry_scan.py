"""playbooks/expiry_scan.yml on the lab: hosts' files, live TLS of the simulators, ticket store, SMTP sink, and
trust drift against the approved-anchor registry."""
from __future__ import annotations

import datetime as dt
import email
import email.header
import json
import re
import time

import labctl
import mailhost
from ansible.module_utils.ticket_store import open_store
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from labtools import LAB_HOSTS, ROOT, run

from tests.providers import THIRD_PROVIDER, lab_providers

PLAYBOOK = str(ROOT / ".venv" / "bin" / "ansible-playbook")
MESA = "mesa.servicios@agricultura.gob.mx"


def scan(*args, check=True):
    return run([PLAYBOOK, "playbooks/expiry_scan.yml", *args], check=check)


def monitor_tickets(lab):
    db = lab.STATE / "procedure" / "tickets.db"
    if not db.exists():
        return []
    with open_store(str(db), providers=lab_providers()) as store:
        return [t for t in store.find() if t["source"] == "monitor"]


def mesa_mailbox():
    """Every message in the Mesa's IMAP mailbox (any folder), once the lab mail host's queues are empty: a notice
    to the Mesa goes through the mail host back to the Mesa's own mailbox."""
    queues = [mailhost._dir(labctl.STATE) / f"postfix-{role}" / "queue" for role in ("out", "mx")]
    deadline = time.monotonic() + 30
    while any(f.is_file() for q in queues for sub in ("maildrop", "incoming", "active", "deferred")
              if (q / sub).is_dir() for f in (q / sub).rglob("*")) and time.monotonic() < deadline:
        time.sleep(0.2)
    found = {}
    with mailhost.imap_connect() as conn:
        _typ, boxes = conn.list()
        for line in boxes or []:
            name = line.decode().rsplit(' "/" ', 1)[-1].strip('"')
            if conn.select(f'"{name}"', readonly=True)[0] != "OK":
                continue
            _typ, data = conn.uid("SEARCH", None, "ALL")
            for uid in (data[0].split() if data and data[0] else []):
                _typ, parts = conn.uid("FETCH", uid, "(BODY.PEEK[])")
                for part in parts:
                    if isinstance(part, tuple):
                        msg = email.message_from_bytes(part[1])
                        found.setdefault(str(msg["Message-ID"]).strip(), msg)
    return list(found.values())


def expiry_notices(lab):
    """The expiry notices sent, wherever the lab delivered them (the SMTP sink, or the Mesa's own mailbox)."""
    new = lab.STATE / "mail" / "sink" / "new"
    msgs = [email.message_from_bytes(p.read_bytes()) for p in sorted(new.iterdir())] if new.is_dir() else []
    msgs += mesa_mailbox()
    subjects = [str(email.header.make_header(email.header.decode_header(m["Subject"]))) for m in msgs]
    return [(s, m) for s, m in zip(subjects, msgs, strict=True) if " vence en " in s]


def near_expiry_anchor(days=10, cn="RENAPO Lab Root G0"):
    """An old RENAPO anchor with `days` whole days left (plus two hours, so the count does not tick meanwhile)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = dt.datetime.now(dt.UTC)
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=355))
            .not_valid_after(now + dt.timedelta(days=days, hours=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))


def bundle_of(lab, host):
    return lab.STATE / "hosts" / host / "etc-consulta" / "trust" / "renapo-bundle.pem"


def add_to_bundle(lab, host, cert):
    bundle = bundle_of(lab, host)
    bundle.write_bytes(bundle.read_bytes() + cert.public_bytes(serialization.Encoding.PEM))


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
    assert re.search(r"(\d+) certificates, 0 crossings \(0 new or updated tickets, 0 notices\), 0 renewed, "
                     r"0 tickets closed, 0 problems", out), out[-2000:]
    assert f"{fresh_lab.RENAPO[0]}:{fresh_lab.RENAPO[1]}  renapo   live" in out


def test_ten_days_from_expiry_on_one_host_opens_exactly_one_ticket_over_three_scans(fresh_lab):
    lab = fresh_lab
    cert = near_expiry_anchor(10)
    add_to_bundle(lab, "consulta-02", cert)
    dry = scan("--check").stdout  # a dry run shows the crossing, opens and sends nothing
    assert re.search(r"consulta-02\s+renapo\s+trusts\s+10\s+<=15d\s", dry)
    assert monitor_tickets(lab) == [] and expiry_notices(lab) == []
    outputs = [scan().stdout for _ in range(3)]

    [ticket] = monitor_tickets(lab)
    sha = cert.fingerprint(hashes.SHA256()).hex()
    assert ticket["service"] == "renapo" and ticket["state"] == "received"
    assert ticket["event_key"] == f"expiry:renapo:{sha}" and ticket["hosts"] == ["consulta-02"]
    assert [n["key"] for n in ticket["notices"]] == [f"expiry:renapo:{sha}:15"]  # the crossing's one notice
    [(subject, notice)] = expiry_notices(lab)
    assert subject == "El certificado del servicio RENAPO (consulta de CURP) vence en 10 días"
    assert MESA in notice["To"]
    body = notice.get_payload()[0].get_payload(decode=True).decode("utf-8")
    assert "quedan 10 días" in body and "consulta-02" in body and format(cert.serial_number, "X") in body
    assert f"Ticket de seguimiento: #{ticket['id']}" in body
    for out in outputs:  # the table names the host and the days left, every time
        assert re.search(r"consulta-02\s+renapo\s+trusts\s+10\s+<=15d\s", out), out[-3000:]
    assert "(1 new or updated tickets, 1 notices)" in outputs[0]
    assert all("(0 new or updated tickets, 0 notices), 0 renewed, 0 tickets closed" in out for out in outputs[1:])


def test_one_ticket_for_a_certificate_two_hosts_hold_closed_once_renewed_on_both(fresh_lab):
    lab = fresh_lab
    old = near_expiry_anchor(10)
    sha = old.fingerprint(hashes.SHA256()).hex()
    for host in ("consulta-01", "consulta-02"):
        add_to_bundle(lab, host, old)

    first = scan().stdout
    [ticket] = monitor_tickets(lab)  # one certificate event: one ticket, both hosts on it
    assert ticket["event_key"] == f"expiry:renapo:{sha}" and ticket["state"] == "received"
    assert sorted(ticket["hosts"]) == ["consulta-01", "consulta-02"]
    [(subject, notice)] = expiry_notices(lab)  # and one notice naming both
    body = notice.get_payload()[0].get_payload(decode=True).decode("utf-8")
    assert "consulta-01" in body and "consulta-02" in body
    assert "(1 new or updated tickets, 1 notices)" in first

    # The Mesa acknowledges it; RENAPO renews the anchor (same name, new key), installed on consulta-01 only.
    run([str(ROOT / ".venv" / "bin" / "ansible"), "controller", "-m", "service_ticket", "-a", json.dumps(
        {"store": str(lab.STATE / "procedure" / "tickets.db"), "ticket": str(ticket["id"]), "state": "acknowledged",
         "actor": "mesa", "providers": "{{ procedure_providers }}"})])
    renewed = near_expiry_anchor(3650)
    add_to_bundle(lab, "consulta-01", renewed)
    partial = scan().stdout
    assert re.search(r"consulta-01\s+renapo\s+trusts\s+10\s+RENEWED\s", partial), partial[-3000:]
    assert re.search(r"consulta-02\s+renapo\s+trusts\s+10\s+<=15d\s", partial)
    [still] = monitor_tickets(lab)
    assert still["state"] == "acknowledged" and "0 tickets closed" in partial
    assert len(expiry_notices(lab)) == 1  # same crossing: nothing sent again

    add_to_bundle(lab, "consulta-02", renewed)
    done = scan().stdout
    assert "1 tickets closed" in done and "0 crossings" in done, done[-3000:]
    [closed] = monitor_tickets(lab)
    assert closed["id"] == ticket["id"] and closed["state"] == "closed"
    assert closed["close_reason"].startswith(f"certificado {old.fingerprint(hashes.SHA256()).hex(':').upper()[:11]}"
                                             " por vencer renovado en todos los servidores: renovado en "
                                             "consulta-01, consulta-02 (tienen su sucesor)")
    with open_store(str(lab.STATE / "procedure" / "tickets.db"), providers=lab_providers()) as store:
        trail = [(a["from_state"], a["to_state"], a["actor"]) for a in store.audit(ticket["id"])]
    assert trail[0] == (None, "received", "monitor.vencimientos")
    assert trail[-1] == ("acknowledged", "closed", "monitor.vencimientos")
    # a later scan changes nothing: the renewed certificate opens no new ticket
    again = scan().stdout
    assert len(monitor_tickets(lab)) == 1 and "0 tickets closed" in again and len(expiry_notices(lab)) == 1


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
    # conftest seeded gen1, approved
    with open_store(str(lab.STATE / "procedure" / "tickets.db"), providers=lab_providers()) as store:
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
        "REGISTRY registry empty for sat: seed it (playbooks/anchor.yml -e op=seed -e provider=sat)"]
    assert re.search(r"0 problems, 1 trust drift \(1 providers with an empty registry\)", out)
    # drift is reported, never ticketed or mailed
    assert monitor_tickets(lab) == [] and expiry_notices(lab) == []


def test_a_provider_defined_in_inventory_only_is_scanned_on_hosts_and_live(fresh_lab, tmp_path):
    """INE exists only in an inventory overlay (tests/providers.py): the scan looks for its bundle on every host and
    reads its endpoint live, with no setting naming it (its endpoint here: the RENAPO simulator, by SNI)."""
    ine = {name: dict(spec, endpoint="{{ lab_renapo_endpoint }}", server_name="renapo.lab")
           for name, spec in THIRD_PROVIDER.items()}
    overlay = tmp_path / "providers-overlay.json"
    overlay.write_text(json.dumps({"procedure_providers": lab_providers(**ine)}))
    out = scan("--check", "-e", f"@{overlay}").stdout
    for i in range(1, LAB_HOSTS + 1):
        assert f"PROBLEM consulta-{i:02d} /etc/consulta/trust/ine-bundle.pem: file not found" in out, out[-3000:]
    assert f"{fresh_lab.RENAPO[0]}:{fresh_lab.RENAPO[1]}  ine      live" in out
    assert monitor_tickets(fresh_lab) == []
