"""The module end to end, as ops run it: `ansible localhost -m cert_validate -a ...` from the project root."""
import base64
import json
import os
import re
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes

from .conftest import BAD, DER, PASSPHRASE, key_bytes, pem

ROOT = Path(__file__).resolve().parents[3]
ENV = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0")


def run_module(args, *flags):
    """(ok, result dict, full output) of one ad-hoc run; ok is Ansible's exit status."""
    proc = subprocess.run([str(ROOT / ".venv/bin/ansible"), "localhost", "-m", "cert_validate", "-a",
                           json.dumps(args), *flags], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=60)
    out = proc.stdout + proc.stderr
    match = re.search(r"^localhost \| (\w+!?) => (\{.*?^\})", proc.stdout, re.M | re.S)
    assert match, out
    return proc.returncode == 0, json.loads(match.group(2)), out


@pytest.mark.parametrize("case", ["identity_sat_cer_key", "trust_chain_fingerprint_plain"])
def test_module_passes_good_delivery(catalogue, case):
    ok, result, _ = run_module(catalogue.cases[case])
    assert ok and result["defects"] == [], result
    assert result["changed"] is False  # nothing staged, nothing changed


@pytest.mark.parametrize("case", ["missing_intermediate", "trust_unapproved", "trust_forged_letter",
                                  "trust_bad_signature", "trust_subject_substring", "several_at_once"])
def test_module_fails_naming_the_codes(catalogue, case):
    ok, result, out = run_module(catalogue.cases[case])
    assert not ok and "localhost | FAILED!" in out
    for code in BAD[case]:
        assert re.search(rf"^{code}: ", result["msg"], re.M), result["msg"]
    assert {d["code"] for d in result["defects"]} >= set(BAD[case])


def test_module_stages_trust_honours_check_mode_and_current(catalogue, tmp_path):
    args = dict(catalogue.cases["trust_chain_fingerprint_plain"], staging_dir=str(tmp_path / "stage"))
    ok, result, out = run_module(args, "--check", "--diff")
    assert ok and result["changed"] and not (tmp_path / "stage").exists()
    assert result["anchor"]["fingerprint_sha256"] in out  # the diff shows fingerprints
    ok, result, _ = run_module(args)
    assert ok and result["changed"] and Path(result["staged"]["bundle"]).is_file()
    keytool = subprocess.run(["keytool", "-list", "-keystore", result["staged"]["truststore"],
                              "-storepass", "changeit"], capture_output=True, text=True, check=True).stdout
    listed = re.findall(r"\(SHA-256\): ([0-9A-F:]+)", keytool)  # keytool's form is the one form
    assert sorted(listed) == sorted(result["bundle_fingerprints"])
    ok, again, _ = run_module(args)
    assert ok and again["changed"] is False  # rerun: idempotent
    ok, deployed, _ = run_module(dict(args, current=result["staged"]["bundle"]))
    assert ok and deployed["changed"] is False and deployed["already_deployed"]
    assert "already deployed" in deployed["msg"]


def test_module_diff_names_the_drift_it_will_remove(catalogue, tmp_path):
    p = catalogue.pki
    hosts = catalogue.file("hosts-with-rogue.pem", pem(p["renapo_old"], p["rogue"]))
    args = dict(catalogue.cases["trust_chain_fingerprint_plain"], current=hosts, provider="renapo")
    ok, result, out = run_module(args, "--diff")
    assert ok, out
    rogue_fp = p["rogue"].cert.fingerprint(hashes.SHA256()).hex(":").upper()
    assert [d["fingerprint"] for d in result["drift"]] == [rogue_fp]
    assert f"-{rogue_fp}  (not in the trust-anchor registry: removed)" in out
    assert result["anchor"]["approved"] is True
    assert result["anchor"]["confirmed_by"] == "approved in the trust-anchor registry of renapo"


def test_module_takes_a_list_of_allowed_subjects(catalogue):
    ok, result, _ = run_module(catalogue.cases["trust_subject_one_of_several"])
    assert ok and result["defects"] == [], result
    ok, result, _ = run_module(dict(catalogue.cases["trust_exact_subject"], expected_subject={"CN": "x"}))
    assert not ok and "must be an RFC 4514 name or a list" in result["msg"]


def test_module_facts_equal_openssl(catalogue, tmp_path):
    args = dict(catalogue.cases["identity_pem_any_order_pkcs1_encrypted"], staging_dir=str(tmp_path))
    ok, result, _ = run_module(args)
    assert ok, result
    out = subprocess.run(["openssl", "x509", "-noout", "-serial", "-fingerprint", "-sha256", "-enddate", "-in",
                          result["staged"]["cert"]], capture_output=True, text=True, check=True).stdout
    assert f"serial={result['serial_hex']}" in out
    assert result["fingerprints"]["sha256"].upper() in out
    assert oct(os.stat(result["staged"]["key"]).st_mode & 0o777) == "0o600"


@pytest.mark.parametrize("case", ["identity_pem_any_order_pkcs1_encrypted", "sat_key_wrong_password"])
def test_no_secret_in_vvv_output(catalogue, case, tmp_path):
    args = dict(catalogue.cases[case], staging_dir=str(tmp_path))
    _, _, out = run_module(args, "-vvv")
    assert PASSPHRASE not in out
    fragments = []
    for name in ("client", "sat_leaf"):
        k = catalogue.pki[name].key
        for blob in (base64.b64encode(key_bytes(k, encoding=DER)).decode(),
                     "".join(key_bytes(k).decode().splitlines()[1:-1])):
            fragments += [blob[i:i + 24] for i in range(40, len(blob) - 24, 150)]
    assert not [f for f in fragments if f in out]
    assert "PRIVATE KEY" not in out


def test_bad_arguments_are_refused_by_the_spec(catalogue):
    ok, result, _ = run_module({"kind": "identity"})
    assert not ok and "one of the following is required: certificate, pkcs12" in result["msg"]


@pytest.mark.slow
def test_whole_catalogue_through_ansible_playbook(catalogue, tmp_path):
    """Every case in one playbook run (one Ansible start-up): good ones pass, bad ones fail naming their codes."""
    tasks = [{"name": name, "cert_validate": args, "register": f"r_{name}", "ignore_errors": True}
             for name, args in catalogue.cases.items()]
    tasks.append({"name": "dump", "ansible.builtin.copy": {
        "dest": str(tmp_path / "results.json"), "mode": "0600",
        "content": "{{ {" + ", ".join(f"'{n}': r_{n}" for n in catalogue.cases) + "} | to_json }}"}})
    playbook = tmp_path / "catalogue.yml"
    playbook.write_text(json.dumps([{"hosts": "localhost", "gather_facts": False, "tasks": tasks}]))
    proc = subprocess.run([str(ROOT / ".venv/bin/ansible-playbook"), str(playbook)], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    for name, result in results.items():
        codes = {d["code"] for d in result.get("defects", [])}
        if name in BAD:
            assert result.get("failed") and codes >= set(BAD[name]), (name, result.get("msg"))
        else:
            assert not result.get("failed") and not codes, (name, result.get("msg"))
    assert PASSPHRASE not in proc.stdout + proc.stderr
