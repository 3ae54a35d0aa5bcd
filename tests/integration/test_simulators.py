"""The lab's simulators, run in-process on ephemeral ports with a temporary state, and `consulta_check` against them.

Real servers and real clients only: zeep (a SOAP client no one here wrote) against RENAPO's WSDL, Python's ssl for
the certificate rotation and SAT's mutual TLS, smtplib against the sink, `ansible localhost -m consulta_check`.
"""
import hashlib
import http.client
import json
import mailbox
import os
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from email.message import EmailMessage
from pathlib import Path

import pki
import pytest
import requests
import zeep
from cryptography import x509
from sim import padron, renapo, services
from stdnum.mx import rfc as stdrfc

from tests.providers import THIRD_PROVIDER, lab_providers

ROOT = Path(__file__).resolve().parents[2]
WSDL_PATH = renapo.SERVICE_PATH + "?wsdl"
CREDS = {"usuario": renapo.LAB_USUARIO, "password": renapo.LAB_PASSWORD}


def start(state):
    return services.start(state, renapo=("127.0.0.1", 0), sat=("127.0.0.1", 0), smtp=("127.0.0.1", 0))


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    state = tmp_path_factory.mktemp("simlab")
    svc = start(state)
    yield svc
    svc.stop()


@pytest.fixture(scope="module")
def examples(lab):
    return padron.examples(lab.state)


def zeep_client(port, anchor):
    session = requests.Session()
    session.verify = str(anchor)
    session.trust_env = False  # REQUESTS_CA_BUNDLE would otherwise replace the lab anchor
    return zeep.Client(f"https://127.0.0.1:{port}{WSDL_PATH}", transport=zeep.Transport(session=session))


def consult_zeep(client, curp, password=renapo.LAB_PASSWORD):
    ret = client.service.consultarPorCurp(datos={
        "cveCurp": curp, "cveEntidadEmisora": "09", "direccionIp": "127.0.0.1", "password": password,
        "tipoTransaccion": 1, "usuario": renapo.LAB_USUARIO})
    return ET.fromstring(ret)  # noqa: S314 - the simulator's answer


def tls_serial(port, anchor, cert=None, key=None) -> str:
    """Serial of the certificate a server presents after verifying it against anchor (raises on failure)."""
    ctx = ssl.create_default_context(cafile=str(anchor))
    if cert:
        ctx.load_cert_chain(cert, key)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
        serial = format(int(s.getpeercert()["serialNumber"], 16), "X")
    return serial.zfill(len(serial) + len(serial) % 2)  # openssl's form: an even number of hex digits


def https(port, path, anchor, method="GET", body=None, cert=None, key=None):
    ctx = ssl.create_default_context(cafile=str(anchor))
    if cert:
        ctx.load_cert_chain(cert, key)
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=5)
    try:
        conn.request(method, path, body=body)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def leaf_serial(pem: Path) -> str:
    """The leaf's serial as openssl prints it (`x509 -serial`): the one form pki_format.serial_text writes."""
    out = subprocess.run(["openssl", "x509", "-noout", "-serial", "-in", str(pem)], capture_output=True, text=True,
                         check=True).stdout
    return out.strip().split("=", 1)[1]


# ---------------------------------------------------------------- RENAPO through zeep

def test_zeep_loads_the_wsdl_and_consults_a_found_curp(lab, examples):
    client = zeep_client(lab.renapo_port, pki.ensure(lab.state)["renapo_anchor"])
    op = client.wsdl.services["ConsultaPorCurpService"].ports["ConsultaPorCurpServiceHttpsSoap11Endpoint"]
    assert op.binding_options["address"] == f"https://127.0.0.1:{lab.renapo_port}{renapo.SERVICE_PATH}"
    root = consult_zeep(client, examples["check"])
    assert root.tag == "CURPStruct"
    assert root.get("statusOper") == "EXITOSO" and root.get("message") == "LA OPERACION SE EJECUTO."
    assert [c.tag for c in root] == list(renapo.FIELDS)
    rec = {c.tag: c.text or "" for c in root}
    row = next(r for r in padron.load(lab.state)["padron"] if r["curp"] == examples["check"])
    assert rec["CURP"] == examples["check"] and rec["statusCurp"] == "AN"
    assert (rec["nombres"], rec["apellido1"], rec["sexo"]) == (row["nombres"], row["apellido1"], row["sexo"])
    assert time.strptime(rec["fechNac"], "%d/%m/%Y") == time.strptime(row["fecha_nacimiento"], "%Y-%m-%d")


