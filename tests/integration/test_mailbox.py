"""The Mesa's real mailbox on the lab's mail host (Postfix MX + OpenDKIM + Dovecot IMAP), intake.yml as an operator
runs it: it never loops (its own notices to the Mesa come back and produce nothing), never stops (poison mails are
quarantined and the next request is processed in the same run), never loses (a reused Message-ID with other content
is processed, a SIGKILL between fetch and commit loses and doubles nothing), and reads what a real mailbox holds:
forwards, Outlook HTML, Windows-1252, bounces, out-of-office replies."""
from __future__ import annotations

import email
import email.policy
import email.utils
import os
import signal
import subprocess
import sys
import time
from email.message import EmailMessage

from labtools import ROOT, ansible_env, run

sys.path.insert(0, str(ROOT / "scripts"))
import demo_procedure as procedure  # noqa: E402

PLAYBOOK = str(ROOT / ".venv" / "bin" / "ansible-playbook")
MESA = procedure.MESA
LUIS = {"name": "Luis Pérez Gómez", "email": "luis.perez@agricultura.gob.mx",
        "unit": "Dirección General de Padrones y Registros"}
MARIA = {"name": "María Hernández Castro", "email": "maria.hernandez@agricultura.gob.mx",
         "unit": "Dirección General de Fomento a la Agricultura"}


def playbook(name, *args, check=True):
    return run([PLAYBOOK, f"playbooks/{name}", *args], check=check)


def intake():
    """intake.yml, then the mail it sent settled (in the sink or back in the Mesa's mailbox)."""
    out = playbook("intake.yml").stdout
    assert procedure.mail_settled(), "notices still queued on the mail host"
    return out


def folders() -> dict[str, list[email.message.Message]]:
    """Every message of every folder of the Mesa's mailbox."""
    out = {}
    with procedure.mailhost.imap_connect() as conn:
        _typ, boxes = conn.list()
        for line in boxes or []:
            name = line.decode().rsplit(' "/" ', 1)[-1].strip('"')
            conn.select(f'"{name}"', readonly=True)
            _typ, data = conn.uid("SEARCH", None, "UNDELETED")
            out[name] = []
            for uid in (data[0].split() if data and data[0] else []):
                _typ, parts = conn.uid("FETCH", uid, "(BODY.PEEK[])")
                out[name] += [email.message_from_bytes(p[1]) for p in parts if isinstance(p, tuple)]
    return out


def ids(messages) -> list[str]:
    return [str(m["Message-ID"]).strip() for m in messages]


def inbox_count(message_id: str) -> int:
    with procedure.mailhost.imap_connect() as conn:
        conn.select("INBOX", readonly=True)
        _typ, data = conn.uid("SEARCH", None, "HEADER", "Message-ID", f'"{message_id}"')
        return len(data[0].split()) if data and data[0] else 0


def to_inbox(msg, via=None) -> str:
    """Mails msg to the Mesa and waits until it is in INBOX (a resend's Message-ID may sit in Procesados too)."""
    msg["To"] = MESA
    if msg["Date"] is None:
        msg["Date"] = email.utils.formatdate(localtime=True)
    domain = email.utils.parseaddr(str(msg["From"]))[1].rpartition("@")[2]
    via = via or next((n for n, d in procedure.mailhost.SIGNING_DOMAINS.items() if d == domain), "external")
    before = inbox_count(msg["Message-ID"]) if msg["Message-ID"] else 0
    message_id = procedure.mailhost.send(msg, via)
    deadline = time.monotonic() + 20
    while inbox_count(message_id) <= before:
        assert time.monotonic() < deadline, f"{message_id} never reached INBOX"
        time.sleep(0.1)
    return message_id


def raw_to_inbox(data: bytes, mail_from: str, message_id: str, via="secretaria") -> None:
    procedure.mailhost.send_raw(data, mail_from, [MESA], via=via)
    deadline = time.monotonic() + 20
    while not inbox_count(message_id):
        assert time.monotonic() < deadline, f"{message_id} never reached INBOX"
        time.sleep(0.1)


def tickets():
    with procedure.store() as s:
        return s.find()


# ---- never loop -----------------------------------------------------------------------------------------------

