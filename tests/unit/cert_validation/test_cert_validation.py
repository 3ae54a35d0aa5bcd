"""Pure validation: the catalogue, chain ordering, anchors, staging. Real files, real TLS, no mocks."""
import os
import re
import subprocess

import pytest
from ansible.module_utils.cert_validation import (
    CODES,
    normalise_fingerprint,
    order_chain,
    sha256_fp,
    stage,
    validate,
)
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from .conftest import BAD, PASSPHRASE, key_bytes, pem


def test_good_delivery_passes(catalogue, good_case):
    report = validate(**catalogue.cases[good_case])
    assert report.defects == [], report.error_text()
    assert report.facts["serial_number"] and report.facts["not_after"].endswith("Z")


def test_bad_delivery_names_its_codes(catalogue, bad_case):
    report = validate(**catalogue.cases[bad_case])
    assert set(BAD[bad_case]) <= set(report.codes), report.error_text()
    assert set(report.codes) <= set(CODES)
    assert PASSPHRASE not in report.error_text() and "wrong" not in report.error_text()


@pytest.mark.parametrize("case, extra", [
    ("missing_intermediate", "UNTRUSTED_CHAIN"),  # the missing link also breaks the path to the roots
])
def test_ambiguous_chain_reports_both(catalogue, case, extra):
    assert extra in validate(**catalogue.cases[case]).codes


def test_chain_is_ordered_leaf_first_whatever_the_file_order(catalogue):
    p = catalogue.pki
    path, leaves, unused = order_chain([p["ca"].cert, p["client"].cert, p["inter"].cert])
    assert path == [p["client"].cert, p["inter"].cert, p["ca"].cert]
    assert leaves == [p["client"].cert] and unused == []
    report = validate(**catalogue.cases["identity_pem_any_order_pkcs1_encrypted"])
    assert report.facts["chain"] == ["CN=consulta-client,O=Lab", "CN=Lab Issuing CA,O=Lab", "CN=Lab Root CA,O=Lab"]


@pytest.mark.parametrize("text", ["{colon_upper}", "{plain}", "sha256:{plain}", "SHA256 Fingerprint={colon_upper}",
                                  " {colon_lower} "])
def test_fingerprint_forms(catalogue, text):
    cert = catalogue.pki["renapo_new"].cert
    plain = cert.fingerprint(hashes.SHA256()).hex()
    given = text.format(plain=plain, colon_upper=plain.upper() and cert.fingerprint(hashes.SHA256()).hex(":").upper(),
                        colon_lower=cert.fingerprint(hashes.SHA256()).hex(":"))
    assert normalise_fingerprint(given) == sha256_fp(cert)


def test_malformed_fingerprint_is_a_defect(catalogue):
    kwargs = dict(catalogue.cases["trust_chain_fingerprint_plain"], expected_fingerprint="12:34")
    assert validate(**kwargs).codes == ["FINGERPRINT_MISMATCH"]


def test_trust_facts_and_bundle_order(catalogue):
    p = catalogue.pki
    report = validate(**catalogue.cases["trust_chain_fingerprint_plain"])
    assert report.facts["subject"] == "CN=consultas.renapo.lab,O=Lab"
    assert report.facts["anchor"]["fingerprint_sha256"] == sha256_fp(p["renapo_new"].cert)
    assert report.facts["bundle_fingerprints"] == [sha256_fp(p["renapo_old"].cert), sha256_fp(p["renapo_new"].cert)]
    assert report.facts["extended_key_usage"] == ["TLS Web Server Authentication"]
    assert report.already_deployed is False


def test_expired_entries_of_the_current_bundle_are_pruned(catalogue, tmp_path):
    from .conftest import DAY, issue
    stale = issue("RENAPO Root G0", ca=True, start=-900 * DAY, days=-5)
    current = tmp_path / "bundle.pem"
    current.write_bytes(pem(stale, catalogue.pki["renapo_old"]))
    report = validate(**dict(catalogue.cases["trust_chain_fingerprint_plain"], current=str(current)))
    assert sha256_fp(stale.cert) not in report.facts["bundle_fingerprints"]
    assert len(report.facts["bundle_fingerprints"]) == 2


