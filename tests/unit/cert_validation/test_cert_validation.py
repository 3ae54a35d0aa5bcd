"""Pure validation: the catalogue, chain ordering, the approved-anchor registry, names, staging. Real files, real TLS,
no mocks."""
import os
import re
import subprocess

import pytest
from ansible.module_utils.cert_validation import (
    CODES,
    fetch_endpoint_chain,
    name_matches,
    normalise_fingerprint,
    order_chain,
    parse_expected_names,
    sha256_fp,
    stage,
    validate,
)
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from .conftest import BAD, DAY, PASSPHRASE, issue, key_bytes, pem, pem_str


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


def test_bundle_is_the_approved_anchors_only_never_what_hosts_hold(catalogue, tmp_path):
    p = catalogue.pki
    stale = issue("RENAPO Root G0", ca=True, start=-900 * DAY, days=-5)
    current = tmp_path / "hosts-bundles.pem"
    current.write_bytes(pem(p["rogue"], p["renapo_old"], stale))  # a rogue anchor planted on one host
    report = validate(**dict(catalogue.cases["trust_chain_fingerprint_plain"], current=str(current),
                             approved_anchors=pem_str(stale, p["renapo_old"], p["renapo_new"])))
    assert report.defects == [], report.error_text()
    # Approved and not expired, in the registry's order; the rogue anchor is not carried over, the stale one pruned.
    assert report.facts["bundle_fingerprints"] == [sha256_fp(p["renapo_old"].cert), sha256_fp(p["renapo_new"].cert)]
    assert report.facts["drift"] == [{"fingerprint": sha256_fp(p["rogue"].cert), "subject": "CN=Lab Root CA,O=Lab",
                                      "not_after": p["rogue"].cert.not_valid_after_utc.strftime("%Y%m%d%H%M%SZ")}]
    assert not report.already_deployed and "1 certificate(s) held by hosts are not in the registry" in report.message


def test_already_deployed_means_hosts_hold_exactly_the_bundle(catalogue, tmp_path):
    p = catalogue.pki
    exact = catalogue.file("exact-bundle.pem", pem(p["renapo_new"], p["renapo_old"]))  # order does not matter
    report = validate(**dict(catalogue.cases["trust_chain_fingerprint_plain"], current=exact))
    assert report.already_deployed and report.drift == []
    with_rogue = catalogue.file("rogue-bundle.pem", pem(p["renapo_new"], p["renapo_old"], p["rogue"]))
    report = validate(**dict(catalogue.cases["trust_chain_fingerprint_plain"], current=with_rogue))
    assert not report.already_deployed and [d["subject"] for d in report.drift] == ["CN=Lab Root CA,O=Lab"]


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


# ---------------------------------------------------------------- the registry is the only source of trust

def test_unapproved_anchor_names_it_and_the_way_to_approve_it(catalogue):
    p = catalogue.pki
    report = validate(**dict(catalogue.cases["trust_unapproved"], provider="renapo"))
    assert report.codes == ["UNAPPROVED_ANCHOR"]
    msg = report.defects[0]["message"]
    assert msg.startswith(f"anchor 'CN=RENAPO Root G2,O=Lab' ({sha256_fp(p['renapo_new'].cert)}) is not approved in "
                          "the trust-anchor registry of renapo; approve it with evidence first")
    assert "playbooks/anchor.yml" in msg


def test_without_the_registry_nothing_is_trusted(catalogue):
    report = validate(**catalogue.cases["trust_no_registry"])
    assert report.codes == ["UNAPPROVED_ANCHOR"] and "no approved anchors were given" in report.error_text()
    assert validate(**dict(catalogue.cases["trust_no_registry"], approved_anchors=[])).codes == ["UNAPPROVED_ANCHOR"]


def test_a_forged_letter_stating_the_forgers_fingerprint_trusts_nothing(catalogue):
    report = validate(**catalogue.cases["trust_forged_letter"])
    assert report.codes == ["UNAPPROVED_ANCHOR"]  # the fingerprint matches, and that proves nothing
    assert sha256_fp(catalogue.pki["rogue"].cert) not in report.facts["bundle_fingerprints"]


