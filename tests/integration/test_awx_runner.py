"""Runs the way AWX runs them: each job template of awx/controller.yml, run by ansible-runner (private data dir,
the project as project dir, extra vars = the survey's answers, environment and files = what the job template's
credential types inject, rendered from their injectors as AWX renders them), on the lab. Assertions on the runner's
artifacts (status, events), the hosts and the ticket; no secret anywhere in extra vars or artifacts.

Job slicing: the sliced rollout as two concurrent ansible-runner jobs, each with its share of the inventory (AWX's
`hosts[slice - 1::slices]`), on the shared PostgreSQL store (tests/pg.py's server; SQLite without it).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import threading
from pathlib import Path

import ansible_runner
import jinja2
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from labtools import ROOT

from tests.awx_server import AwxServer
from tests.providers import lab_providers

sys.path.insert(0, str(ROOT / "scripts"))
import demo_procedure as procedure  # noqa: E402

try:
    from tests.pg import pg_server  # noqa: F401  (the session's PostgreSQL server fixture)
except ImportError:  # the PostgreSQL backend has not landed: the slices share a SQLite file instead
    pg_server = None


class _Loader(yaml.SafeLoader):
    pass


_Loader.add_constructor("!unsafe", lambda loader, node: loader.construct_scalar(node))
CONFIG = yaml.load((ROOT / "awx" / "controller.yml").read_text(encoding="utf-8"), Loader=_Loader)  # noqa: S506
TEMPLATES = {t["playbook"]: t for t in CONFIG["controller_templates"]}
CREDENTIAL_TYPES = {t["name"]: t for t in CONFIG["controller_credential_types"]}
CREDENTIALS = {c["name"]: c for c in CONFIG["controller_credentials"]}

AWX_TOKEN = "awx-pat-5e0b7c2a9f41d8"
PASSPHRASE = "frase-secreta-de-la-llave-7731"
PKCS12_PASSPHRASE = "frase-secreta-del-pfx-4410"
TICKET_DB_PASSWORD = "contrasena-del-almacen-9902"


def _key_pem() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def secret_values(key_pem: str) -> list[str]:
    """Every secret a job got: tokens, passphrases and the key (its base64 body lines too)."""
    return [AWX_TOKEN, PASSPHRASE, PKCS12_PASSPHRASE, TICKET_DB_PASSWORD,
            *[ln for ln in key_pem.splitlines() if len(ln) == 64]]


def inject(credential_type: str, inputs: dict, private_dir: Path) -> dict:
    """What AWX does with a credential of this type: each file injector rendered into a private file (0600),
    the env injectors rendered with `tower.filename.<name>` pointing at those files. Returns the environment."""
    ctype = CREDENTIAL_TYPES[credential_type]
    values = {f["id"]: inputs.get(f["id"], f.get("default", "")) for f in ctype["inputs"]["fields"]}
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False)  # noqa: S701 - not HTML
    filenames = {}
    for key, template in ctype["injectors"].get("file", {}).items():
        name = key.split(".", 1)[1]
        path = private_dir / f"cred-{abs(hash((credential_type, name)))}"
        path.write_text(env.from_string(template).render(values))
        path.chmod(0o600)
        filenames[name] = str(path)
    return {name: env.from_string(template).render(values, tower={"filename": filenames})
            for name, template in ctype["injectors"].get("env", {}).items()}


def run_job(lab, playbook: str, tmp_path: Path, *, extravars=None, credentials=None, inventory=None,
            ident="job") -> ansible_runner.Runner:
    """One AWX job: ansible-runner with the template's playbook, survey answers as extravars, injected credentials."""
    pdd = tmp_path / ident
    private = tmp_path / f"{ident}-credentials"  # AWX's job-private directory, outside what the runner keeps
    private.mkdir(parents=True, mode=0o700)
    pdd.mkdir()
    template = TEMPLATES[playbook]
    envvars = {"ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1",
               "PATH": f"{ROOT / '.venv' / 'bin'}:{os.environ['PATH']}"}
    for name, inputs in (credentials or {}).items():
        assert name in template.get("credentials", []), f"{template['name']} does not carry {name}"
        envvars.update(inject(CREDENTIALS[name]["credential_type"], inputs, private))
    return ansible_runner.run(private_data_dir=str(pdd), project_dir=str(ROOT), playbook=playbook,
                              inventory=str(inventory or lab.INVENTORY), extravars=extravars or {},
                              envvars=envvars, quiet=True, ident=ident, timeout=600)