def test_already_deployed_trust_and_identity(catalogue, tmp_path):
    trust = validate(**dict(catalogue.cases["trust_chain_fingerprint_plain"],
                            current=catalogue.file("deployed-bundle.pem", pem(catalogue.pki["renapo_old"],
                                                                              catalogue.pki["renapo_new"]))))
    assert trust.already_deployed and trust.defects == [] and "already deployed" in trust.message
    identity = validate(**dict(catalogue.cases["identity_pem_fullchain"],
                               current=catalogue.cases["identity_pem_fullchain"]["certificate"]))
    assert identity.already_deployed and "already deployed" in identity.message


def test_missing_current_is_a_first_deployment(catalogue, tmp_path):
    report = validate(**dict(catalogue.cases["trust_chain_fingerprint_plain"], current=str(tmp_path / "none.pem")))
    assert report.defects == [] and not report.already_deployed
    assert any("nothing is deployed yet" in w for w in report.warnings)


def test_anchor_confirmed_by_live_endpoint(catalogue, tls_server):
    p = catalogue.pki
    endpoint = tls_server(pem(p["renapo_leaf"], p["renapo_new"]), key_bytes(p["renapo_leaf"].key))
    kwargs = dict(catalogue.cases["trust_unconfirmed"], confirm_endpoint=endpoint)
    report = validate(**kwargs)
    assert report.defects == [], report.error_text()
    assert report.facts["anchor"]["confirmed_by"] == f"confirmed by the live endpoint {endpoint}"


def test_endpoint_presenting_another_anchor_does_not_confirm(catalogue, tls_server):
    p = catalogue.pki
    endpoint = tls_server(pem(p["renapo_self"]), key_bytes(p["renapo_self"].key))
    report = validate(**dict(catalogue.cases["trust_unconfirmed"], confirm_endpoint=endpoint))
    assert report.codes == ["UNCONFIRMED_ANCHOR"]


def test_endpoint_down_is_unconfirmed_not_a_crash(catalogue, tls_server):
    endpoint = tls_server(pem(catalogue.pki["renapo_self"]), key_bytes(catalogue.pki["renapo_self"].key))
    kwargs = dict(catalogue.cases["trust_unconfirmed"], confirm_endpoint="127.0.0.1:1", endpoint_timeout=1)
    report = validate(**kwargs)
    assert report.codes == ["UNCONFIRMED_ANCHOR"] and "unreachable" in report.error_text()
    assert endpoint  # a live server elsewhere does not matter


def test_identity_staging_is_atomic_idempotent_and_private(catalogue, tmp_path):
    report = validate(**catalogue.cases["identity_p12_legacy_3des"])
    staging = tmp_path / "stage"
    assert stage(report, str(staging), check_mode=True)[0] is True
    assert not staging.exists()  # check mode writes nothing
    changed, staged = stage(report, str(staging))
    assert changed and set(staged) == {"cert", "chain", "fullchain", "key"}
    assert oct(os.stat(staged["key"]).st_mode & 0o777) == "0o600"
    assert oct(os.stat(staged["cert"]).st_mode & 0o777) == "0o644"
    key = serialization.load_pem_private_key(open(staged["key"], "rb").read(), None)
    assert key.private_numbers() == catalogue.pki["client"].key.private_numbers()
    assert open(staged["fullchain"], "rb").read() == pem(catalogue.pki["client"], catalogue.pki["inter"])
    assert stage(report, str(staging)) == (False, staged)
    assert not [n for n in os.listdir(staging) if n.startswith(".staging-")]


def test_trust_staging_writes_bundle_and_java_truststore(catalogue, tmp_path):
    report = validate(**catalogue.cases["trust_chain_fingerprint_plain"])
    changed, staged = stage(report, str(tmp_path), truststore_passphrase="storepw")
    assert changed and set(staged) == {"anchor", "bundle", "truststore"}
    store = pkcs12.load_pkcs12(open(staged["truststore"], "rb").read(), b"storepw")
    assert [sha256_fp(c.certificate) for c in store.additional_certs] == report.facts["bundle_fingerprints"]
    assert stage(report, str(tmp_path), truststore_passphrase="storepw")[0] is False  # salted file left alone
    assert stage(report, str(tmp_path), truststore_passphrase="other")[0] is True