def test_trusted_roots_never_trust_an_anchor(catalogue):
    case = dict(catalogue.cases["trust_unapproved"], trusted_roots=[catalogue.file(
        "renapo-new.pem", pem(catalogue.pki["renapo_new"]))])
    report = validate(**case)
    assert report.codes == ["UNAPPROVED_ANCHOR"]
    assert any("trusted_roots is ignored for kind trust" in w for w in report.warnings)


def test_an_unreadable_registry_entry_is_a_defect(catalogue):
    case = dict(catalogue.cases["trust_chain_fingerprint_plain"],
                approved_anchors=["-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n"])
    report = validate(**case)
    assert "UNREADABLE" in report.codes and "approved anchor 1" in report.error_text()


def test_expected_fingerprint_is_only_a_consistency_check(catalogue):
    case = catalogue.cases["trust_chain_fingerprint_plain"]
    assert validate(**dict(case, expected_fingerprint=None)).defects == []  # the registry alone decides
    mismatch = validate(**catalogue.cases["trust_fingerprint_mismatch"])
    assert mismatch.codes == ["FINGERPRINT_MISMATCH"]


# ---------------------------------------------------------------- diagnostics that point at the fix

def test_missing_issuer_is_an_incomplete_chain_naming_it(catalogue):
    report = validate(**catalogue.cases["trust_missing_issuer"])
    assert report.codes == ["INCOMPLETE_CHAIN"], report.error_text()
    assert "issuer 'CN=RENAPO Root G2,O=Lab' of 'CN=consultas.renapo.lab,O=Lab' is missing from the delivery" in \
        report.error_text()
    identity = validate(**catalogue.cases["missing_intermediate"])
    assert "issuer 'CN=Lab Issuing CA,O=Lab' of 'CN=consulta-client,O=Lab' is missing" in identity.error_text()


@pytest.mark.parametrize("case, where", [("trust_bad_signature", "the approved anchors of"),
                                         ("trust_bad_signature_in_delivery", "the delivery")])
def test_signature_not_verifying_under_the_named_issuer_is_bad_signature(catalogue, case, where):
    p = catalogue.pki
    report = validate(**case_with_provider(catalogue, case))
    assert report.codes == ["BAD_SIGNATURE"], report.error_text()
    msg = report.defects[0]["message"]
    assert "'CN=consultas.renapo.lab,O=Lab' does not verify under its issuer 'CN=RENAPO Root G2,O=Lab'" in msg
    assert sha256_fp(p["renapo_new"].cert) in msg and where in msg


def test_altered_self_signed_anchor_and_intermediate_are_bad_signatures(catalogue):
    assert validate(**catalogue.cases["trust_tampered_self_signed"]).codes == ["BAD_SIGNATURE"]
    identity = validate(**catalogue.cases["identity_bad_intermediate"])
    assert "BAD_SIGNATURE" in identity.codes and "INCOMPLETE_CHAIN" not in identity.codes
    assert "under its issuer 'CN=Lab Root CA,O=Lab'" in identity.error_text()


def case_with_provider(catalogue, case):
    return dict(catalogue.cases[case], provider="renapo")


# ---------------------------------------------------------------- whole names, never substrings

@pytest.mark.parametrize("actual, expected, matches", [
    ("CN=renapo.lab CA", "CN=renapo.lab", False),
    ("CN=renapo.lab", "CN=renapo.lab CA", False),
    ("CN=renapo.lab,O=RENAPO,C=MX", "CN=renapo.lab", False),  # the whole name, not one attribute
    ("CN=renapo.lab,O=RENAPO,C=MX", "CN=renapo.lab,O=RENAPO,C=MX", True),
    ("CN=renapo.lab,O=RENAPO,C=MX", "cn=RENAPO.lab,o=renapo,c=mx", True),  # case-insensitive values and types
    ("CN=renapo.lab,O=Registro  Nacional,C=MX", "CN=renapo.lab,O=Registro Nacional,C=MX", True),
    ("CN=renapo.lab,O=RENAPO,C=MX", "O=RENAPO,CN=renapo.lab,C=MX", False),  # RDN order matters
    ("CN=a+O=b,C=MX", "O=b+CN=a,C=MX", True),  # inside one multi-valued RDN it does not
])
def test_name_matching_is_whole_name(actual, expected, matches):
    assert name_matches(x509.Name.from_rfc4514_string(actual), parse_expected_names(expected)) is matches