def task_names(runner) -> set[str]:
    return {e["event_data"].get("task") for e in runner.events if e["event"] == "runner_on_ok"}


def assert_successful(runner):
    stdout = runner.stdout.read() if runner.status != "successful" else ""
    assert runner.status == "successful" and runner.rc == 0, stdout[-4000:]


def assert_no_secret_in_artifacts(tmp_path: Path, secrets: list[str]):
    """Every file the runner left (artifacts: stdout, events, command with its environment; env: extravars)."""
    scanned = 0
    for pdd in (p for p in tmp_path.iterdir() if (p / "artifacts").is_dir()):
        for path in [*(pdd / "artifacts").rglob("*"), pdd / "env" / "extravars"]:
            if path.is_file():
                text = path.read_text(encoding="utf-8", errors="replace")
                scanned += 1
                leaked = [s[:12] + "..." for s in secrets if s in text]
                assert not leaked, f"secret in {path.relative_to(tmp_path)}: {leaked}"
    assert scanned > 0


def trust_checksums(lab) -> dict[str, str]:
    return {t.name: hashlib.sha256((t / "etc-consulta/trust/renapo-bundle.pem").read_bytes()).hexdigest()
            for t in sorted((lab.STATE / "hosts").glob("consulta-*"))}


def anchors(lab, host: str) -> set[str]:
    bundle = lab.STATE / "hosts" / host / "etc-consulta" / "trust" / "renapo-bundle.pem"
    return {c.fingerprint(hashes.SHA256()).hex(":").upper()
            for c in x509.load_pem_x509_certificates(bundle.read_bytes())}