@pytest.mark.parametrize("case, status, codes, words", [
    ("NOT_FOUND", "NO EXITOSO", ("01", "06"), "NO SE ENCUENTRA"),
    ("MALFORMED", "NO EXITOSO", ("01", "09"), "LA CURP NO ES VALIDA"),
    ("wrong_password", "NO EXITOSO", ("02", "01"), "USUARIO O PASSWORD INCORRECTOS"),
    ("BD", "EXITOSO", ("", ""), "LA OPERACION SE EJECUTO"),
])
def test_zeep_each_answer_is_named(lab, examples, case, status, codes, words):
    client = zeep_client(lab.renapo_port, pki.ensure(lab.state)["renapo_anchor"])
    if case == "wrong_password":
        root = consult_zeep(client, examples["check"], password="not-the-password")
    elif case == "BD":  # a name without accents: zeep trusts the UTF-8 declaration (see the next test)
        data = padron.load(lab.state)
        root = consult_zeep(client, next(
            r["curp"] for r in data["padron"] if (data["renapo"].get(r["curp"]) or {}).get("statusCurp") == "BD"
            and all(ch.isascii() for ch in "".join(data["renapo"][r["curp"]][f] for f in ("nombres", "apellido1",
                                                                                           "apellido2")))))
    else:
        root = consult_zeep(client, examples[case])
    assert (root.get("statusOper"), root.get("TipoError"), root.get("CodigoError")) == (status, *codes)
    assert words in root.get("message")
    if case == "BD":
        assert root.findtext("statusCurp") == "BD"
    else:
        assert len(root) == 0


def test_accents_arrive_as_renapo_sends_them_and_our_client_reads_them(lab):
    """RENAPO's quirk, reproduced: a UTF-8 declaration over ISO-8859-1 bytes. A client that trusts the declaration
    (zeep/lxml) fails on the first MUÑOZ or JOSÉ; consulta.consult reads every name as RENAPO holds it."""
    from ansible.module_utils.consulta import ConsultaError, build_envelope, consult

    data = padron.load(lab.state)
    anchor = pki.ensure(lab.state)["renapo_anchor"]
    accented = [r["curp"] for r in data["padron"] if r["curp"] in data["renapo"] and "Ñ" in "".join(
        data["renapo"][r["curp"]][f] for f in ("nombres", "apellido1", "apellido2"))]
    assert len(accented) >= 20
    curp = accented[0]
    status, body = https(lab.renapo_port, renapo.SERVICE_PATH, anchor, method="POST",
                         body=build_envelope(curp, **CREDS))
    assert status == 200 and body.startswith(b"<?xml version='1.0' encoding='UTF-8'?>")
    want = data["renapo"][curp]
    assert want["apellido1"].encode("iso-8859-1") in body or want["apellido2"].encode("iso-8859-1") in body
    with pytest.raises(UnicodeDecodeError):
        body.decode("utf-8")
    with pytest.raises(Exception):  # noqa: B017 - lxml's own error types: the point is that it cannot parse it
        consult_zeep(zeep_client(lab.renapo_port, anchor), curp)
    for c in accented[:20]:
        try:
            got = consult("curp_soap", f"https://127.0.0.1:{lab.renapo_port}", curp=c, ca_path=str(anchor), **CREDS)
        except ConsultaError as e:
            pytest.fail(f"{c}: {e}")
        rec = data["renapo"][c]
        assert [got["record"][f] for f in ("nombres", "apellido1", "apellido2", "docProbatorio")] == [
            rec["nombres"], rec["apellido1"], rec["apellido2"], rec["docProbatorio"]]