def test_lookalike_subject_is_refused_and_a_list_allows_several(catalogue):
    report = validate(**catalogue.cases["trust_subject_substring"])
    assert report.codes == ["WRONG_SUBJECT"]
    assert "subject 'CN=renapo.lab CA,O=Lab' is not the expected 'CN=renapo.lab,O=Lab'" in report.error_text()
    assert validate(**catalogue.cases["trust_subject_one_of_several"]).defects == []
    bad = validate(**dict(catalogue.cases["trust_exact_subject"], expected_subject="CN=renapo\\.lab"))
    assert bad.codes == ["WRONG_SUBJECT"] and "is not an RFC 4514 name" in bad.error_text()


# ---------------------------------------------------------------- the live endpoint (used by the registry's evidence)

def test_fetch_endpoint_chain_sends_sni_and_returns_the_presented_chain(catalogue, tls_server):
    p = catalogue.pki
    server = tls_server(pem(p["renapo_leaf"], p["renapo_new"]), key_bytes(p["renapo_leaf"].key), server=True)
    port = server.endpoint.rsplit(":", 1)[1]
    chain = fetch_endpoint_chain(server.endpoint, timeout=5, server_name="renapo.lab")
    assert chain == [p["renapo_leaf"].cert, p["renapo_new"].cert]
    fetch_endpoint_chain(f"localhost:{port}", timeout=5)  # a host name is its own SNI
    fetch_endpoint_chain(server.endpoint, timeout=5)  # an IP address sends none
    assert server.sni == ["renapo.lab", "localhost", None]


def test_fetch_endpoint_chain_refuses_a_malformed_endpoint_and_reports_a_dead_one():
    with pytest.raises(ValueError, match="is not host:port"):
        fetch_endpoint_chain("renapo.lab")
    with pytest.raises(OSError):
        fetch_endpoint_chain("127.0.0.1:1", timeout=1)


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
    assert facts["sha256 Fingerprint"] == report.facts["fingerprints"]["sha256"]  # openssl's form, as is
    not_after = dt.datetime.strptime(facts["notAfter"], "%b %d %H:%M:%S %Y %Z")
    assert not_after.strftime("%Y%m%d%H%M%SZ") == report.facts["not_after"]


def test_truststore_equals_keytool(catalogue, tmp_path):
    report = validate(**catalogue.cases["trust_leaf_under_approved_anchor"])
    _, staged = stage(report, str(tmp_path))
    out = subprocess.run(["keytool", "-list", "-keystore", staged["truststore"], "-storetype", "PKCS12",
                          "-storepass", "changeit"], check=True, capture_output=True, text=True).stdout
    assert "contains 2 entries" in out and out.count("trustedCertEntry") == 2
    listed = re.findall(r"\(SHA-256\): ([0-9A-F:]+)", out)
    assert sorted(listed) == sorted(report.facts["bundle_fingerprints"])


def test_pkcs1_key_pem_is_read(catalogue, tmp_path):
    p = catalogue.pki
    path = tmp_path / "k.pem"
    path.write_bytes(key_bytes(p["client"].key, fmt=serialization.PrivateFormat.TraditionalOpenSSL))
    report = validate("identity", certificate=catalogue.cases["identity_pem_fullchain"]["certificate"],
                      private_key=str(path), trusted_roots=catalogue.cases["identity_pem_fullchain"]["trusted_roots"])
    assert report.defects == []


def test_an_approved_bare_leaf_is_its_own_anchor_with_a_warning(catalogue):
    leaf = catalogue.pki["renapo_leaf"]
    report = validate("trust", certificate=catalogue.cases["trust_leaf_under_approved_anchor"]["certificate"],
                      expected_fingerprint=leaf.cert.fingerprint(hashes.SHA256()).hex(), approved_anchors=pem_str(leaf))
    assert report.defects == [] and report.anchor == leaf.cert
    assert any("not self-signed" in w for w in report.warnings)
