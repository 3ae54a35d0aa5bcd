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
it so: "Aviso <name> por <Message-ID> enviado a ... (Message-ID <notice's>)" (that notice was sent) and
"Correo procesado: <Message-ID> [contenido <sha256>]" (the message is done).

What a real mailbox also holds (mail_intake's kinds):
- never loop: automatic mail (Auto-Submitted, out-of-office, read receipts) and our own notices coming back (From:
  the configured sender, or a Message-ID noted as sent) are filed without a ticket and without a quarantine notice;
  an out-of-office that quotes a ticket is noted on it. A bounce (DSN) of a notice is noted on the ticket that sent
  it (found by the notice's Message-ID, else the [Ticket #N] or folio of the returned subject).
- never stop: an error on one message (the store refuses a value, a parse defect...) quarantines that message with
  its reason, redacted of any key material, and the run goes on; a transient outage (SMTP, IMAP, database) stops
  the run with the message left in the inbox for the next one.
- never lose: a Message-ID already processed with the same content (sender, subject, text, attachments) is skipped;
  with other content it is processed as a new message under "<Message-ID> (reenvio <sha256 prefix>)".
- a forwarded provider delivery (message/rfc822 attached by a colleague): the inner From is a claim, the forward is
  the colleague's; it is quarantined with its fingerprint recorded as a claim, until an operator releases it.
"""
from __future__ import annotations

import email.utils
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from ansible.module_utils.cert_files import write_atomic
from ansible.module_utils.cert_validation import normalise_fingerprint, order_chain, sha256_fp
from ansible.module_utils.imap_mailbox import preview as imap_preview
from ansible.module_utils.imap_mailbox import process_imap
from ansible.module_utils.mail_auth import authenticate, domain_in
from ansible.module_utils.mail_intake import (
    EMAIL_RE,
    FILED_KINDS,
    SECRET_EXTENSIONS,
    QuarantineMessage,
    ServiceRequest,
    extract_attachments,
    parse_message,
    process_maildir,
    redact,
    release_from_maildir,
)
from ansible.module_utils.notify import build_message, notice, send
from ansible.module_utils.observations import DEFAULT_INSTITUTIONAL_DOMAINS, DEFAULT_RANKS, evaluate
from ansible.module_utils.oficio import assigned as oficio_assigned
from ansible.module_utils.oficio import check_signer
from ansible.module_utils.oficio import file_stem as oficio_file_stem
from ansible.module_utils.oficio import format_number as oficio_number
from ansible.module_utils.oficio import issue as oficio_issue
from ansible.module_utils.oficio import number_note as oficio_note
from ansible.module_utils.oficio import settings as oficio_settings
from ansible.module_utils.providers import registry
from ansible.module_utils.sla import now_local
from ansible.module_utils.ticket_store import TicketNotFound
from ansible.module_utils.x509_load import LoadError, parse_certificates

PROCESSED = "Correo procesado: "
CONTENT = " [contenido "
# The Message-ID of each notice sent, in its "Aviso ..." note: a bounce finds its ticket by it, and the notice coming
# back is recognised as ours.
SENT_ID_RE = re.compile(r"\(Message-ID (<[^<>\s]+>)\)")
# States in which a ticket waits for the provider's certificate.
AWAITING_CERTIFICATE = ("requester_validated", "rolled_back", "reopened")  # rolled_back: a corrected delivery
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
    providers: object = None  # the provider registry: how a notice names a provider (Intake sets it)

    def send(self, name, to, cc=(), in_reply_to=None, **ctx):
        """Send notice `name`; returns its Message-ID."""
        if in_reply_to:  # a resend's key "<id> (reenvio ...)": the header names the message itself
            in_reply_to = in_reply_to.split(" (", 1)[0]
        message = notice(name, sender=self.sender, to=to, cc=cc, reply_to=self.reply_to, in_reply_to=in_reply_to,
                         template_dir=self.template_dir, providers=self.providers, **ctx)
        send(message, self.host, self.port)
        return str(message["Message-ID"])


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
    # The provider registry (providers.Registry, or the inventory's procedure_providers): each provider's kind
    # (trust anchor or client identity), sender domains, folio prefix and names.
    providers: object = None
    # How a sender is authenticated (mail_auth.authenticate's options): trusted_authserv_ids, mode, nameservers.
    # With no trusted receiving server and mode "header", nothing is authenticated: every mail is quarantined.
    sender_auth: dict = field(default_factory=dict)
    outcomes: list = field(default_factory=list)

    def __post_init__(self):
        if self.providers is None:
            raise ValueError("the intake needs the provider registry (procedure_providers)")
        self.providers = registry(self.providers)
        if self.mailer is not None and self.mailer.providers is None:
            self.mailer.providers = self.providers

    # --- the run ---------------------------------------------------------------------------------------------
    def run(self, mailbox, quarantine_dir=None, release=(), operator=None, **parse_options):
        """Process the inbox (a Maildir path, or an imap_mailbox.ImapMailbox); returns one outcome dict per message
        (also kept in self.outcomes on a crash). `release`: Message-IDs an operator takes out of quarantine to be
        processed again, as sent; they pass sender authentication on that operator's word, recorded on the ticket."""
        self._processed, self._sent_ids = {}, set()
        for ticket in self.store.find():
            for note in ticket["observations"]:
                if note["note"].startswith(PROCESSED):
                    key, _sep, digest = note["note"][len(PROCESSED):].partition(CONTENT)
                    self._processed.setdefault(key, set()).add(digest.rstrip("]") or None)  # None: before digests
                self._sent_ids.update(SENT_ID_RE.findall(note["note"]))
        parse_options.setdefault("providers", self.providers)
        parse_options.setdefault("own_senders", [email.utils.parseaddr(self.mailer.sender)[1]] if self.mailer else [])
        parse_options.setdefault("own_message_ids", self._sent_ids)  # grows as this run sends
        self._released = {}
        if release and not operator:
            raise ValueError("releasing a message from quarantine needs the operator's name (operator)")
        for message_id in release:
            raws = (mailbox.release(message_id) if hasattr(mailbox, "release")
                    else release_from_maildir(quarantine_dir, mailbox, message_id))
            if not raws:
                raise ValueError(f"no message with Message-ID {message_id} in quarantine")
            if len({hashlib.sha256(raw).hexdigest() for raw in raws}) > 1:
                # Anyone can reuse a Message-ID: the operator vouched for one message, not for whatever shares its id.
                raise ValueError(f"{len(raws)} different quarantined messages carry Message-ID {message_id}: none was "
                                 "released on the operator's word (they go back to quarantine on the next run); "
                                 "review them in the quarantine folder")
            self._released.update({hashlib.sha256(raw).hexdigest(): operator for raw in raws})

        def quarantined(name, reason, parsed):
            # The Mesa's notice goes before the message moves: a notice that cannot be sent leaves it in the inbox.
            qfile = (f"{mailbox.quarantine_folder}/{name}" if hasattr(mailbox, "messages")
                     else str(Path(quarantine_dir) / "new" / name.split(":", 1)[0]))
            shown = redact(parsed.message_id) if parsed else name
            self._sent_ids.add(self.mailer.send(
                "quarantine", [self.mesa_address], message_id=shown,
                original_subject=redact(parsed.subject, 120) if parsed else "", reason=reason,
                original_sender=redact(parsed.sender, 120) if parsed else "", quarantine_file=qfile))
            self.outcomes.append({"file": name, "message_id": shown if parsed else None,
                                  "kind": parsed.kind if parsed else "unknown", "outcome": "quarantined",
                                  "reason": reason, "quarantine_file": qfile, "notices": ["quarantine"]})

        hooks = dict(seen=self._processed.__contains__, prepare=self._prepare, on_quarantine=quarantined)
        if hasattr(mailbox, "messages"):
            result = process_imap(mailbox, self._handle, **hooks, **parse_options)
        else:
            result = process_maildir(mailbox, self._handle, quarantine_dir, **hooks, **parse_options)
        for name, message_id in result.skipped:
            self.outcomes.append({"file": name, "message_id": redact(message_id), "outcome": "skipped",
                                  "reason": "Message-ID ya procesado con el mismo contenido"})
        return self.outcomes

    def _prepare(self, parsed):
        """A Message-ID processed before with other content (a client reusing it) is a new message: re-keyed."""
        digests = self._processed.get(parsed.message_id)
        if parsed.kind in FILED_KINDS or digests is None or None in digests or parsed.digest in digests:
            return
        parsed.message_id = f"{parsed.message_id} (reenvio {parsed.digest[:12]})"

    def preview(self, maildir, **parse_options):
        """Check mode: how each message in new/ (or the IMAP folder) would be classified; nothing is written or
        sent, nothing on the server is flagged or moved."""
        if self.mailer:
            parse_options.setdefault("own_senders", [email.utils.parseaddr(self.mailer.sender)[1]])
        parse_options.setdefault("providers", self.providers)
        if hasattr(maildir, "messages"):
            return imap_preview(maildir, **parse_options)
        parse_options.pop("max_message_bytes", None)
        new = Path(maildir) / "new"
        names = sorted(n for n in os.listdir(new) if not n.startswith(".")) if new.is_dir() else []
        out = []
        for name in names:
            parsed = parse_message((new / name).read_bytes(), **parse_options)
            outcome = ("would_file" if parsed.kind in FILED_KINDS else
                       "would_quarantine" if parsed.quarantine else "would_process")
            out.append({"file": name, "message_id": redact(parsed.message_id), "kind": parsed.kind,
                        "folio": parsed.folio, "outcome": outcome, "reason": parsed.reason or parsed.auto})
        return out

    def _handle(self, parsed):
        parsed.released_by = getattr(self, "_released", {}).get(hashlib.sha256(parsed.raw).hexdigest())
        if parsed.kind in FILED_KINDS:
            return self._file(parsed)
        handler = {"request": self._request, "reply": self._reply, "delivery": self._delivery}[parsed.kind]
        outcome = {"message_id": parsed.message_id, "kind": parsed.kind, "notices": []}
        if " (reenvio " in parsed.message_id:
            outcome["resent"] = "Message-ID ya procesado con otro contenido: se procesa como correo nuevo"
        tickets = handler(parsed, outcome)
        done = f"{PROCESSED}{parsed.message_id}{CONTENT}{parsed.digest}]"
        tickets = [self.store.annotate(t["id"], done, actor=self.actor).ticket
                   for t in (tickets if isinstance(tickets, list) else [tickets])]
        self._processed.setdefault(parsed.message_id, set()).add(parsed.digest)
        ticket = tickets[0]
        if len(tickets) > 1:
            outcome["tickets"] = [{"ticket": t["id"], "folio": t["folio"], "state": t["state"]} for t in tickets]
        outcome.update(ticket=ticket["id"], folio=ticket["folio"], state=ticket["state"])
        outcome.setdefault("outcome", ticket["state"])
        self.outcomes.append(outcome)
        return outcome

    # --- automatic mail and bounces: filed, never answered (RFC 3834) -------------------------------------------
    def _file(self, parsed):
        """An auto-reply, read receipt or our own notice come back: filed. A bounce is noted on the ticket whose
        notice it returns; an out-of-office quoting a ticket is noted on it. Never a ticket, never a notice."""
        outcome = {"message_id": redact(parsed.message_id), "kind": parsed.kind, "outcome": "filed",
                   "reason": parsed.auto, "notices": []}
        ticket, note = None, None
        if parsed.kind == "bounce":
            facts = parsed.bounce or {}
            original = facts.get("original_message_id")
            ticket = self._ticket_of_notice(original) or self._ticket_referenced(parsed)
            who = "; ".join(" ".join(x for x in (r["recipient"], r["action"] or "", r["status"] or "",
                                                 r["diagnostic"] or "") if x) for r in facts.get("recipients", []))
            recipients = facts.get("recipients") or []
            failed = not recipients or any((r["action"] or "failed") == "failed" for r in recipients)
            what = "no se entregó" if failed else "tiene un aviso de entrega"
            to = redact(who, 300) or "(destinatario no indicado)"
            subject = redact(facts.get("original_subject") or "", 120)
            note = (f"Rebote ({redact(parsed.message_id, 200)}): el aviso "
                    f"{redact(original or '(sin Message-ID)', 200)} «{subject}»"
                    f" {what} a {to} (informe de {redact(parsed.sender or 'remitente vacío', 80)}, no autenticado: "
                    "no cambia el estado del ticket)")
            outcome["bounce"] = {"original_message_id": original, "failed": failed}
        elif not parsed.own and (parsed.ticket_id or parsed.folio):
            ticket = self._ticket_referenced(parsed)
            note = (f"Respuesta automática ({redact(parsed.message_id, 200)}) de {redact(parsed.sender, 80)}: "
                    f"«{redact(parsed.subject, 120)}»")
        if ticket is not None:
            prefix = note.split(":", 1)[0]
            if not _has_note(ticket, prefix):
                ticket = self.store.annotate(ticket["id"], note, actor=self.actor).ticket
            outcome.update(ticket=ticket["id"], folio=ticket["folio"], state=ticket["state"])
        self.outcomes.append(outcome)
        return outcome

    def _ticket_of_notice(self, message_id):
        """The ticket whose notes record that this notice was sent."""
        if not message_id:
            return None
        marker = f"(Message-ID {message_id})"
        return next((t for t in self.store.find() if any(marker in n["note"] for n in t["observations"])), None)

    def _ticket_referenced(self, parsed):
        for ref in (parsed.ticket_id, parsed.folio):
            if ref:
                try:
                    return self.store.get(ref)
                except TicketNotFound:
                    continue
        return None

    # --- requests and replies (steps 1.2, 2.1–2.3, 3.1–3.2) ---------------------------------------------------
    def _request(self, parsed, outcome):
        verdict = self._authenticated(parsed, outcome)
        if not verdict.authenticated:
            self._warn_address_of_record(parsed, verdict, outcome)
            raise QuarantineMessage(f"solicitud no autenticada: el remitente {parsed.sender or '(sin From:)'} no "
                                    f"está autenticado por el servidor de correo ({verdict.detail}); no se abrió "
                                    "ticket")
        request = parsed.request
        claimed = request.requester_email
        # Who asks is the authenticated From:, never the "Correo:" line of the body (a claim).
        request.requester_email = verdict.from_address
        # A ticket needs a provider: one the request does not name is filed under the registry's default until the
        # requester's reply corrects it (evaluate() names the defect).
        service = request.service if request.service in self.providers else self.providers.default().name
        fields = request.ticket_fields()
        created = self.store.create(service, actor=self.actor, requester=fields["requester"],
                                    forwarded_by=fields["forwarded_by"], source="mail",
                                    received_at=parsed.received_at,  # the SLA clock starts when the mail arrived
                                    message_id=parsed.message_id, reason="solicitud recibida por correo")
        outcome["opened"] = created.changed
        ticket = created.ticket
        if claimed and claimed != verdict.from_address:
            ticket = self.store.annotate(ticket["id"], f"Correo declarado en el cuerpo ({claimed}) distinto del "
                                         f"remitente autenticado ({verdict.from_address}): se usa el remitente",
                                         actor=self.actor).ticket
        return self._advance(ticket, parsed, outcome)

    def _reply(self, parsed, outcome):
        ticket = self._ticket_quoted(parsed)
        verdict = self._authenticated(parsed, outcome)
        requester = (ticket["requester"]["email"] or "").lower()
        if not verdict.authenticated or verdict.from_address != requester:
            raise QuarantineMessage(f"respuesta al ticket {ticket['folio'] or ticket['id']} no aceptada: "
                                    + (f"remitente no autenticado ({verdict.detail})" if not verdict.authenticated
                                       else f"la envía {verdict.from_address}, no el solicitante del ticket"))
        if ticket["state"] != "observations":
            return self.store.annotate(ticket["id"], f"Respuesta del solicitante ({parsed.message_id}) recibida en "
                                       f"'{ticket['state']}': sin cambios", actor=self.actor).ticket
        merged = ServiceRequest.from_ticket(ticket).merged(parsed.request or ServiceRequest())
        merged.requester_email = requester  # the requester's address is the authenticated one, whatever the body says
        fields = merged.ticket_fields()
        if fields["service"] not in self.providers:
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
            found = evaluate(request, self.catalog, self.institutional_domains, self.ranks, providers=self.providers)
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
            verdict = self.directory.validate(ticket["requester"]["name"], ticket["requester"]["email"])
            if verdict.is_staff:
                # "Turnado por" is a name in the body: it counts only when it names active staff.
                forwarder = self.directory.validate_forwarder(ticket["forwarded_by"]["name"])
                verdict = forwarder if not forwarder.is_staff else verdict
            if verdict.is_staff:
                # Only a request that goes on hears "folio asignado, turnado al enlace"; a rejected one gets the
                # oficio alone, which cites the folio: one coherent message, not three in the same second.
                self._notify_once(ticket, parsed, outcome, "folio_issued", self._requester_to(ticket, parsed),
                                  cc=[self.enlace_address], requester=ticket["requester"]["name"],
                                  system=ticket["requester"]["system"], service=ticket["service"],
                                  enlace=self.enlace_name)
                return self.store.transition(ticket["id"], "requester_validated", actor="enlace.administrativo",
                                             reason=verdict.reason).ticket
            ticket = self.store.transition(ticket["id"], "rejected", actor="enlace.administrativo",
                                           reason="el solicitante o quien turna no es personal de la Secretaría",
                                           cause=verdict.reason).ticket
        if ticket["state"] == "rejected":
            self._oficio(ticket, parsed, outcome)
            ticket = self.store.transition(ticket["id"], "notified", actor="enlace.administrativo",
                                           reason="oficio de respuesta enviado a la Mesa de Servicios").ticket
        rejected = ticket["cause"] and not ticket["deployed_serial"]  # not a rollback's cause
        if ticket["state"] == "notified" and rejected:
            # The oficio already told the requester the folio is answered and its ticket closes: no "cierre" notice
            # (its text is the one for a completed renewal).
            ticket = self.store.transition(ticket["id"], "closed", actor=self.actor,
                                           reason="solicitud improcedente atendida con oficio de respuesta").ticket
        return ticket

    def _oficio(self, ticket, parsed, outcome):
        """The oficio de respuesta (module_utils/oficio.py): numbered once in its unit's yearly series, the number
        noted on the ticket in the same transaction (gap-free, and a rerun reuses it); written to <oficios_dir> as
        <folio>.txt/.html/.pdf; mailed once with the text as body and the PDF attached, Cc the Mesa de Servicios
        and each c.c.p. with an address. Settings: `self.oficio` (the inventory's procedure_oficio) over the
        defaults; with firmante_requerido and no signer nothing is numbered or sent (OficioError: the run stops
        and the message waits in the inbox)."""
        conf = oficio_settings(getattr(self, "oficio", None), self.firmante)
        check_signer(conf)
        numbered = oficio_assigned(ticket)
        if numbered is None:
            now = now_local()
            with self.store.transaction():
                number = oficio_number(conf, self.store.next_oficio_number(conf["serie"], now.year), now.year)
                ticket = self.store.annotate(ticket["id"], oficio_note(number), actor="enlace.administrativo",
                                             now=now).ticket
            numbered = oficio_assigned(ticket)
        number, at = numbered
        doc = oficio_issue(conf, ticket, number, at, self.mailer.template_dir, self.providers)
        base = Path(self.oficios_dir) / ticket["folio"]
        for suffix, content in ((".txt", doc["text"].encode("utf-8")), (".html", doc["html"].encode("utf-8")),
                                (".pdf", doc["pdf"])):
            _write_file(base.with_suffix(suffix), content)
        outcome.update(oficio=str(base.with_suffix(".txt")), oficio_pdf=str(base.with_suffix(".pdf")),
                       oficio_numero=number)
        key = _notice_key("oficio_respuesta", parsed.message_id)
        if not _has_note(ticket, key):
            to = self._requester_to(ticket, parsed)
            cc = [self.mesa_address, *(c["correo"] for c in conf["ccp"] if c.get("correo"))]
            message = build_message(doc["subject"], doc["text"], doc["html"], sender=self.mailer.sender, to=to, cc=cc,
                                    reply_to=self.mailer.reply_to, in_reply_to=parsed.message_id.split(" (", 1)[0],
                                    attachments=[(f"oficio-{oficio_file_stem(number)}.pdf", doc["pdf"],
                                                  "application/pdf")])
            send(message, self.mailer.host, self.mailer.port)
            getattr(self, "_sent_ids", set()).add(str(message["Message-ID"]))
            self.store.annotate(ticket["id"], f"{key} enviado a {', '.join([*to, *cc])} (Message-ID "
                                f"{message['Message-ID']}); oficio {number} en {outcome['oficio_pdf']}",
                                actor="enlace.administrativo")
        outcome["notices"].append("oficio_respuesta")

    # --- deliveries (step 4.2) ----------------------------------------------------------------------------------
    def _delivery(self, parsed, outcome):
        """A provider's certificate: accepted only from its configured domains, authenticated (or released by a named
        operator); attached to the folio it quotes, else to every ticket of that provider awaiting a certificate,
        else to a ticket opened for it. The letter's fingerprint is recorded as evidence only when the mail is
        authenticated, as a claim otherwise; what hosts trust is decided later from the anchor registry."""
        provider = self.provider_of(parsed.sender)
        forwarded = self.provider_of((parsed.forwarded or {}).get("from")) if provider is None else None
        if forwarded and not parsed.released_by:
            # The inner From: of a forward is whatever the forwarder's mail says: a claim, never authentication.
            verdict = self._authenticated(parsed, outcome)
            facts = _delivery_facts(parsed)
            facts.pop("fingerprints")
            letter = (normalise_fingerprint(parsed.fingerprint or "") or "").upper() or None
            self._record_letter(forwarded, self.providers.get(forwarded).kind, facts, letter, parsed,
                                authenticated=False)
            raise QuarantineMessage(
                f"entrega de {self._shown(forwarded)} reenviada por {parsed.sender or '(sin From:)'} "
                f"({'reenvío autenticado' if verdict.authenticated else 'reenvío no autenticado'}): el remitente "
                f"original ({parsed.forwarded['from']}) es solo lo que dice el reenvío y no se puede autenticar; su "
                f"huella queda registrada como afirmación. Pida que {self._shown(forwarded)} la envíe directamente "
                f"al buzón de la Mesa o, si es genuina, registre la huella confirmada por otro canal (ansible-playbook "
                f"playbooks/anchor.yml -e provider={forwarded} -e fingerprint=<huella> -e operator=<usted> -e "
                f"channel=telefono) y libere el correo (ansible-playbook playbooks/intake.yml "
                f"-e release='{parsed.message_id}' -e operator=<usted>)")
        provider = provider or forwarded  # a forward released by a named operator: on that operator's word
        if provider is None:
            raise QuarantineMessage(
                f"entrega de certificados desde {parsed.sender or '(sin From:)'}: el dominio no es de ningún proveedor "
                f"configurado ({', '.join(self.providers.domains())})")
        verdict = self._authenticated(parsed, outcome)
        facts = _delivery_facts(parsed)
        fingerprints = facts.pop("fingerprints")
        letter = (normalise_fingerprint(parsed.fingerprint or "") or "").upper() or None
        kind = self.providers.get(provider).kind
        if not verdict.authenticated:
            self._record_letter(provider, kind, facts, letter, parsed, authenticated=False)
            raise QuarantineMessage(
                f"entrega de {self._shown(provider)} no autenticada ({verdict.detail}): no se acepta y su huella queda "
                "registrada solo como afirmación. Si es genuina: registre la huella confirmada por otro canal "
                f"(ansible-playbook playbooks/anchor.yml -e provider={provider} -e fingerprint=<huella> "
                "-e operator=<usted> -e channel=telefono) y libere el correo (ansible-playbook playbooks/intake.yml "
                f"-e release='{parsed.message_id}' -e operator=<usted>)")
        if letter and letter not in fingerprints:
            reason = ("FINGERPRINT_MISMATCH: ningún certificado adjunto tiene la huella SHA-256 que declara el oficio "
                      f"({parsed.fingerprint})")
            quoted = self._quoted_ticket(parsed.folio)
            if quoted is not None:
                self._refuse(quoted, parsed, reason)
            raise QuarantineMessage(reason)
        tickets = self._delivery_tickets(provider, parsed, outcome)
        received_note = f"Entrega recibida ({parsed.message_id})"
        done = []
        for ticket in tickets:
            if ticket["state"] == "certificate_received" and _has_note(ticket, received_note):
                done.append(self._launch_renew(ticket, outcome))  # a killed run had committed it: finish its steps
                continue
            dest = Path(self.deliveries_dir) / ticket["folio"]
            paths = [str(p) for p in extract_attachments(parsed, dest)]
            manifest = _pick_files(paths, kind)
            manifest.update(facts, folio=ticket["folio"], service=provider, kind=kind, message_id=parsed.message_id,
                            sender=parsed.sender, authenticated=verdict.as_dict(), files=paths,
                            letter_fingerprint=letter)
            _write_file(dest / MANIFEST, json.dumps(manifest, indent=2).encode("utf-8"))
            how = (f"liberada de cuarentena por {parsed.released_by}" if parsed.released_by
                   else f"autenticada: {verdict.method}")
            ticket = self.store.transition(
                ticket["id"], "certificate_received", actor=self.actor,
                reason=f"entrega de {self._shown(provider)} por correo ({parsed.sender}, {how})",
                note=f"{received_note}: certificado={manifest['certificate'] or manifest['pkcs12']}; "
                     f"huella SHA-256 del oficio={letter or 'no declarada'}; archivos={', '.join(paths)}").ticket
            outcome.update(delivery_dir=str(dest), manifest=str(dest / MANIFEST), files=paths,
                           letter_fingerprint=letter, serial=manifest.get("serial_hex"))
            done.append(self._launch_renew(ticket, outcome))
        self._record_letter(provider, kind, facts, letter, parsed, authenticated=not parsed.released_by,
                            ticket=done[0]["folio"])
        return done

    def _delivery_tickets(self, provider, parsed, outcome):
        """The tickets a delivery completes: the quoted folio's, else every one awaiting this provider's certificate
        (and those a killed run already gave this message), else a new ticket opened for the provider."""
        received_note = f"Entrega recibida ({parsed.message_id})"
        if parsed.folio:
            try:
                ticket = self.store.get(parsed.folio)
            except TicketNotFound:
                raise QuarantineMessage(f"el folio {parsed.folio} no corresponde a ningún ticket") from None
            if ticket["service"] != provider:
                raise QuarantineMessage(f"el folio {parsed.folio} es de {self._shown(ticket['service'])}, pero la "
                                        f"entrega viene de {self._shown(provider)} ({parsed.sender})")
            if ticket["state"] not in AWAITING_CERTIFICATE and not _has_note(ticket, received_note):
                self._refuse(ticket, parsed, f"el ticket {ticket['folio']} está en '{ticket['state']}' y no espera "
                                             "una entrega de certificado")
            return [ticket]
        tickets = [t for t in self.store.find(service=provider, states=[*AWAITING_CERTIFICATE, "certificate_received"])
                   if t["state"] in AWAITING_CERTIFICATE or _has_note(t, received_note)]
        if tickets:
            return tickets
        created = self.store.create(provider, actor=self.actor, source="provider", message_id=parsed.message_id,
                                    received_at=parsed.received_at,
                                    requester={"name": parsed.sender_name or self._shown(provider),
                                               "email": parsed.sender},
                                    reason=f"entrega de {self._shown(provider)} sin folio y sin ticket en espera: "
                                           "ticket abierto por el proveedor")
        ticket = created.ticket
        outcome["opened"] = created.changed
        if ticket["state"] == "received":
            ticket = self.store.transition(ticket["id"], "folio_issued", actor=self.actor,
                                           reason="entrega del proveedor sin solicitud previa").ticket
        if ticket["state"] == "folio_issued":
            ticket = self.store.transition(ticket["id"], "requester_validated", actor=self.actor,
                                           reason=f"remitente autenticado del proveedor {self._shown(provider)}; "
                                                  "no hay solicitante que validar").ticket
        return [ticket]

    def _quoted_ticket(self, folio):
        try:
            return self.store.get(folio) if folio else None
        except TicketNotFound:
            return None

    def _record_letter(self, provider, kind, facts, letter, parsed, authenticated, ticket=None):
        """The letter's fingerprint in the anchor registry: evidence when the mail is authenticated, else a claim."""
        if kind != "trust" or not letter:
            return
        anchor = facts.get("anchor_fingerprint")
        evidence = "authenticated_mail" if authenticated and anchor else "claim"
        fingerprint = anchor if evidence == "authenticated_mail" else letter
        detail = (f"el oficio del correo autenticado de {parsed.sender} declara la huella {letter}"
                  if evidence == "authenticated_mail" else
                  f"huella declarada en un correo {'liberado' if parsed.released_by else 'no autenticado'} de "
                  f"{parsed.sender or '(sin From:)'} (afirmación, no evidencia)")
        self.store.anchor_add_evidence(provider, fingerprint, evidence, detail, actor=self.actor, ticket=ticket,
                                       message_id=parsed.message_id)

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
    def provider_of(self, sender):
        """The provider whose sender domains hold the sender's domain, or None."""
        domain = (sender or "").rpartition("@")[2].lower()
        return next((p.name for p in self.providers if domain and domain_in(domain, p.sender_domains)), None)

    def _shown(self, name):
        """A provider as people read it (its display name)."""
        return self.providers.get(name).display_name if name in self.providers else str(name).upper()

    def _authenticated(self, parsed, outcome):
        """Who sent it, decided by the trusted receiving server / DKIM, or by the operator who released it."""
        verdict = authenticate(parsed.raw, **self.sender_auth)
        if parsed.released_by and not verdict.authenticated and verdict.from_address:
            verdict.authenticated, verdict.method = True, f"operator:{parsed.released_by}"
            verdict.detail = f"not authenticated ({verdict.detail}); released from quarantine by {parsed.released_by}"
        outcome["authentication"] = verdict.as_dict()
        return verdict

    def _warn_address_of_record(self, parsed, verdict, outcome):
        """An unauthenticated mail in a staff member's name: tell that person at the directory's address, never
        whoever sent it (the quarantine notice tells the Mesa)."""
        member = self.directory.find(verdict.from_address) if verdict.from_address else None
        if member is None:
            return
        self.mailer.send("unauthenticated", [member.email], message_id=parsed.message_id,
                         original_subject=parsed.subject, original_sender=parsed.sender, detail=verdict.detail,
                         mesa=self.mesa_address)
        outcome["notices"].append("unauthenticated")

    def _requester_to(self, ticket, parsed):
        address = ticket["requester"]["email"]
        return [address] if address and EMAIL_RE.fullmatch(address) else [parsed.sender]

    def _notify_once(self, ticket, parsed, outcome, name, to, cc=(), **ctx):
        key = _notice_key(name, parsed.message_id)
        if not _has_note(ticket, key):
            sent = self.mailer.send(name, to, cc=cc, in_reply_to=parsed.message_id, ticket_id=ticket["id"],
                                    folio=ticket["folio"], **ctx)
            getattr(self, "_sent_ids", set()).add(sent)
            self.store.annotate(ticket["id"], f"{key} enviado a {', '.join([*to, *cc])} (Message-ID {sent})",
                                actor=self.actor)
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


def _pick_files(paths, kind):
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
    return {"certificate": certificate, "private_key": key if kind == "identity" else None,
            "pkcs12": pkcs12 if not certificate else None}


def _write_file(path, data):
    """One atomic write (cert_files.write_atomic) into a directory created private when missing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_atomic(str(path), data, 0o644)
