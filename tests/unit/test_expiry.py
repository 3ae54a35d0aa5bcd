"""expiry: thresholds, days left, crossings and their dedupe key, file and live TLS scans (real files, a real TLS
server on an ephemeral port), trust drift against the approved-anchor registry, the summary table, and
cert_expiry_info run the way operators run it."""
import datetime as dt
import json
import os
import re
import socket
import ssl
import subprocess
import threading
from pathlib import Path

import pytest
from ansible.module_utils import expiry
from ansible.module_utils.cert_files import parse_certificate
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

ROOT = Path(__file__).resolve().parents[2]
NOW = dt.datetime(2026, 3, 2, 12, 0, tzinfo=dt.UTC)
LIMITS = [30, 15, 7, 2]
_KEY = ec.generate_private_key(ec.SECP256R1())


def issue(cn, days, issuer=None, serial=0x1A2B):
    """A certificate valid until NOW + days (issued by `issuer`=(cert, key), else self-signed)."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    signer_name, signer_key = (issuer[0].subject, issuer[1]) if issuer else (name, _KEY)
    return (x509.CertificateBuilder().subject_name(name).issuer_name(signer_name).public_key(_KEY.public_key())
            .serial_number(serial).not_valid_before(NOW - dt.timedelta(days=400))
            .not_valid_after(NOW + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
            .sign(signer_key, hashes.SHA256()))


def pem(*certs):
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def sha256(cert):
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


@pytest.mark.parametrize("given, expected", [
    (None, [30, 15, 7, 2]),
    ([2, 30, 7, 7, "15"], [30, 15, 7, 2]),
    ([45], [45]),
])
def test_thresholds(given, expected):
    assert expiry.thresholds(given) == expected


@pytest.mark.parametrize("bad", [[0], [-1], ["x"], [], [True], [1.5]])
def test_thresholds_refused(bad):
    with pytest.raises(ValueError):
        expiry.thresholds(bad)


@pytest.mark.parametrize("delta, days", [
    (dt.timedelta(days=10, hours=2), 10),
    (dt.timedelta(days=9, hours=23), 9),
    (dt.timedelta(seconds=1), 0),
    (dt.timedelta(seconds=-1), -1),
    (dt.timedelta(days=-3, hours=1), -3),
])
def test_days_left_rounds_down(delta, days):
    assert expiry.days_left(NOW + delta, NOW) == days


@pytest.mark.parametrize("days, threshold", [
    (400, None), (31, None), (30, 30), (16, 30), (15, 15), (10, 15), (8, 15), (7, 7), (3, 7), (2, 2), (0, 2),
    (-1, expiry.EXPIRED), (-90, expiry.EXPIRED),
])
def test_crossed_is_the_most_urgent_threshold_reached(days, threshold):
    assert expiry.crossed(days, LIMITS) == threshold


def test_event_key_names_service_and_certificate_never_the_host():
    fp = "AB:CD:" + "00:" * 29 + "EF"
    assert expiry.event_key("renapo", fp) == "expiry:renapo:abcd" + "00" * 29 + "ef"
    assert expiry.dedupe_key("renapo", fp, 15) == expiry.event_key("renapo", fp) + ":15"
    assert expiry.parse_event_key(expiry.event_key("sat", fp)) == ("sat", fp)
    assert expiry.parse_event_key("<msg@mail>") is None and expiry.parse_event_key(None) is None


def test_dedupe_key_names_service_certificate_and_threshold():
    fp = "AB:CD:" + "00:" * 29 + "EF"
    assert expiry.dedupe_key("renapo", fp, 15) == "expiry:renapo:abcd" + "00" * 29 + "ef:15"
    assert expiry.dedupe_key("renapo", fp, 15) != expiry.dedupe_key("renapo", fp, 7)
    assert expiry.dedupe_key("renapo", fp, 15) != expiry.dedupe_key("sat", fp, 15)


@pytest.mark.parametrize("value, expected", [
    ("2026-03-02T12:00:00Z", NOW),
    ("2026-03-02T06:00:00-06:00", NOW),
    ("2026-03-02T12:00:00", NOW),
])
def test_parse_time(value, expected):
    assert expiry.parse_time(value) == expected


# ---------------------------------------------------------------- file scan

@pytest.fixture
def files(tmp_path):
    root, near, ident = issue("RENAPO Root", 3000, serial=1), issue("RENAPO Old", 10, serial=2), issue("host", 5)
    (tmp_path / "bundle.pem").write_bytes(pem(root, near))
    (tmp_path / "cert.der").write_bytes(ident.public_bytes(serialization.Encoding.DER))
    (tmp_path / "key.pem").write_bytes(_KEY.private_bytes(serialization.Encoding.PEM,
                                                          serialization.PrivateFormat.PKCS8,
                                                          serialization.NoEncryption()))
    (tmp_path / "garbage.pem").write_bytes(b"-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n")
    return tmp_path, {"root": root, "near": near, "ident": ident}


def test_scan_files_rows_and_problems(files):
    d, certs = files
    rows, problems = expiry.scan_files([
        {"path": str(d / "bundle.pem"), "service": "renapo", "role": "trusts"},
        {"path": str(d / "cert.der"), "service": "sat", "role": "presents"},
        {"path": str(d / "key.pem"), "service": "sat", "role": "presents"},
        {"path": str(d / "garbage.pem"), "service": "sat"},
        {"path": str(d / "absent.pem"), "service": "sat"},
    ], "web01", NOW, LIMITS)
    assert [(r["source"].rsplit("/", 1)[1], r["position"], r["subject_cn"], r["days_left"], r["threshold"],
             r["status"]) for r in rows] == [
        ("bundle.pem", 1, "RENAPO Root", 3000, None, "ok"),
        ("bundle.pem", 2, "RENAPO Old", 10, 15, "expiring"),
        ("cert.der", 1, "host", 5, 7, "expiring")]
    near = rows[1]
    assert near["sha256"] == sha256(certs["near"]) and near["serial_number"] == "02"
    assert near["not_after"] == "2026-03-12T12:00:00Z" and near["host"] == "web01" and near["role"] == "trusts"
    assert [(p["source"].rsplit("/", 1)[1], p["problem"].split(":")[0]) for p in problems] == [
        ("key.pem", "unreadable"), ("garbage.pem", "unreadable"), ("absent.pem", "file not found")]
    assert "no certificate" in problems[0]["problem"]
    assert "PRIVATE" not in json.dumps([rows, problems])


# ---------------------------------------------------------------- live TLS scan (a real server)

@pytest.fixture
def tls_server(tmp_path):
    """A TLS server on an ephemeral port presenting an expired leaf and its CA; serves handshakes until closed."""
    ca = issue("Lab CA", 3000, serial=7)
    leaf = issue("renapo.lab", -3, issuer=(ca, _KEY), serial=8)
    (tmp_path / "chain.pem").write_bytes(pem(leaf, ca))
    (tmp_path / "key.pem").write_bytes(_KEY.private_bytes(serialization.Encoding.PEM,
                                                          serialization.PrivateFormat.PKCS8,
                                                          serialization.NoEncryption()))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tmp_path / "chain.pem", tmp_path / "key.pem")
    sock = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            try:
                with ctx.wrap_socket(conn, server_side=True) as tls:
                    tls.recv(1)
            except (OSError, ssl.SSLError):
                pass

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield "127.0.0.1:%d" % sock.getsockname()[1], leaf, ca
    stop.set()
    sock.close()


def test_scan_endpoint_reads_the_presented_chain_even_expired(tls_server):
    endpoint, leaf, ca = tls_server
    rows, problems = expiry.scan_endpoints([{"endpoint": endpoint, "service": "renapo"}], NOW, LIMITS, 5)
    assert problems == []
    assert [(r["subject_cn"], r["sha256"], r["days_left"], r["threshold"], r["status"], r["role"], r["host"])
            for r in rows] == [
        ("renapo.lab", sha256(leaf), -3, expiry.EXPIRED, "expired", "live", endpoint),
        ("Lab CA", sha256(ca), 3000, None, "ok", "live", endpoint)]


def test_scan_endpoint_refused_is_a_problem():
    with socket.create_server(("127.0.0.1", 0)) as s:
        port = s.getsockname()[1]
    rows, problems = expiry.scan_endpoints([{"endpoint": "127.0.0.1:%d" % port, "service": "sat"}], NOW, LIMITS, 2)
    assert rows == [] and problems[0]["problem"].startswith("TLS handshake failed")


@pytest.mark.parametrize("endpoint, parts", [
    ("renapo.gob.mx:443", ("renapo.gob.mx", 443)), ("[::1]:9443", ("::1", 9443)), ("127.0.0.1:1", ("127.0.0.1", 1)),
])
def test_split_endpoint(endpoint, parts):
    assert expiry.split_endpoint(endpoint) == parts


@pytest.mark.parametrize("endpoint", ["renapo.gob.mx", "host:0", "host:70000", ":443", "a b:1"])
def test_split_endpoint_refused(endpoint):
    with pytest.raises(ValueError):
        expiry.split_endpoint(endpoint)


# ---------------------------------------------------------------- summary

def _row(host, cert, role="trusts", service="renapo", source="/etc/consulta/trust/renapo-bundle.pem"):
    """A row built exactly as a scan builds it."""
    info = parse_certificate(cert.public_bytes(serialization.Encoding.DER))
    return expiry.record(info, NOW, LIMITS, host=host, service=service, role=role, source=source, position=1)


def test_one_alert_per_crossing_naming_every_host_and_endpoint():
    near, far = issue("RENAPO Old", 10), issue("RENAPO Root", 3000, serial=3)
    rows = [_row("web02", near), _row("web01", near), _row("web01", far),
            _row("127.0.0.1:9443", near, role="live", source="127.0.0.1:9443")]
    summary = expiry.summarize(rows, expected_hosts=["web01", "web02"])
    [alert] = summary["alerts"]
    assert alert["key"] == expiry.dedupe_key("renapo", sha256(near), 15)
    assert alert["hosts"] == ["web01", "web02"] and alert["endpoints"] == ["127.0.0.1:9443"]
    assert alert["days_left"] == 10 and alert["threshold"] == 15 and alert["status"] == "expiring"
    assert alert["event"] == expiry.event_key("renapo", sha256(near))  # the certificate's one ticket, any host
    assert summary["counts"] == {"certificates": 4, "alerts": 1, "expiring": 3, "expired": 0, "renewed": 0,
                                 "problems": 0, "drift": 0, "resolved": 0}
    assert summary["drift"] == [] and summary["registry_empty"] == []  # no registry given: drift not checked
    header, first, *_ = summary["table"]
    assert header.split()[:5] == ["HOST", "SERVICE", "ROLE", "DAYS", "ALERT"]
    assert first.split()[:5] == ["127.0.0.1:9443", "renapo", "live", "10", "<=15d"]
    assert summary["table"][-1].split()[:5] == ["web01", "renapo", "trusts", "3000", "-"]


def test_healthy_fleet_has_no_alert_and_a_missing_host_is_a_problem():
    far = issue("RENAPO Root", 3000)
    summary = expiry.summarize([_row("web01", far)],
                               [{"host": "web02", "source": "/x.pem", "problem": "file not found"}],
                               expected_hosts=["web01", "web02", "web03"])
    assert summary["alerts"] == []
    assert [p["host"] for p in summary["problems"]] == ["web02", "web03"]
    assert summary["table"][-2:] == ["PROBLEM web02 /x.pem: file not found",
                                     "PROBLEM web03 -: not scanned (unreachable or failed)"]


# ---------------------------------------------------------------- renewal and the tickets it closes

NEAR = issue("RENAPO Lab Root G0", 10, serial=21)
RENEWED = issue("RENAPO Lab Root G0", 3650, serial=22)  # same name, new key and validity: its successor
OTHER = issue("RENAPO Lab Root G1", 3000, serial=23)


def _ticket(cert, hosts, ticket_id=7, service="renapo"):
    return {"id": ticket_id, "event_key": expiry.event_key(service, sha256(cert)), "hosts": hosts,
            "state": "received", "source": "monitor"}


def test_a_successor_in_the_same_file_marks_the_certificate_renewed():
    rows = [_row("web01", NEAR), _row("web01", RENEWED), _row("web02", NEAR), _row("web02", OTHER)]
    summary = expiry.summarize(rows, expected_hosts=["web01", "web02"])
    renewed = {(r["host"], r["subject_cn"]): r["renewed_by"] for r in rows if r["threshold"] is not None}
    # web02's G1 has another name: no successor there
    assert renewed == {("web01", "RENAPO Lab Root G0"): sha256(RENEWED), ("web02", "RENAPO Lab Root G0"): None}
    [alert] = summary["alerts"]
    assert alert["hosts"] == ["web02"] and summary["counts"]["renewed"] == 1
    assert [line.split()[:5] for line in summary["table"] if "RENEWED" in line] == [
        ["web01", "renapo", "trusts", "10", "RENEWED"]]


@pytest.mark.parametrize("case, rows, problems, retired, reason", [
    ("renewed on both hosts", [_row("web01", NEAR), _row("web01", RENEWED), _row("web02", NEAR),
                               _row("web02", RENEWED)], [], {},
     "renovado en web01, web02 (tienen su sucesor)"),
    ("renewed on one host, removed from the other", [_row("web01", NEAR), _row("web01", RENEWED),
                                                      _row("web02", OTHER)], [], {},
     "renovado en web01 (tiene su sucesor); ya no está en web02"),
    ("retired in the registry, still held", [_row("web01", NEAR), _row("web02", NEAR)], [],
     {"renapo": [sha256(NEAR)]}, "fue retirado del registro de anclas aprobadas de renapo"),
])
def test_resolved_when_renewed_everywhere_or_retired(case, rows, problems, retired, reason):
    [resolved] = expiry.resolutions(rows, problems, [_ticket(NEAR, ["web01", "web02"])], retired)
    assert resolved["ticket_id"] == 7 and resolved["event_key"] == expiry.event_key("renapo", sha256(NEAR))
    assert reason in resolved["reason"]


@pytest.mark.parametrize("case, rows, problems", [
    ("still held without a successor on one host", [_row("web01", NEAR), _row("web01", RENEWED),
                                                     _row("web02", NEAR)], []),
    ("a host of the ticket was not scanned", [_row("web01", NEAR), _row("web01", RENEWED)],
     [{"host": "web02", "source": "-", "problem": "not scanned (unreachable or failed)"}]),
    ("the provider's endpoint could not be read", [_row("web01", RENEWED), _row("web02", RENEWED)],
     [{"host": "127.0.0.1:9443", "source": "127.0.0.1:9443", "problem": "TLS handshake failed: x",
       "service": "renapo"}]),
    ("the successor itself crosses a threshold", [_row("web01", NEAR), _row("web01", issue("RENAPO Lab Root G0",
                                                                                             12, serial=24))], []),
])
def test_not_resolved_while_renewal_is_unproven(case, rows, problems):
    assert expiry.resolutions(rows, problems, [_ticket(NEAR, ["web01", "web02"])]) == []


def test_tickets_of_other_events_or_other_providers_are_left_alone():
    rows = [_row("web01", RENEWED)]
    problems = [{"host": "sat.lab:443", "source": "sat.lab:443", "problem": "TLS", "service": "sat"}]
    tickets = [dict(_ticket(NEAR, ["web01"]), id=1), {"id": 2, "event_key": None, "hosts": []},
               {"id": 3, "event_key": "<x@mail>", "hosts": []}]
    assert [r["ticket_id"] for r in expiry.resolutions(rows, problems, tickets)] == [1]


def test_summary_lists_resolved_tickets():
    rows = [_row("web01", NEAR), _row("web01", RENEWED)]
    summary = expiry.summarize(rows, expected_hosts=["web01"], open_tickets=[_ticket(NEAR, ["web01"])])
    assert summary["alerts"] == [] and summary["counts"]["resolved"] == 1
    assert summary["table"][-1].startswith("RESOLVED ticket #7 expiry:renapo:")


# ---------------------------------------------------------------- trust drift against the registry

BUNDLE = "/etc/consulta/trust/renapo-bundle.pem"
SAT_CA = "/etc/consulta/trust/sat-ca.pem"
GEN1, GEN2, ROGUE = issue("RENAPO Lab Root G1", 3000, serial=11), issue("RENAPO Lab Root G2", 3600, serial=12), \
    issue("Rogue Root CA", 3650, serial=13)
SAT_ROOT = issue("SAT Lab Root", 3000, serial=14)


def _drift(rows, approved):
    drift, empty = expiry.trust_drift(rows, approved)
    return [(d["kind"], d["host"], d["service"], d["fingerprint"]) for d in drift], \
        [(e["service"], e["hosts"]) for e in empty]


@pytest.mark.parametrize("case, rows, approved, drift, empty", [
    ("every host holds exactly what is approved",
     [_row("web01", GEN1), _row("web02", GEN1)], {"renapo": [sha256(GEN1)]}, [], []),
    ("a rogue anchor planted on one host is drift on that host only",
     [_row("web01", GEN1), _row("web02", GEN1), _row("web02", ROGUE)], {"renapo": [sha256(GEN1)]},
     [("held_not_approved", "web02", "renapo", sha256(ROGUE))], []),
    ("an approved anchor a host lacks (approved after its last rollout)",
     [_row("web01", GEN1), _row("web01", GEN2), _row("web02", GEN1)], {"renapo": [sha256(GEN1), sha256(GEN2)]},
     [("approved_missing", "web02", "renapo", sha256(GEN2))], []),
    ("a retired anchor still held: the registry has entries but approves none of them",
     [_row("web01", GEN1)], {"renapo": []}, [("held_not_approved", "web01", "renapo", sha256(GEN1))], []),
    ("a provider with no registry entry at all: one notice, never anchor by anchor",
     [_row("web01", GEN1), _row("web01", SAT_ROOT, service="sat", source=SAT_CA),
      _row("web02", SAT_ROOT, service="sat", source=SAT_CA)], {"renapo": [sha256(GEN1)]},
     [], [("sat", ["web01", "web02"])]),
    ("an anchor approved for another provider is drift here",
     [_row("web01", GEN1), _row("web01", GEN1, service="sat", source=SAT_CA)],
     {"renapo": [sha256(GEN1)], "sat": [sha256(SAT_ROOT)]},
     [("held_not_approved", "web01", "sat", sha256(GEN1)), ("approved_missing", "web01", "sat", sha256(SAT_ROOT))],
     []),
    ("what a host presents and what endpoints present live are not trust",
     [_row("web01", GEN1), _row("web01", ROGUE, role="presents", source="/etc/consulta/identity/sat/cert.pem"),
      _row("127.0.0.1:9443", ROGUE, role="live", source="127.0.0.1:9443")], {"renapo": [sha256(GEN1)]}, [], []),
    ("fingerprints in any spelling, or the registry's PEMs as they are",
     [_row("web01", GEN1), _row("web01", GEN2)],
     {"renapo": [sha256(GEN1).replace(":", "").lower(), pem(GEN2).decode()]}, [], []),
])
def test_trust_drift(case, rows, approved, drift, empty):
    assert _drift(rows, approved) == (drift, empty), case


def test_drift_entry_names_host_path_fingerprint_subject_and_expiry():
    rows = [_row("web01", GEN1), _row("web02", GEN1), _row("web02", ROGUE)]
    [entry], [] = expiry.trust_drift(rows, {"renapo": [sha256(GEN1)]})
    assert entry == {"kind": "held_not_approved", "host": "web02", "service": "renapo", "path": BUNDLE,
                     "fingerprint": sha256(ROGUE), "subject": "Rogue Root CA",
                     "not_after": (NOW + dt.timedelta(days=3650)).strftime("%Y-%m-%dT%H:%M:%SZ")}


def test_each_trust_file_is_compared_on_its_own():
    other = "/etc/consulta/trust/renapo-truststore.pem"
    rows = [_row("web01", GEN1), _row("web01", GEN2), _row("web01", GEN1, source=other)]
    drift, _ = expiry.trust_drift(rows, {"renapo": [sha256(GEN1), sha256(GEN2)]})
    assert [(d["kind"], d["path"], d["fingerprint"]) for d in drift] == [
        ("approved_missing", other, sha256(GEN2))]


def test_duplicate_anchor_in_one_bundle_is_reported_once():
    rows = [_row("web01", ROGUE), _row("web01", ROGUE), _row("web01", GEN1)]
    drift, _ = expiry.trust_drift(rows, {"renapo": [sha256(GEN1)]})
    assert [d["fingerprint"] for d in drift] == [sha256(ROGUE)]


@pytest.mark.parametrize("value", [
    sha256(GEN1), sha256(GEN1).lower(), sha256(GEN1).replace(":", ""), "sha256:" + sha256(GEN1).replace(":", ""),
    "SHA256 Fingerprint=" + sha256(GEN1), " ".join(sha256(GEN1).split(":")), pem(GEN1).decode(),
], ids=["colons", "lower", "bare-hex", "sha256-prefix", "openssl-output", "spaces", "pem"])
def test_fingerprint_spellings(value):
    assert expiry.fingerprint(value) == sha256(GEN1)


@pytest.mark.parametrize("approved, msg", [
    (["AB:CD"], "approved must map"),
    ({"renapo": "AB:CD"}, "approved[renapo] must be a list"),
    ({"renapo": ["AB:CD"]}, "approved[renapo]: 'AB:CD' is not a SHA-256 fingerprint"),
    ({"renapo": [sha256(GEN1) + "00"]}, "is not a SHA-256 fingerprint"),
    ({"renapo": [pem(GEN1, GEN2).decode()]}, "exactly one certificate, not 2"),
])
def test_approved_refused(approved, msg):
    with pytest.raises(ValueError, match=re.escape(msg)):
        expiry.approved_fingerprints(approved)


def test_summary_prints_drift_section_and_counts_it_without_alerting():
    rows = [_row("web01", GEN1), _row("web02", GEN1), _row("web02", ROGUE), _row("web01", GEN1, service="sat",
                                                                                 source=SAT_CA)]
    summary = expiry.summarize(rows, [{"host": "web03", "source": "/x.pem", "problem": "file not found"}],
                               approved={"renapo": [sha256(GEN1), sha256(GEN2)]})
    assert summary["alerts"] == [] and summary["counts"]["drift"] == 3
    section = summary["table"][5:-1]
    assert section == [
        "TRUST DRIFT against the approved-anchor registry: 1 held but not approved, 2 approved but missing",
        f"DRIFT web01 renapo approved, missing: {sha256(GEN2)} from {BUNDLE}",
        f"DRIFT web02 renapo held, not approved: {sha256(ROGUE)} CN=Rogue Root CA not_after "
        f"{(NOW + dt.timedelta(days=3650)):%Y-%m-%dT%H:%M:%SZ} in {BUNDLE}",
        f"DRIFT web02 renapo approved, missing: {sha256(GEN2)} from {BUNDLE}",
        "REGISTRY registry empty for sat: seed it (playbooks/anchor.yml -e op=seed -e provider=sat) "
        "(hosts: web01)"]
    assert summary["table"][-1] == "PROBLEM web03 /x.pem: file not found"  # problems stay last
    assert summary["registry_empty"] == [{
        "service": "sat", "hosts": ["web01"],
        "message": "registry empty for sat: seed it (playbooks/anchor.yml -e op=seed -e provider=sat)"}]


def test_summary_says_when_there_is_no_drift():
    summary = expiry.summarize([_row("web01", GEN1)], approved={"renapo": [sha256(GEN1)]})
    assert summary["table"][-1] == "TRUST DRIFT against the approved-anchor registry: none"
    assert summary["drift"] == [] and summary["counts"]["drift"] == 0


# ---------------------------------------------------------------- the module, as operators run it

def _ansible(module, args, *flags):
    proc = subprocess.run([str(ROOT / ".venv" / "bin" / "ansible"), "localhost", "-m", module, "-a",
                           json.dumps(args), *flags], cwd=ROOT,
                          env={**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg")},
                          capture_output=True, text=True, timeout=120)
    out = proc.stdout
    return proc.returncode, json.loads(out[out.index("=>", out.index("localhost | ")) + 2:])


def test_module_files_endpoints_and_merged_rows(files, tls_server):
    d, certs = files
    endpoint, leaf, _ca = tls_server
    merged = _row("web09", certs["near"])
    rc, res = _ansible("cert_expiry_info", {
        "host": "web01", "now": "2026-03-02T12:00:00Z", "thresholds": [30, 15, 7, 2],
        "files": [{"path": str(d / "bundle.pem"), "service": "renapo"}],
        "endpoints": [{"endpoint": endpoint, "service": "renapo", "server_name": "renapo.lab"}],
        "scanned": [merged], "expected_hosts": ["web01", "web09", "web10"]}, "--check")
    assert rc == 0 and res["changed"] is False
    assert [(r["host"], r["days_left"]) for r in res["certificates"]] == [
        (endpoint, -3), ("web01", 10), ("web09", 10), (endpoint, 3000), ("web01", 3000)]
    assert [(a["threshold"], a["hosts"], a["endpoints"]) for a in res["alerts"]] == [
        (0, [], [endpoint]), (15, ["web01", "web09"], [])]
    assert res["alerts"][0]["sha256"] == sha256(leaf)
    assert res["problems"] == [{"host": "web10", "source": "-", "problem": "not scanned (unreachable or failed)"}]
    assert res["thresholds"] == [30, 15, 7, 2]


def test_module_reports_drift_from_the_registry_pems(tmp_path):
    (tmp_path / "bundle.pem").write_bytes(pem(GEN1, ROGUE))
    rc, res = _ansible("cert_expiry_info", {
        "host": "web01", "now": "2026-03-02T12:00:00Z",
        "files": [{"path": str(tmp_path / "bundle.pem"), "service": "renapo"}],
        "approved": {"renapo": [pem(GEN1).decode(), sha256(GEN2)]}}, "--check")
    assert rc == 0 and res["changed"] is False and res["alerts"] == []
    assert [(d["kind"], d["fingerprint"]) for d in res["drift"]] == [
        ("held_not_approved", sha256(ROGUE)), ("approved_missing", sha256(GEN2))]
    assert res["counts"]["drift"] == 2 and res["registry_empty"] == []
    assert sum(line.startswith("DRIFT web01 renapo") for line in res["table"]) == 2


def test_module_resolves_open_tickets(tmp_path):
    (tmp_path / "bundle.pem").write_bytes(pem(NEAR, RENEWED))
    rc, res = _ansible("cert_expiry_info", {
        "host": "web01", "now": "2026-03-02T12:00:00Z",
        "files": [{"path": str(tmp_path / "bundle.pem"), "service": "renapo"}],
        "open_tickets": [_ticket(NEAR, ["web01"]), _ticket(OTHER, ["web01"], ticket_id=8)],
        "retired": {"renapo": [sha256(OTHER)]}}, "--check")
    assert rc == 0 and res["alerts"] == []
    assert [(r["ticket_id"], r["reason"]) for r in res["resolved"]] == [
        (7, f"certificado {sha256(NEAR)[:11]} por vencer renovado en todos los servidores: renovado en web01 (tiene "
            "su sucesor)"),
        (8, f"el certificado {sha256(OTHER)[:11]} fue retirado del registro de anclas aprobadas de renapo; la "
            "siguiente actualización lo quita de los servidores")]
    rc, res = _ansible("cert_expiry_info", {"retired": {"renapo": ["zz"]}}, "--check")
    assert rc != 0 and res["msg"].startswith("invalid retired anchors: retired[renapo]")


def test_module_refuses_a_bad_approved_fingerprint(tmp_path):
    rc, res = _ansible("cert_expiry_info", {"approved": {"renapo": ["AB:CD"]}}, "--check")
    assert rc != 0 and res["msg"].startswith("invalid approved anchors: approved[renapo]: 'AB:CD'")


def test_module_doc_renders():
    proc = subprocess.run([str(ROOT / ".venv" / "bin" / "ansible-doc"), "-M", "library", "cert_expiry_info"],
                          cwd=ROOT, env={**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg")},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "expected_hosts" in proc.stdout and proc.stderr.strip() == ""


def test_one_chain_fetch_and_one_fingerprint_form():
    """Expiry monitoring and anchor evidence read endpoints with the same fetch (SNI included), and spell a
    fingerprint the one way pki_format does."""
    from ansible.module_utils import cert_validation, pki_format, tls_endpoint

    assert expiry.presented_chain is tls_endpoint.presented_chain
    assert cert_validation.presented_chain is tls_endpoint.presented_chain
    assert expiry.fingerprint("sha256:" + "ab" * 32) == pki_format.fingerprint_text("AB" * 32) == ":".join(["AB"] * 32)
    assert tls_endpoint.sni_for("renapo.lab") == "renapo.lab" and tls_endpoint.sni_for("127.0.0.1") is None
    assert tls_endpoint.sni_for("127.0.0.1", "renapo.lab") == "renapo.lab"