def test_job_templates_intake_launch_renew_rollback_run_as_awx_runs_them(fresh_lab, tmp_path):
    lab = fresh_lab
    key_pem = _key_pem()
    before = trust_checksums(lab)
    with AwxServer(AWX_TOKEN, {12: TEMPLATES["playbooks/renew.yml"]["name"]}) as awx:
        launch = {"AWX (lanzar la renovación)": {"host": awx.url, "token": AWX_TOKEN, "verify_ssl": False}}
        # Intake, scheduled in AWX: the request gets its folio and is validated.
        procedure.deliver(procedure.request_mail(procedure.STAFF))
        intake = run_job(lab, "playbooks/intake.yml", tmp_path, credentials=launch, ident="intake-1")
        assert_successful(intake)
        assert "Read the mailbox and apply the procedure to each message" in task_names(intake)
        with procedure.store() as s:
            [ticket] = s.find()
        assert ticket["state"] == "requester_validated" and awx.launches == []

        # RENAPO's delivery lands; the next intake records it and launches the renew template with the folio.
        published = lab.pki.publish(lab.STATE)
        procedure.deliver(procedure.delivery_mail(ticket["folio"], published["outbox"]))
        intake = run_job(lab, "playbooks/intake.yml", tmp_path, credentials=launch, ident="intake-2")
        assert_successful(intake)
        assert [(x["template"], x["extra_vars"]) for x in awx.launches] == [(12, {"folio": ticket["folio"]})]
        assert all(r["authorization"] == f"Bearer {AWX_TOKEN}" for r in awx.requests)
        [told] = [e["event_data"]["res"]["msg"] for e in intake.events if e["event"] == "runner_item_on_ok"
                  and e["event_data"].get("task", "").startswith("Tell how each renewal starts")]
        assert told.startswith(f"{ticket['folio']}: AWX job {awx.launches[0]['job']}")
        with procedure.store() as s:
            ticket = s.get(ticket["id"])
        assert ticket["state"] == "certificate_received"
        assert any(n["note"].startswith(f"Renovación lanzada en AWX: job {awx.launches[0]['job']}")
                   for n in ticket["observations"])

    # The job AWX launched: renew with the survey's answer, the delivery credential's files injected.
    delivery = {"Entrega RENAPO/SAT": {"private_key_passphrase": PASSPHRASE, "pkcs12_passphrase": PKCS12_PASSPHRASE}}
    renew = run_job(lab, "playbooks/renew.yml", tmp_path, extravars={"folio": ticket["folio"]},
                    credentials=delivery, ident="renew")
    assert_successful(renew)
    assert {"Validate and roll out the delivery (playbooks/rollout.yml)", "Judge the rollout",
            "Close the ticket (step 5.2)"} <= task_names(renew)
    hosts = sorted(before)
    with procedure.store() as s:
        ticket = s.get(ticket["id"])
    assert ticket["state"] == "closed" and sorted(ticket["verified_hosts"]) == hosts
    assert all(published["fingerprint_sha256"] in anchors(lab, h) for h in hosts)
    assert trust_checksums(lab) != before

    # Rollback (survey: backup and service): every host back to the bundle it had, byte for byte, consulted.
    rollback = run_job(lab, "playbooks/rollback.yml", tmp_path,
                       extravars={"rollback_backup": "latest", "rollback_service": "renapo"}, ident="rollback")
    assert_successful(rollback)
    assert {"Restore the backup", "Consult through the host"} <= {
        e["event_data"].get("task") for e in rollback.events if e["event"] == "playbook_on_task_start"}
    assert trust_checksums(lab) == before

    # No secret in any job's extra vars, events, stdout or recorded environment.
    assert_no_secret_in_artifacts(tmp_path, secret_values(key_pem))
    # The extra vars of each job are the survey's answers, nothing else.
    extravars = {d.name: json.loads((d / "env" / "extravars").read_text()) if (d / "env" / "extravars").exists()
                 else {} for d in tmp_path.iterdir() if (d / "artifacts").is_dir()}
    assert extravars == {"intake-1": {}, "intake-2": {}, "renew": {"folio": ticket["folio"]},
                         "rollback": {"rollback_backup": "latest", "rollback_service": "renapo"}}


@pytest.mark.parametrize("playbook", ["playbooks/expiry_scan.yml", "playbooks/padron_consulta.yml",
                                      "playbooks/kpi_report.yml"])
def test_reporting_job_templates_run_as_awx_runs_them(lab, tmp_path, playbook):
    if not (ROOT / playbook).is_file():
        pytest.skip(f"{playbook} is not in the project yet")
    if playbook.endswith("kpi_report.yml"):
        # The report reads the padrón batch's results: its own job first, whichever worker and lab this test got.
        assert_successful(run_job(lab, "playbooks/padron_consulta.yml", tmp_path / "padron", ident="padron_consulta"))
    job = run_job(lab, playbook, tmp_path, ident=Path(playbook).stem)
    assert_successful(job)
    assert job.stats["failures"] == {} and job.stats["ok"]
    assert_no_secret_in_artifacts(tmp_path, [AWX_TOKEN])


def _slice_inventories(lab, tmp_path: Path, slices: int) -> list[Path]:
    """AWX's job slicing: hosts sorted by name, slice i gets hosts[i - 1::slices], each with the groups it needs."""
    inventory = json.loads(re.sub(r"^#.*\n", "", lab.INVENTORY.read_text(), flags=re.M))
    groups = {g: sorted(d["hosts"]) for g, d in inventory["all"]["children"].items()}
    every = sorted(h for members in groups.values() for h in members)
    paths = []
    for i in range(slices):
        mine = set(every[i::slices])
        sliced = json.loads(json.dumps(inventory))
        for d in sliced["all"]["children"].values():
            d["hosts"] = {h: v for h, v in d["hosts"].items() if h in mine}
        directory = tmp_path / f"slice-{i + 1}-inventory"
        directory.mkdir()
        (directory / "group_vars").symlink_to(ROOT / "inventories" / "lab" / "group_vars")
        (directory / "hosts.yml").write_text(json.dumps(sliced, indent=1))
        paths.append(directory / "hosts.yml")
    return paths