def test_malformed_soap_is_a_fault_with_http_500(lab):
    anchor = pki.ensure(lab.state)["renapo_anchor"]
    status, body = https(lab.renapo_port, renapo.SERVICE_PATH, anchor, "POST", b"<not-soap")
    assert status == 500
    fault = ET.fromstring(body).find(f"{{{renapo.SOAP_ENV}}}Body/{{{renapo.SOAP_ENV}}}Fault")  # noqa: S314
    assert fault.findtext("faultcode") == "soapenv:Client" and "Malformed SOAP" in fault.findtext("faultstring")


def test_stats_count_requests(lab, examples):
    anchor = pki.ensure(lab.state)["renapo_anchor"]
    before = json.loads(https(lab.renapo_port, "/__lab/stats", anchor)[1])
    consult_zeep(zeep_client(lab.renapo_port, anchor), examples["NOT_FOUND"])
    after = json.loads(https(lab.renapo_port, "/__lab/stats", anchor)[1])
    assert after["renapo.soap"] == before.get("renapo.soap", 0) + 1
    assert after["renapo.NO EXITOSO.01/06"] == before.get("renapo.NO EXITOSO.01/06", 0) + 1
    assert after["renapo.wsdl"] == before.get("renapo.wsdl", 0) + 1


def test_a_stalled_handshake_does_not_block_other_clients(lab):
    anchor = pki.ensure(lab.state)["renapo_anchor"]
    with socket.create_connection(("127.0.0.1", lab.renapo_port)):  # connects, never says hello
        t0 = time.perf_counter()
        assert tls_serial(lab.renapo_port, anchor)
        assert time.perf_counter() - t0 < 1


# ---------------------------------------------------------------- RENAPO's renewal: publish, then switch

@pytest.mark.parametrize("mode", ["ca", "selfsigned"])
def test_publish_then_switch(tmp_path, mode):
    svc = start(tmp_path)
    try:
        paths = pki.ensure(tmp_path)
        gen1 = paths["renapo_anchor"]
        assert tls_serial(svc.renapo_port, gen1) == leaf_serial(paths["renapo_server_cert"])

        pub = pki.publish(tmp_path, mode=mode)
        assert pub["generation"] == "gen2" and pki.publish(tmp_path, mode=mode)["anchor"] == pub["anchor"]
        # What RENAPO mails: the DER anchor's SHA-256 is the fingerprint its letter states.
        der = (pub["outbox"] / "renapo_raiz_gen2.cer").read_bytes()
        fp = hashlib.sha256(der).hexdigest().upper()
        assert pub["fingerprint_sha256"] == ":".join(fp[i:i + 2] for i in range(0, 64, 2))
        assert pub["fingerprint_sha256"] in (pub["outbox"] / "oficio.txt").read_text()
        mailed = x509.load_pem_x509_certificates((pub["outbox"] / "renapo_ws_gen2.pem").read_bytes())
        assert mailed[-1].public_bytes(pki.serialization.Encoding.DER) == der
        # Published, not presented: gen1 clients still work, a gen2-only client does not yet.
        assert pki.current_generation(tmp_path) == "gen1"
        assert tls_serial(svc.renapo_port, gen1)
        with pytest.raises(ssl.SSLCertVerificationError):
            tls_serial(svc.renapo_port, pub["anchor"])
        bundle = tmp_path / "bundle.pem"
        bundle.write_bytes(gen1.read_bytes() + pub["anchor"].read_bytes())

        assert pki.switch(tmp_path) == "gen2" and pki.current_generation(tmp_path) == "gen2"
        # The very next handshake presents gen2: gen1-only fails, gen2 and the merged bundle succeed.
        with pytest.raises(ssl.SSLCertVerificationError):
            tls_serial(svc.renapo_port, gen1)
        assert tls_serial(svc.renapo_port, pub["anchor"]) == leaf_serial(pub["leaf"])
        assert tls_serial(svc.renapo_port, bundle) == leaf_serial(pub["leaf"])
        assert pki.switch(tmp_path) == "gen2"
        assert pki.publish(tmp_path)["generation"] == "gen3"
    finally:
        svc.stop()


