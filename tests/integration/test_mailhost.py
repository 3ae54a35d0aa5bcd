"""The lab's real mail host (issue 10, item 4): Postfix, OpenDKIM, dnsmasq and Dovecot, asserted through the Mesa de
Servicios' IMAP mailbox as the product reads it.

Real servers and independent clients only: imaplib over TLS verified against the lab mail CA, dnspython against the
lab DNS, dkimpy to sign as a provider would (and to check OpenDKIM's verdicts), authres to read the verdicts.
"""
from __future__ import annotations

import email
import email.policy
import imaplib
import json
import mailbox
import os
import ssl
import stat
import subprocess
import sys
import time
from email.message import EmailMessage
from pathlib import Path

import authres
import dkim
import dns.resolver
import mailhost
import pytest
from labtools import LAB_HOSTS, ROOT

pytestmark = pytest.mark.lab
LABCTL = [sys.executable, str(ROOT / "lab" / "labctl.py")]
RENAPO_FROM = "servicios.consulta@renapo.gob.mx"


def resolver() -> dns.resolver.Resolver:
    r = dns.resolver.Resolver(configure=False)
    r.nameservers, r.port = [mailhost.IP], mailhost.DNS_PORT
    return r


def dnsfunc(name, timeout=5):
    """dkimpy's DNS hook, answered by the lab DNS only."""
    name = name.decode() if isinstance(name, bytes) else name
    try:
        answer = resolver().resolve(name, "TXT", lifetime=timeout)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return None
    return b"".join(b"".join(rr.strings) for rr in answer)


def verdicts(raw: bytes) -> list[authres.AuthenticationResultsHeader]:
    msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    return [authres.AuthenticationResultsHeader.parse(f"Authentication-Results: {v}")
            for v in msg.get_all("Authentication-Results", [])]


def dkim_result(raw: bytes) -> tuple[str, str | None]:
    """The one verdict of the Secretaría's MX: (dkim result, header.d)."""
    headers = verdicts(raw)
    assert len(headers) == 1, [str(h) for h in headers]
    assert headers[0].authserv_id == mailhost.AUTHSERV_ID
    dkims = [r for r in headers[0].results if r.method == "dkim"]
    assert len(dkims) == 1, str(headers[0])
    props = {f"{p.type}.{p.name}": p.value for p in dkims[0].properties}
    return dkims[0].result, props.get("header.d")


def message(sender: str, subject: str, body: str = "Mensaje de prueba.\n", to: str = mailhost.MESA_ADDRESS,
            **headers) -> EmailMessage:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = sender, to, subject
    for name, value in headers.items():
        msg[name.replace("_", "-")] = value
    msg.set_content(body)
    return msg


def test_inventory_exposes_the_mail_host(lab):
    inv = json.loads(lab.INVENTORY.read_text().split("\n", 1)[1])["all"]["vars"]
    assert inv["lab_mail_ip"] == mailhost.IP == f"127.0.{lab.SLOT}.200"
    assert inv["lab_mail_authserv_id"] == "mx.agricultura.gob.mx"
    assert inv["lab_mail_nameserver"] == f"{mailhost.IP}@53" and inv["lab_dkim_selector"] == mailhost.SELECTOR
    assert inv["lab_imap_host"] == mailhost.IP and inv["lab_imap_tls"] == "implicit"
    for key in ("lab_mail_mx_port", "lab_mail_submission_port", "lab_imap_port", "lab_imap_ca", "lab_imap_user"):
        assert inv[key], key
    pw = Path(inv["lab_imap_password_file"])
    assert stat.S_IMODE(pw.stat().st_mode) == 0o600
    assert pw.read_text().strip() not in lab.INVENTORY.read_text()