def test_a_hosts_truststore_holding_the_bundle_is_staged_as_it_is(catalogue, tmp_path):
    report = validate(**catalogue.cases["trust_chain_fingerprint_plain"])
    _, first = stage(report, str(tmp_path / "a"), truststore_passphrase="storepw")
    held = open(first["truststore"], "rb").read()
    # A fresh staging dir would salt a new truststore; the host's own one is kept when it holds exactly the bundle.
    _, fresh = stage(report, str(tmp_path / "b"), truststore_passphrase="storepw",
                     current_truststores=[str(tmp_path / "missing.p12"), first["truststore"]])
    assert open(fresh["truststore"], "rb").read() == held
    _, other = stage(report, str(tmp_path / "c"), truststore_passphrase="other",
                     current_truststores=[first["truststore"]])
    assert open(other["truststore"], "rb").read() != held  # another password: that truststore is not the one to keep


def test_defective_delivery_is_never_staged(catalogue, tmp_path):
    with pytest.raises(ValueError):
        stage(validate(**catalogue.cases["expired"]), str(tmp_path))


# ---------------------------------------------------------------- independent oracles: openssl and keytool

def _openssl_facts(path):
    out = subprocess.run(["openssl", "x509", "-noout", "-serial", "-fingerprint", "-sha256", "-enddate", "-in", path],
                         check=True, capture_output=True, text=True).stdout
    return dict(re.findall(r"^(serial|sha256 Fingerprint|notAfter)=(.*)$", out, re.M | re.I))


@pytest.mark.parametrize("case", ["identity_pem_fullchain", "identity_sat_cer_key", "identity_p12_legacy_rc2",
                                  "trust_self_signed_fingerprint"])
def test_facts_equal_openssl(catalogue, case, tmp_path):
    import datetime as dt
    report = validate(**catalogue.cases[case])
    leaf = tmp_path / "leaf.pem"
    leaf.write_bytes(report.path[0].public_bytes(serialization.Encoding.PEM))
    facts = _openssl_facts(str(leaf))
    assert facts["serial"] == report.facts["serial_hex"]
    assert facts["sha256 Fingerprint"].lower() == report.facts["fingerprints"]["sha256"]
    not_after = dt.datetime.strptime(facts["notAfter"], "%b %d %H:%M:%S %Y %Z")
    assert not_after.strftime("%Y%m%d%H%M%SZ") == report.facts["not_after"]


def test_truststore_equals_keytool(catalogue, tmp_path):
    report = validate(**catalogue.cases["trust_already_trusted_root"])
    _, staged = stage(report, str(tmp_path))
    out = subprocess.run(["keytool", "-list", "-keystore", staged["truststore"], "-storetype", "PKCS12",
                          "-storepass", "changeit"], check=True, capture_output=True, text=True).stdout
    assert "contains 2 entries" in out and out.count("trustedCertEntry") == 2
    listed = re.findall(r"\(SHA-256\): ([0-9A-F:]+)", out)
    assert [f.lower() for f in listed] == report.facts["bundle_fingerprints"] or \
        sorted(f.lower() for f in listed) == sorted(report.facts["bundle_fingerprints"])


def test_pkcs1_key_pem_is_read(catalogue, tmp_path):
    p = catalogue.pki
    path = tmp_path / "k.pem"
    path.write_bytes(key_bytes(p["client"].key, fmt=serialization.PrivateFormat.TraditionalOpenSSL))
    report = validate("identity", certificate=catalogue.cases["identity_pem_fullchain"]["certificate"],
                      private_key=str(path), trusted_roots=catalogue.cases["identity_pem_fullchain"]["trusted_roots"])
    assert report.defects == []


def test_bare_leaf_as_anchor_is_accepted_with_a_warning(catalogue):
    leaf = catalogue.pki["renapo_leaf"]
    report = validate("trust", certificate=catalogue.cases["trust_already_trusted_root"]["certificate"],
                      expected_fingerprint=leaf.cert.fingerprint(hashes.SHA256()).hex())
    assert report.defects == [] and report.anchor == leaf.cert
    assert any("not self-signed" in w for w in report.warnings)