def test_pki_is_idempotent_and_keys_are_private(tmp_path):
    first = pki.ensure(tmp_path)
    digests = {k: v.read_bytes() for k, v in first.items() if isinstance(v, Path) and v.is_file()}
    second = pki.ensure(tmp_path)
    assert {k: v.read_bytes() for k, v in second.items() if k in digests} == digests
    cert, key = pki.issue_sat_client(tmp_path, "consulta-01")
    assert pki.issue_sat_client(tmp_path, "consulta-01") == (cert, key)
    keys = [p for p in (tmp_path / "pki").rglob("*.key")]
    assert len(keys) == 5 and all(p.stat().st_mode & 0o777 == 0o600 for p in keys)
    leaf = x509.load_pem_x509_certificates(first["renapo_server_cert"].read_bytes())[0]
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["renapo.lab"]
    assert [str(i) for i in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]
    client = x509.load_pem_x509_certificates(cert.read_bytes())
    assert client[1].subject == x509.load_pem_x509_certificate(first["sat_ca"].read_bytes()).subject
    assert list(client[0].extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]


def test_concurrent_ensure_gives_one_consistent_pki(tmp_path):
    """labctl and the simulators' process may both create the PKI of a fresh state at the same moment."""
    procs = [subprocess.Popen([sys.executable, str(ROOT / "lab" / "pki.py"), "--state", str(tmp_path), "ensure"],
                              stdout=subprocess.DEVNULL) for _ in range(3)]
    assert [p.wait(60) for p in procs] == [0, 0, 0]
    paths = pki.ensure(tmp_path)
    for chain, ca in ((paths["renapo_server_cert"], paths["renapo_anchor"]),
                      (paths["sat_server_cert"], paths["sat_ca"])):
        leaf = x509.load_pem_x509_certificates(chain.read_bytes())[0]
        leaf.verify_directly_issued_by(x509.load_pem_x509_certificate(ca.read_bytes()))


# ---------------------------------------------------------------- SAT: mutual TLS

def test_sat_requires_a_client_certificate_from_the_sat_ca(lab):
    paths = pki.ensure(lab.state)
    rfc = padron.check_rfc(lab.state)
    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        https(lab.sat_port, f"/sat/opinion/{rfc}", paths["sat_ca"])
    # A certificate from another CA (RENAPO's) is refused as well.
    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        https(lab.sat_port, f"/sat/opinion/{rfc}", paths["sat_ca"], cert=paths["renapo_server_cert"],
              key=paths["renapo_server_key"])


def test_sat_answers_with_the_client_serial(lab):
    paths = pki.ensure(lab.state)
    cert, key = pki.issue_sat_client(lab.state, "tester")
    rfc = padron.check_rfc(lab.state)
    status, body = https(lab.sat_port, f"/sat/opinion/{rfc.lower()}", paths["sat_ca"], cert=cert, key=key)
    data = json.loads(body)
    assert status == 200 and data["rfc"] == rfc and data["opinion"] == "POSITIVA"
    assert data["client_serial"] == leaf_serial(cert) and data["folio"] and data["fecha"]
    unknown = "HEGG560427L8" + stdrfc.calc_check_digit("HEGG560427L8")  # well formed, unknown to SAT
    assert json.loads(https(lab.sat_port, f"/sat/opinion/{unknown}", paths["sat_ca"], cert=cert, key=key)[1])[
        "opinion"] == "NO INSCRITO"
    status, body = https(lab.sat_port, "/sat/opinion/NOT-AN-RFC", paths["sat_ca"], cert=cert, key=key)
    assert status == 400 and "RFC mal formado" in json.loads(body)["error"]


# ---------------------------------------------------------------- SMTP sink

def test_smtp_sink_stores_each_message_in_the_maildir(lab):
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "mesa@lab", "solicitante@lab", "Folio DGTIC-RENAPO-2026-000001 emitido"
    msg.set_content("Su solicitud recibió el folio DGTIC-RENAPO-2026-000001.")
    with smtplib.SMTP("127.0.0.1", lab.smtp_port, timeout=5) as s:
        s.send_message(msg, to_addrs=["solicitante@lab", "enlace@lab"])
    box = mailbox.Maildir(lab.state / "mail" / "sink", create=False)
    got = [m for m in box if m["Subject"] == msg["Subject"]]
    assert len(got) == 1
    assert got[0]["X-Lab-Rcpt-To"] == "solicitante@lab, enlace@lab"
    assert "folio DGTIC-RENAPO-2026-000001" in got[0].get_payload(decode=True).decode()
    assert list((lab.state / "mail" / "sink" / "new").iterdir())
    assert (lab.state / "mail" / "mesa" / "new").is_dir()