def test_lab_dns_serves_mx_spf_and_dkim_records(lab):
    r = resolver()
    assert [str(a.exchange) for a in r.resolve("agricultura.gob.mx", "MX")] == ["mx.agricultura.gob.mx."]
    assert [a.address for a in r.resolve("mx.agricultura.gob.mx", "A")] == [mailhost.IP]
    for domain in ("renapo.gob.mx", "sat.gob.mx", "agricultura.gob.mx", "renapo-gob.mx"):
        spf = [b"".join(a.strings) for a in r.resolve(domain, "TXT")]
        assert spf == [f"v=spf1 ip4:{mailhost.IP} -all".encode()], domain
    key = dnsfunc(f"{mailhost.SELECTOR}._domainkey.renapo.gob.mx")
    assert key.startswith(b"v=DKIM1; k=rsa; p=MII") and len(key) > 255  # split into several strings
    assert dnsfunc(f"{mailhost.SELECTOR}._domainkey.renapo-gob.mx") is None, "the look-alike has no DKIM key"


def test_renapo_publication_arrives_dkim_signed_with_its_attachments(lab):
    p = subprocess.run(LABCTL + ["publish"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    raw = mailhost.wait_for(out["message_id"])
    assert dkim_result(raw) == ("pass", "renapo.gob.mx")
    assert dkim.verify(raw, dnsfunc=dnsfunc), "dkimpy must agree with OpenDKIM"
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert email.utils.parseaddr(msg["From"])[1] == RENAPO_FROM and msg["To"].addresses[0].addr_spec == \
        mailhost.MESA_ADDRESS
    body = msg.get_body(("plain",)).get_content()
    assert out["fingerprint_sha256"] in body and "dependencias usuarias" in body
    assert "folio" not in (msg["Subject"] + body).lower(), "RENAPO does not know our folios"
    names = {part.get_filename() for part in msg.iter_attachments()}
    assert names == {Path(a).name for a in (Path(out["outbox"]) / f"renapo_ws_{out['generation']}.pem",
                                            Path(out["outbox"]) / f"renapo_raiz_{out['generation']}.cer")}
    # Publishing again returns the pending publication; it is mailed once.
    again = json.loads(subprocess.run(LABCTL + ["publish"], capture_output=True, text=True, check=True).stdout)
    assert again["message_id"] == out["message_id"]


def test_unsigned_mail_with_renapo_from_arrives_dkim_none(lab):
    mid = mailhost.send(message(f"RENAPO <{RENAPO_FROM}>", "Renovación del certificado (sin firma)"), "external")
    assert dkim_result(mailhost.wait_for(mid)) == ("none", None)


def test_body_altered_after_signing_arrives_dkim_fail(lab):
    msg = message(RENAPO_FROM, "Renovación del certificado", "Huella: AA:BB:CC\n")
    msg["Message-ID"] = email.utils.make_msgid(domain="renapo.gob.mx")
    msg["Date"] = email.utils.formatdate(localtime=True)
    data = msg.as_bytes(policy=email.policy.SMTP)
    key = mailhost.dkim_key_path("renapo.gob.mx").read_bytes()
    sig = dkim.sign(data, mailhost.SELECTOR.encode(), b"renapo.gob.mx", key,
                    include_headers=[b"From", b"To", b"Subject", b"Date", b"Message-ID"])
    assert dkim.verify(sig + data, dnsfunc=dnsfunc), "signed as RENAPO's MTA would"
    mailhost.send_raw(sig + data.replace(b"AA:BB:CC", b"DD:EE:FF"), RENAPO_FROM, [mailhost.MESA_ADDRESS])
    result, domain = dkim_result(mailhost.wait_for(msg["Message-ID"]))
    assert (result, domain) == ("fail", "renapo.gob.mx")


def test_lookalike_domain_arrives_unsigned(lab):
    forged = message("Direccion de Servicios de Consulta RENAPO <servicios.consulta@renapo-gob.mx>",
                     "Renovación del certificado")
    with pytest.raises(ValueError, match="sends for renapo.gob.mx"):
        mailhost.send(forged, "renapo")  # RENAPO's MTA does not sign someone else's domain
    mid = mailhost.send(forged, "external")
    assert dkim_result(mailhost.wait_for(mid)) == ("none", None)


def test_planted_authentication_results_is_removed(lab):
    planted = f"{mailhost.AUTHSERV_ID}; dkim=pass header.d=renapo.gob.mx"
    msg = message(RENAPO_FROM, "Renovación del certificado", Authentication_Results=planted)
    msg.add_header("Authentication-Results", "relay.example; dkim=pass header.d=renapo.gob.mx")
    raw = mailhost.wait_for(mailhost.send(msg, "external"))
    assert b"relay.example" not in raw and raw.count(b"Authentication-Results:") == 1
    assert dkim_result(raw) == ("none", None)


def test_secretaria_mail_to_other_recipients_reaches_the_sink_signed(lab):
    sink = mailbox.Maildir(lab.STATE / "mail" / "sink", create=False)
    mid = mailhost.send(message("Mesa de Servicios <mesa.servicios@agricultura.gob.mx>", "Aviso de folio",
                                to="solicitante@agricultura.gob.mx"), "secretaria")
    deadline = time.monotonic() + 15
    while not (found := [m for m in sink if m["Message-ID"] == mid]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert found, f"{mid} not in the sink"
    assert dkim_result(found[0].as_bytes()) == ("pass", "agricultura.gob.mx")
    assert "solicitante@agricultura.gob.mx" in found[0]["X-Lab-Rcpt-To"]


def test_imap_verifies_tls_and_moves_by_uid(lab):
    s = mailhost.imap_settings()
    with pytest.raises(ssl.SSLCertVerificationError):
        imaplib.IMAP4_SSL(s["host"], s["port"], ssl_context=ssl.create_default_context(), timeout=5)
    mid = mailhost.send(message(RENAPO_FROM, "Para mover"), "external")
    mailhost.wait_for(mid)
    with mailhost.imap_connect() as conn:
        assert b"MOVE" in conn.capability()[1][0].split()  # announced after login only
        conn.select("INBOX")
        uid = conn.uid("SEARCH", None, "HEADER", "Message-ID", f'"{mid}"')[1][0].split()[-1]
        assert conn.uid("MOVE", uid, "Procesados")[0] == "OK"
        assert conn.uid("SEARCH", None, "HEADER", "Message-ID", f'"{mid}"')[1][0] == b""
    assert mailhost.wait_for(mid, timeout=2), "still readable from the folder it was moved to"


def _mail_processes(lab) -> dict[int, bytes]:
    """The mail host's processes: each recorded component and everything below it."""
    roots = {row["pid"] for row in mailhost.status(lab.STATE) if row["pid"]}
    roots |= {int(p.read_text()) for p in (lab.STATE / "pids").glob("mail-*.pid")}
    parent = {}
    for p in Path("/proc").iterdir():
        try:
            parent[int(p.name)] = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (ValueError, OSError):
            continue
    found = {pid for pid in roots if pid in parent}
    while more := {pid for pid, ppid in parent.items() if ppid in found and pid not in found}:
        found |= more
    return {pid: Path(f"/proc/{pid}/cmdline").read_bytes() for pid in found if Path(f"/proc/{pid}").exists()}


def _mail_listeners() -> list[str]:
    out = subprocess.run(["ss", "-Hltnu"], capture_output=True, text=True, check=True).stdout
    return [line.split()[4] for line in out.splitlines() if line.split()[4].startswith(f"{mailhost.IP}:")]


def test_down_leaves_no_mail_process_or_socket(lab):
    procs = _mail_processes(lab)
    names = b" ".join(procs.values())
    for program in (b"dnsmasq", b"opendkim", b"dovecot", b"master", b"qmgr"):
        assert program in names, (program, procs)
    assert set(_mail_listeners()) >= {f"{mailhost.IP}:{p}" for p in (25, 587, 8891, 1143, 1993, 53)}
    try:
        subprocess.run(LABCTL + ["down"], capture_output=True, text=True, check=True, timeout=60)
        alive = {pid: cmd for pid, cmd in procs.items()
                 if mailhost.alive(pid) and Path(f"/proc/{pid}/cmdline").read_bytes() == cmd}
        assert alive == {}
        assert _mail_listeners() == []
        status = subprocess.run(LABCTL + ["status"], capture_output=True, text=True)
        assert status.returncode == 1 and "mail-mx      DOWN" in status.stdout, status.stdout
    finally:
        lab.up(LAB_HOSTS)
    assert all(mailhost.running(lab.STATE).values())
    assert os.path.exists(lab.STATE / "mailhost" / "mesa.password")
