"""A third provider defined in inventory only, from the request e-mail to the closed ticket, with no code change.

`ine` is a trust provider (another consultation service the DGTIC consumes) whose consultation reuses RENAPO's
strategy against the lab: its definition is one more entry of `procedure_providers` and one more system in the
catalog, written here into an inventory overlay the way an operator would write group_vars; the host's gateway gets
a location for it the way the service's own configuration would (a file in /etc/consulta/gateway.d). The lab's mail
host signs for ine.mx as it does for renapo.gob.mx. Everything else — intake, folio, SLA clocks, the anchor
registry's evidence, the rollout of its own bundle, the post-deploy consultation, notices, closing — is the product
as it is.
"""
from __future__ import annotations

import email.utils
import hashlib
import sys
from datetime import datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from zoneinfo import ZoneInfo

import holidays
import yaml
from ansible.module_utils.ticket_store import open_store
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from dateutil.easter import easter
from labtools import ROOT, ansible_env, run

sys.path.insert(0, str(ROOT / "scripts"))
import demo_procedure as procedure  # noqa: E402

from tests.providers import THIRD_PROVIDER  # noqa: E402

PLAYBOOK = str(ROOT / ".venv" / "bin" / "ansible-playbook")
LAB_VARS = ROOT / "inventories" / "lab" / "group_vars"
MX = ZoneInfo("America/Mexico_City")
INE_SENDER = "Dirección de Servicios Digitales INE <servicios.digitales@ine.mx>"

GATEWAY_LOCATION = """\
# The INE consultation (strategy curp_soap, base path /ine): the host must trust INE's anchors (its own bundle).
location /ine/WebServicesConsulta/ {{
    proxy_pass https://{host}:{port}/WebServicesConsulta/;
    proxy_ssl_verify on;
    proxy_ssl_verify_depth 4;
    proxy_ssl_trusted_certificate /etc/consulta/trust/ine-bundle.pem;
    proxy_ssl_name renapo.lab;
    proxy_ssl_server_name on;
    proxy_ssl_session_reuse off;
    proxy_set_header Host renapo.lab;
}}
"""


def overlay_inventory(lab, dest: Path) -> Path:
    """The lab inventory plus the third provider: every lab group_vars file linked as it is, and two files an operator
    adds — the provider's registry entry (procedure_providers is one mapping, so the file repeats the others) and the
    catalog naming it for a system."""
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "hosts.yml").write_text(Path(lab.INVENTORY).read_text())
    for sub in ("host_vars",):
        if (LAB_VARS.parent / sub).is_dir():
            (dest / sub).symlink_to(LAB_VARS.parent / sub)
    for group_dir in LAB_VARS.iterdir():
        target = dest / "group_vars" / group_dir.name
        target.mkdir(parents=True)
        for f in group_dir.iterdir():
            (target / f.name).symlink_to(f)
    registry = yaml.safe_load((LAB_VARS / "all" / "providers.yml").read_text())["procedure_providers"]
    ine = dict(THIRD_PROVIDER["ine"], endpoint="{{ lab_renapo_endpoint }}", server_name="renapo.lab",
               consultation={"strategy": "curp_soap", "base_path": "/ine"})
    registry["ine"] = ine
    (dest / "group_vars" / "all" / "zz_third_provider.yml").write_text(
        "---\n" + yaml.safe_dump({"procedure_providers": registry}, allow_unicode=True, sort_keys=False))
    catalog = {}
    for f in sorted((LAB_VARS / "controller").glob("*.yml")) + sorted((LAB_VARS / "all").glob("*.yml")):
        catalog = (yaml.safe_load(f.read_text()) or {}).get("procedure_catalog") or catalog
    if not catalog:
        catalog = yaml.safe_load((ROOT / "roles" / "procedure" / "defaults" / "main.yml").read_text())[
            "procedure_catalog"]
    catalog = {system: list(services) for system, services in catalog.items()}
    catalog["Padrón de Productores"] = [*catalog.get("Padrón de Productores", []), "ine"]
    (dest / "group_vars" / "controller" / "zz_third_provider.yml").write_text(
        "---\n" + yaml.safe_dump({"procedure_catalog": catalog}, allow_unicode=True, sort_keys=False))
    return dest


def text_of(msg) -> str:
    """Every text part of a notice, decoded (subjects are in the headers)."""
    return "\n".join(part.get_payload(decode=True).decode(part.get_content_charset() or "utf-8")
                     for part in msg.walk() if part.get_content_maintype() == "text")


def first_contact_due(received: datetime, days: int):
    """The date a term of `days` business days ends, computed here from the calendar (weekends, the LFT's days of
    rest, Holy Thursday/Friday, the lab's DOF days), not from the product's code. The rule is the procedure's, as
    Mexican administrative terms count: the clock starts on the day of arrival when the mail arrives within business
    hours (09:00-18:00) of a business day, else on the next business day; that day does not count; the term ends at
    close of business of the N-th business day after it."""
    mx = holidays.country_holidays("MX", years=range(received.year, received.year + 2))
    dof = set()
    for f in (LAB_VARS / "controller").glob("*.yml"):
        for dates in ((yaml.safe_load(f.read_text()) or {}).get("procedure_non_working_days") or {}).values():
            dof.update(str(d) for d in dates)

    def is_business(day):
        holy = easter(day.year) - timedelta(days=3), easter(day.year) - timedelta(days=2)  # Holy Thursday, Friday
        return day.weekday() < 5 and day not in mx and day.isoformat() not in dof and day not in holy

    start = received.date()
    if not (is_business(start) and received.hour < 18):
        start += timedelta(days=1)
        while not is_business(start):
            start += timedelta(days=1)
    day, left = start, days
    while left:
        day += timedelta(days=1)
        if is_business(day):
            left -= 1
    return day


