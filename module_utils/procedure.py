"""Steps 1.2–4.2 of the procedure applied to the Mesa de Servicios mailbox: what each incoming e-mail does.

Pure code (no Ansible import): `library/mail_intake.py` is a thin wrapper over `Intake.run()`.

- request  -> ticket `received`; observations -> `observations` + notice to the requester; clean -> `folio_issued`
  + notice to the requester and the enlace; then the staff directory: staff -> `requester_validated`, not staff ->
  `rejected` + oficio de respuesta (file + mail, Cc Mesa de Servicios) -> `notified` -> `closed`.
- reply    -> the ticket it quotes ([Ticket #N] or folio): in `observations`, its data corrected and re-evaluated.
- delivery -> the ticket of its folio, which must be `requester_validated`; the letter's SHA-256 fingerprint must
  be one of the attached certificates'; attachments go to <deliveries_dir>/<folio>/ with a delivery.json manifest
  (paths, fingerprint, serial; never key bytes) -> `certificate_received`.
Anything else, or a delivery that does not fit, goes to quarantine with a notice to the Mesa de Servicios.

Every step is resumable: a run killed at any point is finished by the next one. The ticket carries notes that make
it so: "Aviso <name> por <Message-ID> ..." (that notice was sent) and "Correo procesado: <Message-ID>" (the message
is done; a duplicate Message-ID is skipped).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

from ansible.module_utils.cert_files import write_atomic
from ansible.module_utils.cert_validation import normalise_fingerprint, order_chain, sha256_fp
from ansible.module_utils.mail_intake import (
    EMAIL_RE,
    SECRET_EXTENSIONS,
    QuarantineMessage,
    ServiceRequest,
    extract_attachments,
    parse_message,
    process_maildir,
)
from ansible.module_utils.notify import build_message, notice, render, send
from ansible.module_utils.observations import DEFAULT_INSTITUTIONAL_DOMAINS, DEFAULT_RANKS, evaluate
from ansible.module_utils.ticket_store import TicketNotFound
from ansible.module_utils.x509_load import LoadError, parse_certificates

PROCESSED = "Correo procesado: "
PROVISIONAL_SERVICE = "renapo"  # a ticket needs a service; a request that names none gets this until corrected
MANIFEST = "delivery.json"
RENEW_LAUNCHED = "Renovación lanzada en AWX"


@dataclass
class Mailer:
    """Sends the procedure's Spanish notices through SMTP."""

    host: str
    port: int
    sender: str
    template_dir: str | None = None
    reply_to: str | None = None

    def send(self, name, to, cc=(), in_reply_to=None, **ctx):
        message = notice(name, sender=self.sender, to=to, cc=cc, reply_to=self.reply_to, in_reply_to=in_reply_to,
                         template_dir=self.template_dir, **ctx)
        return send(message, self.host, self.port)