def test_notices_to_the_mesa_come_back_and_produce_nothing_new_bounces_and_out_of_office_are_filed(fresh_lab):
    # A stray mail (quarantine notice to the Mesa) and an outsider's request (oficio Cc the Mesa): notices that land
    # in the very mailbox intake reads.
    stray = EmailMessage()
    stray["From"] = "Boletín <noticias@correo-externo.mx>"
    stray["Subject"] = "Boletín semanal"
    stray.set_content("Nada que ver con certificados.\n")
    to_inbox(stray)
    to_inbox(procedure.request_mail(procedure.OUTSIDER))
    to_inbox(procedure.request_mail(procedure.STAFF))
    intake()
    [outsider, staff] = tickets()
    assert outsider["state"] == "closed" and staff["state"] == "requester_validated"
    box = folders()
    assert len(box["Cuarentena"]) == 1 and len(box["Procesados"]) == 2
    back = box["INBOX"]  # our own notices, delivered back by the MX
    assert {procedure.subject(m).split()[0] for m in back} >= {"Correo", "Oficio"}, [procedure.subject(m) for m in back]
    sent_before = len(procedure.sink())

    out = intake()
    box = folders()
    assert box["INBOX"] == [] and sorted(ids(box["Automaticos"])) == sorted(ids(back))
    assert len(box["Cuarentena"]) == 1 and len(box["Procesados"]) == 2, "a notice was quarantined or processed"
    assert len(tickets()) == 2 and len(procedure.sink()) == sent_before, "the notices produced something new"
    assert out.count("-> filed") == len(back)
    intake()
    assert folders()["INBOX"] == [] and len(procedure.sink()) == sent_before

    # Ana's out-of-office answer to the folio notice (it quotes [Ticket #N]): filed, noted, never her reply.
    folio_notice = next(m for m in procedure.sink() if procedure.subject(m).startswith(f"Folio {staff['folio']}"))
    ooo = EmailMessage()
    ooo["From"] = f"{procedure.STAFF['name']} <{procedure.STAFF['email']}>"
    ooo["Subject"] = f"Respuesta automática: {procedure.subject(folio_notice)}"
    ooo["Auto-Submitted"] = "auto-replied"
    ooo["X-Auto-Response-Suppress"] = "All"
    ooo["In-Reply-To"] = folio_notice["Message-ID"]
    ooo.set_content("Estoy fuera de la oficina hasta el lunes.\n\nSolicitante: Otra Persona\nSistema: Otro\n")
    ooo_id = to_inbox(ooo)

    # The enlace's server bounces the folio notice (a DSN as Postfix writes it, from MAILER-DAEMON, MAIL FROM <>).
    dsn_id = email.utils.make_msgid(domain="mx.agricultura.gob.mx")
    headers = "".join(f"{k}: {v}\r\n" for k, v in folio_notice.items() if k in ("From", "To", "Cc", "Subject",
                                                                              "Date", "Message-ID"))
    dsn = (f"From: MAILER-DAEMON@mx.agricultura.gob.mx (Mail Delivery System)\r\nTo: {MESA}\r\n"
           f"Subject: Undelivered Mail Returned to Sender\r\nMessage-ID: {dsn_id}\r\n"
           f"Date: {email.utils.formatdate(localtime=True)}\r\nAuto-Submitted: auto-replied\r\nMIME-Version: 1.0\r\n"
           'Content-Type: multipart/report; report-type=delivery-status; boundary="B1"\r\n\r\n'
           "--B1\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
           "I'm sorry to have to inform you that your message could not be delivered.\r\n\r\n"
           "--B1\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.agricultura.gob.mx\r\n\r\n"
           "Final-Recipient: rfc822; enlace.soas@agricultura.gob.mx\r\nAction: failed\r\nStatus: 5.1.1\r\n"
           "Diagnostic-Code: smtp; 550 5.1.1 <enlace.soas@agricultura.gob.mx>: User unknown\r\n\r\n"
           f"--B1\r\nContent-Type: text/rfc822-headers\r\n\r\n{headers}\r\n--B1--\r\n").encode()
    raw_to_inbox(dsn, "", dsn_id, via="external")
    out = intake()
    assert out.count("-> filed") == 2 and "quarantined" not in out
    box = folders()
    assert {ooo_id, dsn_id} <= set(ids(box["Automaticos"])) and box["INBOX"] == []
    with procedure.store() as s:
        notes = [n["note"] for n in s.get(staff["id"])["observations"]]
        assert s.get(staff["id"])["state"] == "requester_validated"
    assert any(n.startswith(f"Rebote ({dsn_id})") and "enlace.soas@agricultura.gob.mx" in n and "5.1.1" in n
               for n in notes), notes
    assert any(n.startswith(f"Respuesta automática ({ooo_id})") for n in notes), notes
    assert len(procedure.sink()) == sent_before  # no answer to an auto-reply or a bounce


