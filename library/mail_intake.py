#!/usr/bin/python
# Copyright: (c) 2026, DGTIC Operaciones
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible module: read the Mesa de Servicios mailbox and take each e-mail through its steps of the procedure."""

DOCUMENTATION = r"""
---
module: mail_intake
short_description: Process the Mesa de Servicios mailbox of the certificate renewal procedure
description:
  - Reads every message in the C(new/) folder of the Mesa de Servicios Maildir, oldest first, and applies the
    procedure's steps 1.2 to 4.2 to it.
  - A request opens a ticket (C(received)). With observations it goes to C(observations) and the requester gets a
    Spanish notice listing each one; without, it gets a folio (C(folio_issued)), notified to the requester and the
    enlace administrativo. The requester is then looked up in the staff directory; staff goes to
    C(requester_validated), anyone else to C(rejected) with an oficio de respuesta written to O(oficios_dir) and
    mailed (Cc the Mesa de Servicios), and the ticket is notified and closed.
  - 'A reply quoting C([Ticket #N]) or the folio corrects the data of a ticket in C(observations) and re-evaluates it.'
  - A RENAPO/SAT delivery is matched by the folio in its subject or body to a ticket in C(requester_validated).
    When the letter states a SHA-256 fingerprint, one attached certificate must have it. The attachments (also
    inside a .zip) are written to C(<deliveries_dir>/<folio>/) with a C(delivery.json) manifest (paths, letter
    fingerprint, serial) and the ticket goes to C(certificate_received). Key bytes and passphrases never reach the
    ticket.
  - A message that cannot be understood, or a delivery that does not fit its ticket, is moved untouched to
    O(quarantine_dir) with an C(X-Quarantine-Reason) header, and the Mesa de Servicios gets a notice.
  - A message leaves C(new/) only after its ticket is committed; a run killed at any point is finished by the
    next one. A Message-ID already processed with the same content is skipped; with other content (a client
    reusing it) it is processed as a new message.
  - Never loop (RFC 3834). Automatic mail (C(Auto-Submitted) other than C(no), out-of-office replies, read
    receipts) and the procedure's own notices coming back (From O(sender), or a Message-ID noted as sent) are
    filed in O(imap.filed_folder) (a Maildir files them in C(cur/)) without a ticket and without a quarantine
    notice; a bounce (delivery status notification) of a notice is noted on its ticket.
  - Never stop. An error on one message (a value the store refuses, a defect the parser finds) quarantines that
    message with its reason, never repeating key material, and the run goes on. A transient outage (SMTP, IMAP,
    database) stops the run with the message left in the mailbox for the next run. A message larger than
    O(max_message_bytes) is quarantined unread.
  - A forwarded provider delivery (the provider's mail attached by a colleague) is quarantined with its
    fingerprint recorded as a claim (the inner sender cannot be authenticated). An operator may release it.
  - Outlook's C(winmail.dat) (TNEF) is unpacked; an attachment holding a private key is written with mode 0600
    whatever its name.
extends_documentation_fragment: [providers, store, attributes]
version_added: "0.1.0"
author: DGTIC Operaciones (@dgtic-operaciones)
options:
  inbox:
    description:
      - The Mesa de Servicios mailbox as a Maildir (with C(new/), C(cur/), C(tmp/)); for tests and small sites.
      - Give exactly one of O(inbox) and O(imap).
    type: path
  quarantine_dir:
    description: With O(inbox), the Maildir where messages that cannot be processed are kept, each with the reason.
    type: path
  imap:
    description:
      - The Mesa de Servicios mailbox where it lives, over IMAP. Each message is moved to O(imap.processed_folder)
        once its ticket is committed, or to O(imap.quarantine_folder) with the reason; a crash never loses or doubles
        one.
    type: dict
    suboptions:
      host:
        description: IMAP server.
        type: str
        required: true
      port:
        description: IMAP port (993 for implicit TLS, 143 for STARTTLS).
        type: int
        default: 993
      user:
        description: Mailbox user.
        type: str
        required: true
      password_file:
        description: File holding the password (an AWX credential injects it as a file).
        type: path
      oauth2_token_file:
        description: File holding an OAuth2 bearer token for C(AUTHENTICATE XOAUTH2) (Exchange Online).
        type: path
      tls:
        description: C(implicit) TLS, C(starttls), or C(none) (plain, refused unless the host is loopback).
        type: str
        choices: [implicit, starttls, none]
        default: implicit
      ca_file:
        description: CA certificates the server's certificate is verified against (default the system's).
        type: path
      server_name:
        description: Name the server's certificate must carry, when O(imap.host) is an address.
        type: str
      folder:
        description: Folder read.
        type: str
        default: INBOX
      processed_folder:
        description: Folder a processed message is moved to.
        type: str
        default: Procesados
      quarantine_folder:
        description: Folder a quarantined message is moved to, with its reason.
        type: str
        default: Cuarentena
      filed_folder:
        description: Folder automatic mail (auto-replies, the procedure's own notices, bounces) is filed in.
        type: str
        default: Automaticos
  sender_auth:
    description:
      - How the sender of every message is authenticated (DKIM aligned with the From domain). A request, reply or
        delivery whose sender is not authenticated goes to quarantine; a staff member named in its From gets a
        notice at the directory's address.
    type: dict
    suboptions:
      trusted_authserv_ids:
        description: Authserv-ids of the receiving servers whose topmost C(Authentication-Results) header is read.
        type: list
        elements: str
        default: []
      mode:
        description: C(header) (the trusted server's verdict), C(dkim) (verified here), C(either) or C(both).
        type: str
        choices: [header, dkim, either, both]
        default: header
      nameservers:
        description: DNS servers for O(sender_auth.mode=dkim) (C(ip) or C(ip@port)); default the system's.
        type: list
        elements: str
        default: []
  release:
    description:
      - Message-IDs an operator takes out of quarantine to be processed again as they arrived; their sender counts
        as authenticated on O(operator)'s word, recorded on the ticket. Trust in a certificate still needs evidence
        in the anchor registry.
    type: list
    elements: str
    default: []
  operator:
    description: The operator who releases O(release) (required with it).
    type: str
  staff_directory:
    description:
      - The Secretaría's staff directory, a C(.yml), C(.yaml) or C(.csv) file, or a C(scheme://) URL of a backend
        registered in C(staff_directory.BACKENDS) (for example LDAP).
    type: str
    required: true
  catalog:
    description:
      - Systems the DGTIC administers, each with the providers it has a convenio for (names, display names or
        aliases of the registry, O(providers)).
      - 'For example C({"Padrón de Productores": [renapo, sat]}).'
    type: dict
    required: true
  deliveries_dir:
    description: Directory under which each ticket's delivery is extracted, one C(<folio>/) directory per ticket.
    type: path
    required: true
  oficios_dir:
    description: Directory where each oficio de respuesta is written as C(<folio>.txt) and C(<folio>.html).
    type: path
    required: true
  mesa_address:
    description: E-mail address of the Mesa de Servicios (quarantine notices, Cc of the oficios).
    type: str
    required: true
  enlace_address:
    description: E-mail address of the enlace administrativo, copied on the folio notice.
    type: str
    required: true
  enlace_name:
    description: Name of the enlace administrativo, quoted in the folio notice.
    type: str
  sender:
    description: From address of every notice.
    type: str
    required: true
  firmante:
    description: Name that signs the oficio de respuesta.
    type: str
  oficio:
    description:
      - "How the oficio de respuesta is written (C(module_utils/oficio.py)): letterhead lines, the numbering series,
        lugar, fundamento, the signer's cargo, c.c.p. With C(firmante_requerido=true) (production) nothing is
        numbered or sent while O(firmante) is empty, and the message waits in the mailbox."
    type: dict
  smtp_host:
    description: SMTP server the notices go through.
    type: str
    default: localhost
  smtp_port:
    description: Port of the SMTP server.
    type: int
    default: 25
  template_dir:
    description:
      - Directory holding C(notices/) and C(oficio/) Jinja2 templates; a playbook passes
        C({{ playbook_dir }}/../templates).
    type: path
  institutional_domains:
    description: E-mail domains accepted as institutional for the requester.
    type: list
    elements: str
    default: [agricultura.gob.mx]
  max_attachment_bytes:
    description: Larger attachments (or zip contents) send the message to quarantine.
    type: int
    default: 10485760
  max_message_bytes:
    description: A larger message is sent to quarantine before it is read or parsed (25 MiB by default).
    type: int
    default: 26214400
  actor:
    description: Who the audit log records for the Mesa de Servicios' steps.
    type: str
    default: mesa.servicios
  non_working_days:
    description:
      - Extra non-working days (DOF suspension days), C(YYYY-MM-DD), for the SLA clocks.
      - "A list of dates, or one list per year (C({2027: [2027-03-25]})); a year with no list gets a warning."
    type: raw
    default: []
  awx_url:
    description:
      - URL of AWX / Ansible Automation Platform. With O(awx_token), a ticket that reaches C(certificate_received)
        launches O(awx_renew_template) with its folio as extra var (once per ticket, noted on it).
      - Without them nothing is launched and RV(renewals) gives the command an operator runs.
      - Defaults to E(CONTROLLER_HOST) (or E(TOWER_HOST)), which AWX's own C(Red Hat Ansible Automation Platform)
        credential injects into the job.
    type: str
  awx_token:
    description:
      - OAuth2 / personal access token for O(awx_url), sent as C(Authorization Bearer); never returned.
      - Defaults to E(CONTROLLER_OAUTH_TOKEN) (or E(TOWER_OAUTH_TOKEN)), injected by the same credential.
    type: str
  awx_token_file:
    description:
      - File holding the token, used when O(awx_token) is not given. Defaults to E(RENEWAL_AWX_TOKEN_FILE), which
        the custom credential type C(Lanzamiento en AWX (token)) (C(awx/controller.yml)) injects, so the token is
        in no extra var and no environment value.
    type: path
  awx_renew_template:
    description: Id or name of the renew job template (C(playbooks/renew.yml), survey C(folio)).
    type: str
    default: Renovación de certificado (renew)
  awx_validate_certs:
    description: Verify AWX's TLS certificate (E(CONTROLLER_VERIFY_SSL) when set).
    type: bool
    default: true
notes:
  - Check mode reads and classifies every message and reports what would happen; it writes and sends nothing.
seealso:
  - module: ansible.legacy.service_ticket
  - module: ansible.legacy.service_ticket_info
"""

EXAMPLES = r"""
- name: Process the Mesa de Servicios mailbox
  mail_intake:
    inbox: /var/mail/mesa
    quarantine_dir: /var/mail/mesa-cuarentena
    store: /var/lib/renovacion/tickets.db
    providers: "{{ procedure_providers }}"
    staff_directory: /etc/renovacion/personal.yml
    catalog:
      Padrón de Productores: [renapo, sat]
    deliveries_dir: /var/lib/renovacion/entregas
    oficios_dir: /var/lib/renovacion/oficios
    mesa_address: mesa.servicios@agricultura.gob.mx
    enlace_address: enlace.soas@agricultura.gob.mx
    sender: mesa.servicios@agricultura.gob.mx
    smtp_host: smtp.agricultura.gob.mx
    template_dir: "{{ playbook_dir }}/../templates"
  register: intake

- name: Nothing was lost
  ansible.builtin.assert:
    that:
      - intake.outcomes | selectattr('outcome', 'equalto', 'error') | list | length == 0
"""

RETURN = r"""
outcomes:
  description:
    - One entry per message, in the order processed. C(outcome) is the ticket's state after the message,
      C(skipped) (Message-ID already processed with the same content), C(quarantined), C(filed) (automatic mail,
      own notice or bounce; with C(ticket) when it was noted on one), or in check mode C(would_process) /
      C(would_quarantine) / C(would_file) / C(would_skip).
  returned: always
  type: list
  elements: dict
  sample:
    - {message_id: "<a1@agricultura.gob.mx>", kind: request, outcome: requester_validated, ticket: 1,
       folio: DGTIC-RENAPO-2026-000001, state: requester_validated, notices: [folio_issued]}
    - {message_id: "<r9@renapo.gob.mx>", kind: delivery, outcome: quarantined, notices: [quarantine],
       reason: "FINGERPRINT_MISMATCH: ...", quarantine_file: /var/mail/mesa-cuarentena/new/1767.M1.host}
processed:
  description: How many messages reached a ticket.
  returned: always
  type: int
  sample: 2
quarantined:
  description: How many messages went to quarantine.
  returned: always
  type: int
  sample: 1
duplicates:
  description:
    - How many messages were duplicates of a processed message (same Message-ID and content), left as they were.
    - Not called C(skipped), which Ansible reads as "the task was skipped".
  returned: always
  type: int
  sample: 0
filed:
  description: How many messages were filed without a ticket (automatic mail, own notices, bounces).
  returned: always
  type: int
  sample: 1
renewals:
  description:
    - One entry per ticket that reached C(certificate_received) in this run (also in its outcome as C(renew)).
    - C(launched) with C(job) and C(job_url) when AWX launched the renew job template; otherwise C(reason) and
      the C(command) an operator runs.
  returned: always
  type: list
  elements: dict
  sample:
    - {folio: DGTIC-RENAPO-2026-000001, launched: true, template: "Renovación de certificado (renew)",
       template_id: 12, job: 345, job_url: "https://awx.example.gob.mx/api/v2/jobs/345/",
       command: "ansible-playbook playbooks/renew.yml -e folio=DGTIC-RENAPO-2026-000001"}
"""

from ansible.module_utils.awx_launch import AwxLauncher
from ansible.module_utils.basic import AnsibleModule, env_fallback, missing_required_lib
from ansible.module_utils.imap_mailbox import ImapMailbox
from ansible.module_utils.notify import JINJA2_IMPORT_ERROR
from ansible.module_utils.procedure import Intake, Mailer
from ansible.module_utils.providers import ProviderError, registry
from ansible.module_utils.sla import HOLIDAYS_IMPORT_ERROR, SlaPolicy
from ansible.module_utils.staff_directory import PYYAML_IMPORT_ERROR, DirectoryError, open_directory
from ansible.module_utils.ticket_store import TicketStoreError, dsn_secrets, open_store
from ansible.module_utils.x509_load import CRYPTOGRAPHY_IMPORT_ERROR


def _secret_file(module, path, what):
    try:
        with open(path, encoding="utf-8") as fh:
            value = fh.read().strip()
    except OSError as e:
        module.fail_json(msg=f"{what} {path}: {e.strerror}")
    module.no_log_values.add(value)
    return value


def _imap_mailbox(module, imap):
    password = _secret_file(module, imap["password_file"], "imap.password_file") if imap["password_file"] else None
    token = (_secret_file(module, imap["oauth2_token_file"], "imap.oauth2_token_file")
             if imap["oauth2_token_file"] else None)
    if not password and not token:
        module.fail_json(msg="imap needs password_file or oauth2_token_file")
    try:
        return ImapMailbox(imap["host"], imap["port"], imap["user"], password=password, oauth2_token=token,
                           tls=imap["tls"], ca_file=imap["ca_file"], server_name=imap["server_name"],
                           folder=imap["folder"], processed_folder=imap["processed_folder"],
                           quarantine_folder=imap["quarantine_folder"], filed_folder=imap["filed_folder"])
    except Exception as e:  # noqa: BLE001 - refused login, TLS failure, unreachable server: say which
        module.fail_json(msg=f"cannot open the Mesa de Servicios mailbox imap://{imap['user']}@{imap['host']}:"
                             f"{imap['port']}: {type(e).__name__}: {e}")


def main():
    module = AnsibleModule(
        argument_spec=dict(
            inbox=dict(type="path"),
            quarantine_dir=dict(type="path"),
            imap=dict(type="dict", options=dict(
                host=dict(type="str", required=True),
                port=dict(type="int", default=993),
                user=dict(type="str", required=True),
                password_file=dict(type="path"),
                oauth2_token_file=dict(type="path"),
                tls=dict(type="str", choices=["implicit", "starttls", "none"], default="implicit"),
                ca_file=dict(type="path"),
                server_name=dict(type="str"),
                folder=dict(type="str", default="INBOX"),
                processed_folder=dict(type="str", default="Procesados"),
                quarantine_folder=dict(type="str", default="Cuarentena"),
                filed_folder=dict(type="str", default="Automaticos"),
            )),
            providers=dict(type="dict", required=True),
            sender_auth=dict(type="dict", options=dict(
                trusted_authserv_ids=dict(type="list", elements="str", default=[]),
                mode=dict(type="str", choices=["header", "dkim", "either", "both"], default="header"),
                nameservers=dict(type="list", elements="str", default=[]),
            )),
            release=dict(type="list", elements="str", default=[]),
            operator=dict(type="str"),
            store=dict(type="str", required=True),
            staff_directory=dict(type="str", required=True),
            catalog=dict(type="dict", required=True),
            deliveries_dir=dict(type="path", required=True),
            oficios_dir=dict(type="path", required=True),
            mesa_address=dict(type="str", required=True),
            enlace_address=dict(type="str", required=True),
            enlace_name=dict(type="str"),
            sender=dict(type="str", required=True),
            firmante=dict(type="str"),
            oficio=dict(type="dict"),
            smtp_host=dict(type="str", default="localhost"),
            smtp_port=dict(type="int", default=25),
            template_dir=dict(type="path"),
            institutional_domains=dict(type="list", elements="str", default=["agricultura.gob.mx"]),
            max_attachment_bytes=dict(type="int", default=10 * 1024 * 1024),
            max_message_bytes=dict(type="int", default=25 * 1024 * 1024),
            actor=dict(type="str", default="mesa.servicios"),
            non_working_days=dict(type="raw", default=[]),
            awx_url=dict(type="str", fallback=(env_fallback, ["CONTROLLER_HOST", "TOWER_HOST"])),
            awx_token=dict(type="str", no_log=True,
                           fallback=(env_fallback, ["CONTROLLER_OAUTH_TOKEN", "TOWER_OAUTH_TOKEN"])),
            awx_token_file=dict(type="path", fallback=(env_fallback, ["RENEWAL_AWX_TOKEN_FILE"])),
            awx_renew_template=dict(type="str", default="Renovación de certificado (renew)"),
            awx_validate_certs=dict(type="bool", default=True, fallback=(env_fallback, ["CONTROLLER_VERIFY_SSL"])),
        ),
        required_one_of=[("inbox", "imap")],
        mutually_exclusive=[("inbox", "imap")],
        required_together=[("inbox", "quarantine_dir")],
        supports_check_mode=True,
    )
    for lib, error in (("cryptography", CRYPTOGRAPHY_IMPORT_ERROR), ("holidays", HOLIDAYS_IMPORT_ERROR),
                       ("Jinja2", JINJA2_IMPORT_ERROR), ("PyYAML", PYYAML_IMPORT_ERROR)):
        if error:
            module.fail_json(msg=missing_required_lib(lib), exception=error)
    p = module.params
    module.no_log_values.update(dsn_secrets(p["store"]))  # a password inside the DSN never reaches the output
    token = p["awx_token"]
    if not token and p["awx_token_file"]:
        try:
            with open(p["awx_token_file"], encoding="utf-8") as fh:
                token = fh.read().strip()
        except OSError as e:
            module.fail_json(msg=f"awx_token_file {p['awx_token_file']}: {e.strerror}")
        module.no_log_values.add(token)
    try:
        providers = registry(p["providers"])
    except ProviderError as e:
        module.fail_json(msg=f"provider registry (providers): {e}")
    try:
        directory = open_directory(p["staff_directory"])
        store = open_store(p["store"], SlaPolicy.from_options(None, p["non_working_days"], providers=providers),
                           create=not module.check_mode, providers=providers)
    except (DirectoryError, TicketStoreError, ValueError) as e:
        module.fail_json(msg=str(e))
    mailbox = p["inbox"]
    if p["imap"]:
        mailbox = _imap_mailbox(module, p["imap"])
    intake = Intake(store, directory, p["catalog"], Mailer(p["smtp_host"], p["smtp_port"], p["sender"],
                                                           p["template_dir"], reply_to=p["mesa_address"]),
                    mesa_address=p["mesa_address"], enlace_address=p["enlace_address"],
                    deliveries_dir=p["deliveries_dir"], oficios_dir=p["oficios_dir"], enlace_name=p["enlace_name"],
                    firmante=p["firmante"], actor=p["actor"], institutional_domains=tuple(p["institutional_domains"]),
                    on_certificate_received=AwxLauncher(p["awx_url"], token, p["awx_renew_template"],
                                                        p["awx_validate_certs"]),
                    providers=providers, sender_auth=dict(p["sender_auth"] or {}))
    intake.oficio = p["oficio"]
    options = dict(max_attachment_bytes=p["max_attachment_bytes"], max_message_bytes=p["max_message_bytes"])
    try:
        with store:
            if module.check_mode:
                outcomes = intake.preview(mailbox, **options)
            else:
                outcomes = intake.run(mailbox, p["quarantine_dir"], release=p["release"], operator=p["operator"],
                                      **options)
    except ValueError as e:  # a release that names nothing in quarantine, or no operator
        module.fail_json(msg=str(e), outcomes=intake.outcomes)
    except Exception as e:  # noqa: BLE001 - SMTP down, disk full...: the message stays in the inbox for the next run
        module.fail_json(msg=f"intake stopped, the current message stays in the inbox (new/ or the IMAP folder) "
                             f"for the next run: {type(e).__name__}: {e}", outcomes=intake.outcomes)
    finally:
        if hasattr(mailbox, "close"):
            mailbox.close()
    counts = {k: sum(1 for o in outcomes if o["outcome"] == k) for k in ("quarantined", "skipped", "filed")}
    processed = len(outcomes) - counts["quarantined"] - counts["skipped"] - counts["filed"]
    counts["duplicates"] = counts.pop("skipped")  # a result key "skipped" would mark the task skipped
    module.exit_json(changed=not module.check_mode and bool(outcomes), outcomes=outcomes,
                     processed=0 if module.check_mode else processed,
                     renewals=[o["renew"] for o in outcomes if "renew" in o], **counts)


if __name__ == "__main__":
    main()