# ---------------------------------------------------------------- services.py as the lab runs it

def test_services_cli_starts_logs_and_stops_on_sigterm(tmp_path):
    p = subprocess.Popen([sys.executable, str(ROOT / "lab" / "sim" / "services.py"), "--state", str(tmp_path),
                          "--renapo", "127.0.0.1:0", "--sat", "127.0.0.1:0", "--smtp", "127.0.0.1:0"],
                         stdout=subprocess.PIPE, text=True)
    try:
        first = p.stdout.readline()
        assert first.startswith("services up: renapo 127.0.0.1:")
        port = int(first.split()[3].rsplit(":", 1)[1])
        assert tls_serial(port, pki.ensure(tmp_path)["renapo_anchor"])
        p.send_signal(signal.SIGTERM)
        out, _ = p.communicate(timeout=10)
    finally:
        p.kill()
    assert p.returncode == 0 and "services stopped" in out


# ---------------------------------------------------------------- consulta_check through `ansible localhost -m`

def _ansible(args: dict, check: bool = False) -> subprocess.Popen:
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_NOCOLOR="1")
    cmd = [str(ROOT / ".venv" / "bin" / "ansible"), "localhost", "-m", "consulta_check", "-a", json.dumps(args)]
    return subprocess.Popen(cmd + (["--check"] if check else []), cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _registry():
    """The lab's registry plus a third provider (ine: curp_soap under the gateway's /ine), without the endpoints
    (inventory Jinja the ad-hoc `ansible` run would template): what a playbook passes as `providers`."""
    ine = {name: dict(spec, consultation={"strategy": "curp_soap", "base_path": "/ine"})
           for name, spec in THIRD_PROVIDER.items()}
    return {name: {k: v for k, v in spec.items() if k not in ("endpoint", "server_name")}
            for name, spec in lab_providers(**ine).items()}


@pytest.fixture(scope="module")
def module_runs(lab, examples):
    """Every consulta_check case at once (each `ansible` run costs about a second)."""
    paths = pki.ensure(lab.state)
    cert, key = pki.issue_sat_client(lab.state, "consulta-test")
    renapo_url, sat_url = f"https://127.0.0.1:{lab.renapo_port}", f"https://127.0.0.1:{lab.sat_port}"
    registry = _registry()
    base = {"provider": "renapo", "providers": registry, "endpoint": renapo_url, "ca_path": str(paths["renapo_anchor"]),
            **CREDS}
    sat = {"service": "sat", "providers": registry, "endpoint": sat_url, "ca_path": str(paths["sat_ca"]),
           "rfc": padron.check_rfc(lab.state)}
    cases = {
        "found": ({**base, "curp": examples["check"]}, False),
        "found_check_mode": ({**base, "curp": examples["BD"]}, True),
        "not_found_expected": ({**base, "curp": examples["NOT_FOUND"], "expect": "NO EXITOSO"}, False),
        "not_found": ({**base, "curp": examples["NOT_FOUND"]}, False),
        "wrong_password": ({**base, "curp": examples["check"], "password": "Wr0ng-Secret-Value"}, False),
        "malformed": ({**base, "curp": examples["MALFORMED"]}, False),
        "tls_verify": ({**base, "curp": examples["check"], "ca_path": str(paths["sat_ca"])}, False),
        "down": ({**base, "endpoint": f"https://127.0.0.1:{_closed_port()}", "curp": examples["check"]}, False),
        "sat": ({**sat, "client_cert": str(cert), "client_key": str(key), "expect": "POSITIVA"}, False),
        "sat_no_client_cert": (sat, False),
        # a provider defined in inventory only: consulted by its strategy, under its base_path, named as it is
        "third_provider": ({**base, "provider": "ine", "endpoint": f"http://127.0.0.1:{_closed_port()}",
                            "curp": examples["check"]}, False),
        "subject_follows_strategy": ({**sat, "rfc": None}, False),
        "unknown_provider": ({**base, "provider": "imss", "curp": examples["check"]}, False),
    }
    with ThreadPoolExecutor(len(cases)) as pool:
        procs = {name: _ansible(args, check) for name, (args, check) in cases.items()}
        outs = dict(zip(procs, pool.map(lambda p: p.communicate(timeout=120), procs.values()), strict=True))
    results = {}
    for name, (out, err) in outs.items():
        data = json.loads(out[out.index("=>") + 2:]) if "=>" in out else {}
        results[name] = {"rc": procs[name].returncode, "result": data, "output": out + err}
    results["_serials"] = {"renapo": leaf_serial(paths["renapo_server_cert"]), "client": leaf_serial(cert)}
    return results


def test_module_success(module_runs, examples):
    r = module_runs["found"]
    assert r["rc"] == 0, r["output"]
    res = r["result"]
    assert res["changed"] is False and res["status_oper"] == "EXITOSO" and res["status_curp"] == "AN"
    assert res["record"]["CURP"] == examples["check"] and res["http_status"] == 200
    assert res["peer_serial"] == module_runs["_serials"]["renapo"]
    assert 0 < res["latency_ms"] < 1000
    assert res["endpoint"].endswith(renapo.SERVICE_PATH)


def test_module_runs_in_check_mode(module_runs):
    r = module_runs["found_check_mode"]
    assert r["rc"] == 0, r["output"]
    assert r["result"]["status_curp"] == "BD"


def test_module_expects_not_found(module_runs):
    r = module_runs["not_found_expected"]
    assert r["rc"] == 0, r["output"]
    assert (r["result"]["tipo_error"], r["result"]["codigo_error"]) == ("01", "06")


@pytest.mark.parametrize("case, failure, words", [
    ("not_found", "no_exitoso", "CURP not found (TipoError=01 CodigoError=06"),
    ("wrong_password", "no_exitoso", "wrong usuario/password (TipoError=02 CodigoError=01"),
    ("malformed", "invalid_input", "malformed CURP rejected before sending"),
    ("tls_verify", "tls_verify", "TLS verification failed"),
    ("down", "refused", "connection refused"),
    ("sat_no_client_cert", "tls", "requires a client certificate"),
])
def test_module_failures_are_named(module_runs, case, failure, words):
    r = module_runs[case]
    assert r["rc"] != 0, r["output"]
    assert r["result"]["failure"] == failure
    assert words in r["result"]["msg"]


def test_module_never_echoes_the_password(module_runs):
    for r in module_runs.values():
        if isinstance(r, dict) and "output" in r:
            assert renapo.LAB_PASSWORD not in r["output"] and "Wr0ng-Secret-Value" not in r["output"]


def test_module_sat_with_client_identity(module_runs):
    r = module_runs["sat"]
    assert r["rc"] == 0, r["output"]
    assert r["result"]["opinion"] == "POSITIVA"
    assert (r["result"]["provider"], r["result"]["strategy"]) == ("sat", "rfc_opinion")  # `service` is an alias
    assert int(r["result"]["client_serial"], 16) == int(module_runs["_serials"]["client"], 16)
    assert r["result"]["peer_serial"]


def test_module_consults_a_third_provider_by_its_strategy_and_base_path(module_runs):
    r = module_runs["third_provider"]
    assert r["rc"] != 0 and r["result"]["failure"] == "refused", r["output"]
    assert (r["result"]["provider"], r["result"]["strategy"]) == ("ine", "curp_soap")
    assert r["result"]["endpoint"].endswith("/ine/WebServicesConsulta/services/ConsultaPorCurpService")


@pytest.mark.parametrize("case, words", [
    ("subject_follows_strategy", "SAT is consulted by RFC (strategy rfc_opinion): give rfc"),
    ("unknown_provider", "unknown provider 'imss'; the provider registry (procedure_providers) has renapo, sat, ine"),
])
def test_module_refuses_what_the_registry_does_not_allow(module_runs, case, words):
    r = module_runs[case]
    assert r["rc"] != 0 and words in r["result"]["msg"], r["output"]