# ---- never stop -----------------------------------------------------------------------------------------------

def test_poison_mails_are_quarantined_and_the_next_request_is_processed_in_the_same_run(fresh_lab):
    poison_unit = dict(procedure.STAFF, unit="MII" + "A" * 64)
    to_inbox(procedure.request_mail(poison_unit))
    key_id = "<-----BEGIN PRIVATE KEY-----MIIEvQIBADANBgkqhkiG9w0BAQEFAASC@agricultura.gob.mx>"
    poison = procedure.request_mail(procedure.STAFF)
    poison["Message-ID"] = "<placeholder@agricultura.gob.mx>"
    poison["Date"] = email.utils.formatdate(localtime=True)
    poison["To"] = MESA
    data = poison.as_bytes(policy=email.policy.SMTP).replace(b"<placeholder@agricultura.gob.mx>", key_id.encode())
    raw_to_inbox(data, procedure.STAFF["email"], key_id)
    genuine = to_inbox(procedure.request_mail(LUIS))
    out = intake()
    [ticket] = tickets()
    assert ticket["message_id"] == genuine and ticket["state"] == "requester_validated"
    box = folders()
    assert len(box["Cuarentena"]) == 2 and ids(box["Procesados"]) == [genuine]
    # what is left in INBOX is only the Mesa's two quarantine notices, come back (the next run files them)
    assert sorted(procedure.subject(m).split()[0] for m in box["INBOX"]) == ["Correo", "Correo"]
    reasons = [procedure.reason(m) for m in box["Cuarentena"]]
    assert all("SecretMaterialError" in r for r in reasons), reasons
    notices = [m for m in procedure.sink() if procedure.subject(m).startswith("Correo en cuarentena")]
    assert len(notices) == 2
    shown = out + " ".join(reasons) + " ".join(m.as_string() for m in notices)
    assert "PRIVATE KEY" not in shown and "A" * 40 not in shown and "MIIEvQIBADAN" not in shown


# ---- never lose -----------------------------------------------------------------------------------------------

def test_resend_with_the_same_message_id(fresh_lab):
    first = procedure.request_mail(procedure.STAFF)
    first["Message-ID"] = reused = email.utils.make_msgid(domain="agricultura.gob.mx")
    to_inbox(first)
    intake()
    # The client's "resend": the same Message-ID, another request (another system).
    other = procedure.request_mail(procedure.STAFF, system="Producción para el Bienestar")
    other["Message-ID"] = reused
    to_inbox(other)
    # And the very same mail once more (an Outlook outbox resend): a duplicate.
    again = procedure.request_mail(procedure.STAFF, system="Producción para el Bienestar")
    again["Message-ID"] = reused
    to_inbox(again)
    out = intake()
    one, two = tickets()
    assert one["message_id"] == reused and two["message_id"].startswith(f"{reused} (reenvio ")
    assert one["requester"]["system"] == "Padrón de Productores"
    assert two["requester"]["system"] == "Producción para el Bienestar" and two["state"] == "requester_validated"
    assert "-> skipped" in out
    box = folders()
    assert ids(box["Procesados"]) == [reused] * 3 and box["INBOX"] == [] and not box["Cuarentena"]


