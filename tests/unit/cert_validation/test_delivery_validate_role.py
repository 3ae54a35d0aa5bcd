"""The delivery_validate role and playbooks/validate.yml, run by ansible-playbook on the controller."""
import base64
import json
import os
import subprocess

from cryptography import x509

from .conftest import PASSPHRASE, key_bytes, pem
from .test_cert_validate_module import ENV, ROOT

# The lab inventory carries its own per-service settings (roots, live endpoint, subject): the tests bring theirs.
SERVICES = {"delivery_validate_services": {"renapo": {"kind": "trust"}, "sat": {"kind": "identity"}}}


def playbook(path, *extra, state_dir):
    # The lab inventory's settings name the lab's state dir: a scratch one here, the lab need not be up.
    # The registry's endpoints name the lab's simulators (lab_*_endpoint, in the generated hosts.yml): closed ports.
    lab = dict(SERVICES, lab_state_dir=str(state_dir), lab_renapo_endpoint="127.0.0.1:1",
               lab_sat_endpoint="127.0.0.1:1")
    return subprocess.run([str(ROOT / ".venv/bin/ansible-playbook"), str(path), "-e", json.dumps(lab), *extra],
                          cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)


def run_role(tmp_path, role_vars):
    """Runs the role with role_vars and returns (process, delivery_validate_staged as the rollout sees it)."""
    dump = tmp_path / "staged.json"
    play = [{"hosts": "localhost", "gather_facts": False, "tasks": [
        {"name": "Validate", "ansible.builtin.include_role": {"name": "delivery_validate"}, "vars": role_vars},
        {"name": "Dump", "ansible.builtin.copy": {"dest": str(dump), "mode": "0600",
                                                  "content": "{{ delivery_validate_staged | to_json }}"}}]}]
    (tmp_path / "play.yml").write_text(json.dumps(play))
    proc = playbook(tmp_path / "play.yml", state_dir=tmp_path / "lab")
    return proc, (json.loads(dump.read_text()) if dump.exists() else None)


def test_trust_delivery_stages_the_approved_anchors_only_and_reports_drift(catalogue, tmp_path):
    p = catalogue.pki
    case = catalogue.cases["trust_chain_fingerprint_plain"]
    rogue = pem(p["ca"])  # planted on one host: never carried to the others
    bundles = [base64.b64encode(open(case["current"], "rb").read()).decode(), base64.b64encode(rogue).decode(), ""]
    proc, staged = run_role(tmp_path, {
        "delivery_validate_service": "renapo", "delivery_validate_certificate": case["certificate"],
        "delivery_validate_expected_fingerprint": case["expected_fingerprint"],
        "delivery_validate_approved_anchors": case["approved_anchors"],
        "delivery_validate_current_bundles": bundles, "delivery_validate_staging_dir": str(tmp_path / "stage")})
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert staged["kind"] == "trust" and not staged["already_deployed"]
    bundle = x509.load_pem_x509_certificates(base64.b64decode(staged["bundle_b64"]))
    assert [c.subject.rfc4514_string() for c in bundle] == ["CN=RENAPO Root G1,O=Lab", "CN=RENAPO Root G2,O=Lab"]
    assert [d["subject"] for d in staged["drift"]] == ["CN=Lab Root CA,O=Lab"]
    assert len(staged["bundle_fingerprints"]) == 2 and staged["truststore_b64"]
    assert "RENAPO trust delivery accepted" in proc.stdout and "drift, removed from the hosts: CN=Lab Root CA" in \
        proc.stdout
    assert (tmp_path / "stage").is_dir()  # a directory the caller gave is the caller's: kept


def test_the_role_stages_each_run_in_its_own_directory(catalogue, tmp_path):
    case = catalogue.cases["trust_chain_fingerprint_plain"]
    role_vars = {"delivery_validate_service": "renapo", "delivery_validate_certificate": case["certificate"],
                 "delivery_validate_approved_anchors": case["approved_anchors"],
                 "delivery_validate_staging_root": str(tmp_path / "root")}
    paths = []
    for _ in range(2):
        proc, staged = run_role(tmp_path, role_vars)
        assert proc.returncode == 0, proc.stdout[-3000:]
        paths.append(staged["paths"]["bundle"])
    runs = sorted((tmp_path / "root" / "renapo").iterdir())
    assert len(runs) == 2 and paths[0] != paths[1]
    assert {os.path.dirname(p) for p in paths} == {str(r) for r in runs}


def test_a_trust_delivery_without_approved_anchors_is_refused(catalogue, tmp_path):
    case = catalogue.cases["trust_chain_fingerprint_plain"]
    proc, staged = run_role(tmp_path, {
        "delivery_validate_service": "renapo", "delivery_validate_certificate": case["certificate"],
        "delivery_validate_expected_fingerprint": case["expected_fingerprint"],  # the letter's word is not enough
        "delivery_validate_staging_dir": str(tmp_path / "stage")})
    assert proc.returncode != 0 and staged is None
    assert "UNAPPROVED_ANCHOR: anchor 'CN=RENAPO Root G2,O=Lab'" in proc.stdout
    assert "not approved in the trust-anchor registry of renapo" in proc.stdout


def test_identity_delivery_hands_over_fullchain_and_key_without_printing_them(catalogue, tmp_path):
    case = catalogue.cases["identity_sat_cer_key"]
    proc, staged = run_role(tmp_path, {
        "delivery_validate_service": "sat", "delivery_validate_certificate": case["certificate"],
        "delivery_validate_private_key": case["private_key"], "delivery_validate_private_key_passphrase": PASSPHRASE,
        "delivery_validate_trusted_roots": case["trusted_roots"],
        "delivery_validate_staging_dir": str(tmp_path / "stage")})
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert staged["kind"] == "identity" and {"fullchain_b64", "key_b64", "cert_b64"} <= set(staged)
    key_pem = key_bytes(catalogue.pki["sat_leaf"].key)
    assert base64.b64decode(staged["key_b64"]) == key_pem
    body = "".join(key_pem.decode().splitlines()[1:-1])
    out = proc.stdout + proc.stderr
    assert PASSPHRASE not in out and body[40:80] not in out and staged["key_b64"][40:80] not in out


def test_validate_playbook_refuses_a_bad_delivery_listing_its_codes(catalogue, tmp_path):
    case = catalogue.cases["trust_unapproved"]
    proc = playbook(ROOT / "playbooks/validate.yml", "-e", f"delivery_validate_certificate={case['certificate']}",
                    "-e", f"delivery_validate_staging_dir={tmp_path / 'stage'}", state_dir=tmp_path / "lab")
    assert proc.returncode != 0
    assert "RENAPO delivery refused, nothing was touched" in proc.stdout and "UNAPPROVED_ANCHOR: " in proc.stdout
    assert list((tmp_path / "stage").iterdir()) == []