@dataclass
class Intake:
    store: object  # ticket_store.TicketStore
    directory: object  # staff_directory.StaffDirectory
    catalog: dict
    mailer: Mailer
    mesa_address: str
    enlace_address: str
    deliveries_dir: str
    oficios_dir: str
    enlace_name: str | None = None
    firmante: str | None = None
    actor: str = "mesa.servicios"
    # Called with the ticket once it reaches certificate_received (awx_launch.AwxLauncher); its dict goes to the
    # outcome as `renew` (the AWX job launched, or the command to run).
    on_certificate_received: object = None
    institutional_domains: tuple = DEFAULT_INSTITUTIONAL_DOMAINS
    ranks: tuple = DEFAULT_RANKS
    outcomes: list = field(default_factory=list)

    # --- the run ---------------------------------------------------------------------------------------------
    def run(self, maildir, quarantine_dir, **parse_options):
        """Process the inbox; returns one outcome dict per message (also kept in self.outcomes on a crash)."""
        processed = {note["note"][len(PROCESSED):] for ticket in self.store.find()
                     for note in ticket["observations"] if note["note"].startswith(PROCESSED)}
        result = process_maildir(maildir, self._handle, quarantine_dir, seen=processed.__contains__,
                                 **parse_options)
        for name, message_id in result.skipped:
            self.outcomes.append({"file": name, "message_id": message_id, "outcome": "skipped",
                                  "reason": "Message-ID ya procesado"})
        for name, reason, parsed in result.quarantined:
            qfile = str(Path(quarantine_dir) / "new" / name.split(":", 1)[0])
            self.mailer.send("quarantine", [self.mesa_address], message_id=parsed.message_id if parsed else name,
                             original_subject=parsed.subject if parsed else "", reason=reason,
                             original_sender=parsed.sender if parsed else "", quarantine_file=qfile)
            self.outcomes.append({"file": name, "message_id": parsed.message_id if parsed else None,
                                  "kind": parsed.kind if parsed else "unknown", "outcome": "quarantined",
                                  "reason": reason, "quarantine_file": qfile, "notices": ["quarantine"]})
        return self.outcomes

    def preview(self, maildir, **parse_options):
        """Check mode: how each message in new/ would be classified; nothing is written or sent."""
        new = Path(maildir) / "new"
        names = sorted(n for n in os.listdir(new) if not n.startswith(".")) if new.is_dir() else []
        out = []
        for name in names:
            parsed = parse_message((new / name).read_bytes(), **parse_options)
            out.append({"file": name, "message_id": parsed.message_id, "kind": parsed.kind, "folio": parsed.folio,
                        "outcome": "would_quarantine" if parsed.quarantine else "would_process",
                        "reason": parsed.reason})
        return out

    def _handle(self, parsed):
        handler = {"request": self._request, "reply": self._reply, "delivery": self._delivery}[parsed.kind]
        outcome = {"message_id": parsed.message_id, "kind": parsed.kind, "notices": []}
        ticket = handler(parsed, outcome)
        ticket = self.store.annotate(ticket["id"], PROCESSED + parsed.message_id, actor=self.actor).ticket
        outcome.update(ticket=ticket["id"], folio=ticket["folio"], state=ticket["state"])
        outcome.setdefault("outcome", ticket["state"])
        self.outcomes.append(outcome)
        return outcome

    # --- requests and replies (steps 1.2, 2.1–2.3, 3.1–3.2) ---------------------------------------------------
    def _request(self, parsed, outcome):
        request = parsed.request
        service = request.service if request.service in ("renapo", "sat") else PROVISIONAL_SERVICE
        fields = request.ticket_fields()
        created = self.store.create(service, actor=self.actor, requester=fields["requester"],
                                    forwarded_by=fields["forwarded_by"], source="mail",
                                    message_id=parsed.message_id, reason="solicitud recibida por correo")
        outcome["opened"] = created.changed
        return self._advance(created.ticket, parsed, outcome)

    def _reply(self, parsed, outcome):
        ticket = self._ticket_quoted(parsed)
        if ticket["state"] != "observations":
            return self.store.annotate(ticket["id"], f"Respuesta del solicitante ({parsed.message_id}) recibida en "
                                       f"'{ticket['state']}': sin cambios", actor=self.actor).ticket
        merged = ServiceRequest.from_ticket(ticket).merged(parsed.request or ServiceRequest())
        fields = merged.ticket_fields()
        if fields["service"] not in ("renapo", "sat"):
            fields["service"] = None  # evaluate() names the defect; the column keeps its provisional value
        ticket = self.store.transition(ticket["id"], "received", actor=self.actor, request=fields,
                                       reason=f"respuesta del solicitante {parsed.message_id}").ticket
        return self._advance(ticket, parsed, outcome, request=merged)

    def _ticket_quoted(self, parsed):
        ref = parsed.ticket_id or parsed.folio
        try:
            return self.store.get(ref)
        except TicketNotFound:
            raise QuarantineMessage(f"la respuesta cita el ticket {ref}, que no existe") from None

    def _advance(self, ticket, parsed, outcome, request=None):
        """Take the ticket as far as the request allows; each step resumes where a killed run stopped."""
        if ticket["state"] == "received":
            request = request or ServiceRequest.from_ticket(ticket)
            found = evaluate(request, self.catalog, self.institutional_domains, self.ranks)
            if found:
                ticket = self.store.transition(
                    ticket["id"], "observations", actor=self.actor,
                    reason="observaciones: " + ", ".join(o.code for o in found)).ticket
                self._notify_once(ticket, parsed, outcome, "observations", self._requester_to(ticket, parsed),
                                  observations=found, requester=ticket["requester"]["name"],
                                  system=ticket["requester"]["system"], service=request.service)
                return ticket
            ticket = self.store.transition(ticket["id"], "folio_issued", actor=self.actor,
                                           reason="sin observaciones; turnado al enlace administrativo").ticket
        if ticket["state"] == "folio_issued":
            self._notify_once(ticket, parsed, outcome, "folio_issued", self._requester_to(ticket, parsed),
                              cc=[self.enlace_address], requester=ticket["requester"]["name"],
                              system=ticket["requester"]["system"], service=ticket["service"],
                              enlace=self.enlace_name)
            verdict = self.directory.validate(ticket["requester"]["name"], ticket["requester"]["email"])
            if verdict.is_staff:
                return self.store.transition(ticket["id"], "requester_validated", actor="enlace.administrativo",
                                             reason=verdict.reason).ticket
            ticket = self.store.transition(ticket["id"], "rejected", actor="enlace.administrativo",
                                           reason="el solicitante no es personal de la Secretaría",
                                           cause=verdict.reason).ticket
        if ticket["state"] == "rejected":
            self._oficio(ticket, parsed, outcome)
            ticket = self.store.transition(ticket["id"], "notified", actor="enlace.administrativo",
                                           reason="oficio de respuesta enviado a la Mesa de Servicios").ticket
        rejected = ticket["cause"] and not ticket["deployed_serial"]  # not a rollback's cause
        if ticket["state"] == "notified" and rejected:
            ticket = self.store.transition(ticket["id"], "closed", actor=self.actor,
                                           reason="solicitud improcedente atendida con oficio de respuesta").ticket
        if ticket["state"] == "closed" and rejected:
            self._notify_once(ticket, parsed, outcome, "ticket_closed", self._requester_to(ticket, parsed),
                              requester=ticket["requester"]["name"], closed_at=date.today())
        return ticket

    def _oficio(self, ticket, parsed, outcome):
        """Render the oficio de respuesta to <oficios_dir>/<folio>.txt/.html and mail it (Cc Mesa de Servicios)."""
        ctx = dict(folio=ticket["folio"], fecha=date.today(), requester=ticket["requester"]["name"],
                   reason=ticket["cause"], administrative_unit=ticket["requester"]["unit"],
                   firmante=self.firmante)
        subject, text, html = render("oficio_respuesta", template_dir=self.mailer.template_dir, **ctx)
        base = Path(self.oficios_dir) / ticket["folio"]
        for suffix, content in ((".txt", text), (".html", html)):
            _write_atomic(base.with_suffix(suffix), content.encode("utf-8"))
        outcome["oficio"] = str(base.with_suffix(".txt"))
        key = _notice_key("oficio_respuesta", parsed.message_id)
        if not _has_note(ticket, key):
            to = self._requester_to(ticket, parsed)
            message = build_message(subject, text, html, sender=self.mailer.sender, to=to, cc=[self.mesa_address],
                                    reply_to=self.mailer.reply_to, in_reply_to=parsed.message_id)
            send(message, self.mailer.host, self.mailer.port)
            self.store.annotate(ticket["id"], f"{key} enviado a {', '.join([*to, self.mesa_address])}; "
                                f"oficio en {outcome['oficio']}", actor="enlace.administrativo")
        outcome["notices"].append("oficio_respuesta")

    # --- deliveries (step 4.2) ----------------------------------------------------------------------------------
    def _delivery(self, parsed, outcome):
        try:
            ticket = self.store.get(parsed.folio)
        except TicketNotFound:
            raise QuarantineMessage(f"el folio {parsed.folio} no corresponde a ningún ticket") from None
        received_note = f"Entrega recibida ({parsed.message_id})"
        if ticket["state"] == "certificate_received" and _has_note(ticket, received_note):
            return self._launch_renew(ticket, outcome)  # a killed run had committed it: finish its steps
        if ticket["state"] != "requester_validated":
            self._refuse(ticket, parsed, f"el ticket {ticket['folio']} está en '{ticket['state']}' y no espera "
                                         "una entrega de certificado")
        facts = _delivery_facts(parsed)
        fingerprints = facts.pop("fingerprints")
        letter = (normalise_fingerprint(parsed.fingerprint or "") or "").upper() or None
        if letter and letter not in fingerprints:
            self._refuse(ticket, parsed, "FINGERPRINT_MISMATCH: ningún certificado adjunto tiene la huella SHA-256 "
                                         f"que declara el oficio ({parsed.fingerprint})")
        dest = Path(self.deliveries_dir) / ticket["folio"]
        paths = [str(p) for p in extract_attachments(parsed, dest)]
        manifest = _pick_files(paths, ticket["service"])
        manifest.update(facts, folio=ticket["folio"], service=ticket["service"], message_id=parsed.message_id,
                        sender=parsed.sender, files=paths, letter_fingerprint=letter)
        _write_atomic(dest / MANIFEST, json.dumps(manifest, indent=2).encode("utf-8"))
        ticket = self.store.transition(
            ticket["id"], "certificate_received", actor=self.actor,
            reason=f"entrega de {ticket['service'].upper()} por correo ({parsed.sender})",
            note=f"{received_note}: certificado={manifest['certificate'] or manifest['pkcs12']}; "
                 f"huella SHA-256 del oficio={letter or 'no declarada'}; archivos={', '.join(paths)}").ticket
        outcome.update(delivery_dir=str(dest), manifest=str(dest / MANIFEST), files=paths,
                       letter_fingerprint=letter, serial=manifest.get("serial_hex"))
        return self._launch_renew(ticket, outcome)

    def _launch_renew(self, ticket, outcome):
        """Step 4.1 starts: the renew job is launched (once per ticket, noted on it) or its command reported."""
        if not self.on_certificate_received or _has_note(ticket, RENEW_LAUNCHED):
            return ticket
        outcome["renew"] = self.on_certificate_received(ticket)
        if outcome["renew"].get("launched"):
            ticket = self.store.annotate(ticket["id"], f"{RENEW_LAUNCHED}: job {outcome['renew']['job']} "
                                         f"({outcome['renew']['job_url']})", actor=self.actor).ticket
        return ticket

    def _refuse(self, ticket, parsed, reason):
        self.store.annotate(ticket["id"], f"Entrega rechazada ({parsed.message_id}): {reason}", actor=self.actor)
        raise QuarantineMessage(reason)

    # --- helpers ------------------------------------------------------------------------------------------------
    def _requester_to(self, ticket, parsed):
        address = ticket["requester"]["email"]
        return [address] if address and EMAIL_RE.fullmatch(address) else [parsed.sender]

    def _notify_once(self, ticket, parsed, outcome, name, to, cc=(), **ctx):
        key = _notice_key(name, parsed.message_id)
        if not _has_note(ticket, key):
            self.mailer.send(name, to, cc=cc, in_reply_to=parsed.message_id, ticket_id=ticket["id"],
                             folio=ticket["folio"], **ctx)
            self.store.annotate(ticket["id"], f"{key} enviado a {', '.join([*to, *cc])}", actor=self.actor)
        outcome["notices"].append(name)