def test_forward_outlook_html_and_windows_1252(fresh_lab):
    lab = fresh_lab
    # Outlook: HTML only, Windows-1252, quoted-printable, "RV:" subject.
    html = ("<html><body><p class=MsoNormal>Buenos d&iacute;as:</p><p class=MsoNormal>Solicitante: "
            f"{procedure.STAFF['name']}<o:p></o:p></p><p class=MsoNormal>Unidad Administrativa: "
            f"{procedure.STAFF['unit']}</p><p class=MsoNormal>Sistema: Padrón de Productores</p>"
            "<p class=MsoNormal>Servicio: RENAPO</p><p class=MsoNormal>Turnado por: Luis Pérez Gómez</p>"
            "<p class=MsoNormal>Cargo: Director de Área</p><p>Saludos “cordiales”.</p></body></html>")
    outlook = EmailMessage()
    outlook["From"] = f"{procedure.STAFF['name']} <{procedure.STAFF['email']}>"
    outlook["Subject"] = "RV: Solicitud de actualización de certificado RENAPO"
    outlook.set_content(html, subtype="html", charset="windows-1252", cte="quoted-printable")
    html_id = to_inbox(outlook)
    # Windows-1252 plain text, 8-bit.
    cp = EmailMessage()
    cp["From"] = f"{MARIA['name']} <{MARIA['email']}>"
    cp["Subject"] = "RE: RV: Solicitud de actualización de certificado SAT"
    cp.set_content(f"Solicitante: {MARIA['name']}\nUnidad Administrativa: {MARIA['unit']}\n"
                   "Sistema: Producción para el Bienestar\nServicio: SAT\nTurnado por: Jorge Ramírez Soto\n"
                   "Cargo: Director de Área\n\n“Gracias” – María\n", charset="windows-1252", cte="8bit")
    cp_id = to_inbox(cp)
    intake()
    by_id = {t["message_id"]: t for t in tickets()}
    assert by_id[html_id]["state"] == "requester_validated"
    assert by_id[html_id]["requester"]["unit"] == procedure.STAFF["unit"]
    assert by_id[cp_id]["state"] == "requester_validated" and by_id[cp_id]["service"] == "sat"
    assert by_id[cp_id]["requester"]["name"] == MARIA["name"]
    assert by_id[cp_id]["requester"]["system"] == "Producción para el Bienestar"

    # RENAPO's genuine publication, forwarded by Luis as an attachment: the forward is Luis's mail, RENAPO's From
    # inside it is only a claim.
    published = lab.pki.publish(lab.STATE)
    original = procedure.mailhost.publication_message(published)
    original["Message-ID"] = email.utils.make_msgid(domain="renapo.gob.mx")
    original["Date"] = email.utils.formatdate(localtime=True)
    forward = EmailMessage()
    forward["From"] = f"{LUIS['name']} <{LUIS['email']}>"
    forward["Subject"] = f"RV: {original['Subject']}"
    forward.set_content("Les reenvío lo que mandó RENAPO.\n")
    forward.add_attachment(original, filename="renovacion.eml")
    forward_id = to_inbox(forward)
    intake()
    [quarantined] = [m for m in folders()["Cuarentena"] if str(m["Message-ID"]).strip() == forward_id]
    assert "reenviada por luis.perez@agricultura.gob.mx" in procedure.reason(quarantined)
    renapo_ticket = by_id[html_id]
    with procedure.store() as s:
        assert s.get(renapo_ticket["id"])["state"] == "requester_validated"
        kinds = {e["kind"] for e in s.anchor_evidence("renapo", published["fingerprint_sha256"])}
    assert kinds == {"claim"}
    # An operator who confirmed it with RENAPO releases it: the delivery proceeds on that operator's word.
    playbook("intake.yml", "-e", f"release={forward_id}", "-e", "operator=jdoe")
    with procedure.store() as s:
        done, audit = s.get(renapo_ticket["id"]), s.audit(renapo_ticket["id"])
        kinds = {e["kind"] for e in s.anchor_evidence("renapo", published["fingerprint_sha256"])}
    assert done["state"] == "certificate_received" and kinds == {"claim"}  # trust still needs evidence
    assert any("liberada de cuarentena por jdoe" in (a["reason"] or "") for a in audit)


def _session_pids(sid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getsid(int(entry)) == sid:
                    pids.append(int(entry))
            except OSError:
                continue
    return pids


def test_sigkill_between_fetch_and_commit_loses_and_doubles_nothing(fresh_lab):
    sent = [to_inbox(procedure.request_mail(person, system=system))
            for person in (procedure.STAFF, LUIS, MARIA)
            for system in ("Padrón de Productores", "Producción para el Bienestar", "Precios de Garantía",
                           "Sistema de Apoyos a la Comercialización")]
    proc = subprocess.Popen([PLAYBOOK, "playbooks/intake.yml"], cwd=ROOT, env=ansible_env(), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # Killed mid-run: some tickets committed, the rest of the inbox not yet read.
    deadline = time.monotonic() + 120
    while len(tickets()) < 3:
        assert proc.poll() is None, "intake finished before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    for pid in _session_pids(proc.pid):
        os.kill(pid, signal.SIGKILL)
    proc.wait()
    killed_at = len(tickets())
    assert 3 <= killed_at < len(sent), killed_at
    assert procedure.mail_settled()
    intake()
    box = folders()
    assert box["INBOX"] == [] and not box["Cuarentena"]
    assert sorted(ids(box["Procesados"])) == sorted(sent), "a message was lost or doubled"
    all_tickets = tickets()
    assert sorted(t["message_id"] for t in all_tickets) == sorted(sent), "a ticket was doubled or is missing"
    assert all(t["state"] in ("requester_validated", "observations") for t in all_tickets)