def test_third_provider_from_request_to_closed_ticket(fresh_lab, tmp_path):
    lab = fresh_lab
    inventory = overlay_inventory(lab, tmp_path / "inventory")
    env = dict(ansible_env(), ANSIBLE_INVENTORY=str(inventory))

    def playbook(name, *args, check=True):
        return run([PLAYBOOK, f"playbooks/{name}", *args], check=check, env=env, timeout=600)

    # The request names the new service as a person would.
    # The store as the playbooks open it with this inventory: the registry holds ine.
    registry = yaml.safe_load((inventory / "group_vars" / "all" / "zz_third_provider.yml").read_text())[
        "procedure_providers"]
    registry = {name: dict(spec, endpoint="127.0.0.1:1") if "{{" in str(spec.get("endpoint", "")) else spec
                for name, spec in registry.items()}

    def store():
        return open_store(str(lab.STATE / "procedure" / "tickets.db"), providers=registry)

    procedure.deliver(procedure.request_mail(procedure.STAFF, service="INE"))
    playbook("intake.yml")
    with store() as s:
        [ticket] = s.find()
    year = datetime.now(MX).year
    assert ticket["service"] == "ine" and ticket["state"] == "requester_validated", ticket
    assert ticket["folio"] == f"DGTIC-INE-{year}-000001"
    # Its own SLA (3 business days of first contact, from the registry) from the calendar, in local time.
    received = datetime.fromisoformat(ticket["received_at"]).astimezone(MX)
    assert datetime.fromisoformat(ticket["first_contact_due"]).astimezone(MX).date() == first_contact_due(received, 3)
    [folio_notice] = [m for m in procedure.sink() if procedure.subject(m).startswith(f"Folio {ticket['folio']}")]
    assert "INE (verificación de credencial)" in text_of(folio_notice)

    # INE mails its anchor (the CA its live endpoint chains to), DKIM-signed by ine.mx, quoting our folio.
    anchor = Path(lab.pki.ensure(lab.STATE)["renapo_anchor"])
    fingerprint = x509.load_pem_x509_certificate(anchor.read_bytes()).fingerprint(hashes.SHA256()).hex(":").upper()
    msg = EmailMessage()
    msg["From"] = INE_SENDER
    msg["Subject"] = f"Certificado del servicio de verificación - folio {ticket['folio']}"
    msg["Message-ID"] = email.utils.make_msgid(domain="ine.mx")
    msg.set_content(f"Se remite la raíz de confianza del servicio.\nHuella SHA-256: {fingerprint}\n")
    msg.add_attachment(anchor.read_bytes(), maintype="application", subtype="x-x509-ca-cert", filename="ine_raiz.pem")
    procedure.deliver(msg, via="ine")
    playbook("intake.yml")
    with store() as s:
        assert s.get(ticket["id"])["state"] == "certificate_received"

    # The hosts' gateway learns the INE location (the service's own configuration, not this product's).
    hosts = sorted(t.name for t in (lab.STATE / "hosts").glob("consulta-*"))
    before = {h: hashlib.sha256((lab.STATE / "hosts" / h / "etc-consulta/trust/renapo-bundle.pem").read_bytes())
              .hexdigest() for h in hosts}
    for h in hosts:
        (lab.STATE / "hosts" / h / "etc-consulta" / "gateway.d" / "ine.conf").write_text(
            GATEWAY_LOCATION.format(host=lab.RENAPO[0], port=lab.RENAPO[1]))

    playbook("renew.yml", "-e", f"folio={ticket['folio']}")
    with store() as s:
        ticket, audit = s.get(ticket["id"]), s.audit(ticket["id"])
        [approved] = [a for a in s.anchors("ine") if a["state"] == "approved"]
    assert ticket["state"] == "closed" and ticket["verified_hosts"] == hosts == ticket["hosts"], ticket
    assert [a["to_state"] for a in audit if a["from_state"] != a["to_state"]] == [
        "received", "folio_issued", "requester_validated", "certificate_received", "deploying", "deployed",
        "notified", "closed"]
    assert approved["fingerprint"] == fingerprint
    for h in hosts:
        bundle = lab.STATE / "hosts" / h / "etc-consulta" / "trust" / "ine-bundle.pem"
        held = {c.fingerprint(hashes.SHA256()).hex(":").upper()
                for c in x509.load_pem_x509_certificates(bundle.read_bytes())}
        assert held == {fingerprint}, (h, held)
        # RENAPO's bundle is another provider's: not one byte changed.
        assert hashlib.sha256((lab.STATE / "hosts" / h / "etc-consulta/trust/renapo-bundle.pem").read_bytes()) \
            .hexdigest() == before[h]
    [concluded] = [m for m in procedure.sink()
                   if procedure.subject(m).startswith("Actualización de certificado concluida")]
    assert ticket["folio"] in text_of(concluded) and "INE" in text_of(concluded)
