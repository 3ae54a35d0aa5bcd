"""The delivery_validate role and playbooks/validate.yml, run by ansible-playbook on the controller."""
import base64
import json
import subprocess

from cryptography import x509

from .conftest import PASSPHRASE, key_bytes, pem
from .test_cert_validate_module import ENV, ROOT

# The lab inventory carries its own per-service settings (roots, live endpoint, subject): the tests bring theirs.
SERVICES = {"delivery_validate_services": {"renapo": {"kind": "trust"}, "sat": {"kind": "identity"}}}


def playbook(path, *extra):
    return subprocess.run([str(ROOT / ".venv/bin/ansible-playbook"), str(path), "-e", json.dumps(SERVICES), *extra],
                          cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)


def run_role(tmp_path, role_vars):
    """Runs the role with role_vars and returns (process, delivery_validate_staged as the rollout sees it)."""
    dump = tmp_path / "staged.json"
    play = [{"hosts": "localhost", "gather_facts": False, "tasks": [
        {"name": "Validate", "ansible.builtin.include_role": {"name": "delivery_validate"}, "vars": role_vars},
        {"name": "Dump", "ansible.builtin.copy": {"dest": str(dump), "mode": "0600",
                                                  "content": "{{ delivery_validate_staged | to_json }}"}}]}]
    (tmp_path / "play.yml").write_text(json.dumps(play))
    proc = playbook(tmp_path / "play.yml")
    return proc, (json.loads(dump.read_text()) if dump.exists() else None)


def test_trust_delivery_merges_every_hosts_bundle(catalogue, tmp_path):
    p = catalogue.pki
    case = catalogue.cases["trust_chain_fingerprint_plain"]
    other = pem(p["ca"])
    bundles = [base64.b64encode(open(case["current"], "rb").read()).decode(), base64.b64encode(other).decode(), ""]
    proc, staged = run_role(tmp_path, {
        "delivery_validate_service": "renapo", "delivery_validate_certificate": case["certificate"],
        "delivery_validate_expected_fingerprint": case["expected_fingerprint"],
        "delivery_validate_current_bundles": bundles, "delivery_validate_staging_dir": str(tmp_path / "stage")})
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert staged["kind"] == "trust" and not staged["already_deployed"]
    bundle = x509.load_pem_x509_certificates(base64.b64decode(staged["bundle_b64"]))
    assert [c.subject.rfc4514_string() for c in bundle] == [
        "CN=RENAPO Root G1,O=Lab", "CN=Lab Root CA,O=Lab", "CN=RENAPO Root G2,O=Lab"]
    assert len(staged["bundle_fingerprints"]) == 3 and staged["truststore_b64"]
    assert "RENAPO trust delivery accepted" in proc.stdout


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
    case = catalogue.cases["trust_unconfirmed"]
    proc = playbook(ROOT / "playbooks/validate.yml", "-e", f"delivery_validate_certificate={case['certificate']}",
                    "-e", f"delivery_validate_staging_dir={tmp_path / 'stage'}")
    assert proc.returncode != 0
    assert "RENAPO delivery refused, nothing was touched" in proc.stdout and "UNCONFIRMED_ANCHOR: " in proc.stdout
    assert list((tmp_path / "stage").iterdir()) == []