def _notice_key(name, message_id):
    return f"Aviso {name} por {message_id}"


def _has_note(ticket, prefix):
    return any(note["note"].startswith(prefix) for note in ticket["observations"])


def _delivery_facts(parsed):
    """Fingerprints of every attached certificate, and the serial of the delivered leaf (keys are not opened)."""
    certs = []
    for att in parsed.attachments:
        if att.filename.lower().endswith(SECRET_EXTENSIONS):
            continue
        try:
            certs.extend(parse_certificates(att.content, att.filename))
        except LoadError:
            continue  # cert_validate names the defect when renew.yml validates the delivery
    facts = {"fingerprints": {sha256_fp(c).upper() for c in certs}, "serial_hex": None, "subject": None,
             "anchor_fingerprint": None}
    if certs:
        path, _leaves, _unused = order_chain(certs)
        facts.update(serial_hex=format(path[0].serial_number, "X"), subject=path[0].subject.rfc4514_string(),
                     anchor_fingerprint=sha256_fp(path[-1]).upper())
    return facts


def _pick_files(paths, service):
    """Which extracted file is the certificate, key or PKCS#12 that renew.yml hands to the rollout."""
    by_ext = {}
    for p in paths:
        by_ext.setdefault(Path(p).suffix.lower(), []).append(p)
    pkcs12 = (by_ext.get(".pfx") or by_ext.get(".p12") or [None])[0]
    key = (by_ext.get(".key") or [None])[0]
    certs = [p for ext in (".pem", ".crt", ".cer", ".der") for p in by_ext.get(ext, [])]
    # A chain file (most certificates) says more than a lone root; for an identity the .cer goes with its .key.
    certs.sort(key=lambda p: -Path(p).read_bytes().count(b"-----BEGIN CERTIFICATE"))
    certificate = None if (pkcs12 and not key) else (certs[0] if certs else None)
    return {"certificate": certificate, "private_key": key if service == "sat" else None,
            "pkcs12": pkcs12 if not certificate else None}


def _write_atomic(path, data, mode=0o644):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_atomic(str(path), data, mode)