@pytest.fixture
def shared_store(request, tmp_path):
    """The ticket store every slice writes: a fresh PostgreSQL schema, or a SQLite file without the backend."""
    if pg_server is None:
        return str(tmp_path / "tickets.db")
    return request.getfixturevalue("pg_server").create_schema()


def test_sliced_rollout_two_concurrent_jobs_record_every_host_once(fresh_lab, tmp_path, shared_store):
    lab = fresh_lab
    from ansible.module_utils.ticket_store import open_store

    hosts = sorted(trust_checksums(lab))
    published = lab.pki.publish(lab.STATE)
    with open_store(shared_store, providers=lab_providers()) as store:
        # The shared store's registry: today's anchor seeded, RENAPO's new one approved on an operator's word.
        store.anchor_seed("renapo", [lab.pki.ensure(lab.STATE)["renapo_anchor"].read_text()], actor="t",
                          reason="alta inicial")
        store.anchor_record("renapo", published["anchor"].read_text(), actor="t")
        store.anchor_add_evidence("renapo", published["fingerprint_sha256"], "operator", "confirmada por teléfono",
                                  actor="jdoe")
        store.anchor_approve("renapo", published["fingerprint_sha256"], actor="t",
                             policy={"accept": ["operator"], "operators": 1})
        ticket = store.create("renapo", actor="t", requester={"name": "Ana", "email": "ana@agricultura.gob.mx"}).ticket
        for state in ("folio_issued", "requester_validated", "certificate_received"):
            ticket = store.transition(ticket["id"], state, actor="t").ticket
        store.transition(ticket["id"], "deploying", actor="soas.despliegue", hosts=hosts)

    slices, runners = _slice_inventories(lab, tmp_path, 2), {}
    store_credential = {"Almacén de tickets": {"dsn": shared_store, "password": TICKET_DB_PASSWORD}}

    def run_slice(i, inventory):
        answers = {"folio": ticket["folio"], "rollout_service": "renapo",
                   "rollout_certificate": str(published["attachments"][0]),  # the mailed chain
                   "rollout_expected_fingerprint": published["fingerprint_sha256"],
                   # as AWX's inventory sets it from RENEWAL_TICKET_STORE; each slice stages in its own container
                   "procedure_store": shared_store,
                   "delivery_validate_staging_dir": str(tmp_path / f"slice-{i}-staged")}
        runners[i] = run_job(lab, "playbooks/rollout_ticket.yml", tmp_path, extravars=answers, inventory=inventory,
                             credentials=store_credential, ident=f"slice-{i}")

    threads = [threading.Thread(target=run_slice, args=(i + 1, inv)) for i, inv in enumerate(slices)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    for runner in runners.values():
        assert_successful(runner)
        assert "Add the hosts verified by this slice to the ticket" in task_names(runner)
    assert all(published["fingerprint_sha256"] in anchors(lab, h) for h in hosts)
    with open_store(shared_store, providers=lab_providers()) as store:
        ticket, audit = store.get(ticket["id"]), store.audit(ticket["id"])
    assert sorted(ticket["verified_hosts"]) == hosts and len(ticket["verified_hosts"]) == len(hosts)
    assert ticket["state"] == "deploying" and sorted(ticket["hosts"]) == hosts
    recorded = [a for a in audit if (a["reason"] or "").startswith("rebanada del despliegue")]
    assert len(recorded) == 2 and sorted(h for a in recorded for h in a["hosts"]) == hosts
    assert_no_secret_in_artifacts(tmp_path, [TICKET_DB_PASSWORD])
