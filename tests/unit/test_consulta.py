"""Pure consultation code: CURP checks (python-stdnum as oracle), the SOAP envelope against the simulator's own
parser, answer parsing and error mapping; failures of the wire against real local sockets and servers."""
import json
import socket
import threading
import xml.etree.ElementTree as ET
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from ansible.module_utils.consulta import (
    CURP_FIELDS,
    NS,
    NS_XSD,
    SOAP_ENV,
    SUBJECTS,
    ConsultaError,
    base_path_of,
    build_envelope,
    consult,
    curp_check_digit,
    curp_problem,
    decode_answer,
    parse_curpstruct,
    parse_opinion,
    parse_soap_response,
    rfc_problem,
)
from sim import padron, renapo
from stdnum.mx import curp as stdcurp

RECORD = {f: "" for f in renapo.FIELDS} | {"CURP": "HEGG560427MVZRRL04", "nombres": "GLORIA", "apellido1": "HERNANDEZ",
                                           "apellido2": "GARCIA", "sexo": "M", "fechNac": "27/04/1956",
                                           "statusCurp": "BD"}


def test_check_digit_agrees_with_stdnum():
    curps = [r["curp"] for r in padron.generate(padron.load_mix())["padron"]]
    assert len(curps) > 900
    for c in curps:
        assert curp_check_digit(c[:17]) == stdcurp.calc_check_digit(c)
        assert (curp_problem(c) is None) == stdcurp.is_valid(c), c


@pytest.mark.parametrize("curp, words", [
    ("HEGG560427MVZRRL04", None),
    ("HEGG560427MVZRRL05", "wrong check digit (expected 4)"),
    ("HEGG560427MVZRRL0", "structure"),
    ("hegg560427mvzrrl04", "structure"),
    ("HEGG560427XVZRRL04", "structure"),      # sex must be H or M
    ("HEGG560427MXXRRL04", "structure"),      # no such state
    ("HEGG561327MVZRRL04", "impossible birth date"),
    ("", "structure"),
])
def test_curp_problem(curp, words):
    problem = curp_problem(curp)
    assert (problem is None) if words is None else (words in problem)


@pytest.mark.parametrize("rfc, ok", [("HEGG560427L85", True), ("ABC010203AB1", True), ("HEGG56", False),
                                     ("HEGG5604271234", False)])
def test_rfc_problem(rfc, ok):
    assert (rfc_problem(rfc) is None) == ok


def test_envelope_is_what_the_service_expects():
    body = build_envelope("HEGG560427MVZRRL04", "DGTIC_LAB", "p<&>'\"ss")
    root = ET.fromstring(body)  # noqa: S314 - our own bytes
    op = root.find(f"{{{SOAP_ENV}}}Body/{{{NS}}}consultarPorCurp/{{{NS}}}datos")
    assert [c.tag for c in op] == [f"{{{NS_XSD}}}{k}" for k in renapo.DATOS]
    # The simulator's independent parser reads back exactly what was sent, special characters included.
    assert renapo.parse_request(body) == {"cveCurp": "HEGG560427MVZRRL04", "cveEntidadEmisora": "09",
                                          "direccionIp": "127.0.0.1", "password": "p<&>'\"ss",
                                          "tipoTransaccion": "1", "usuario": "DGTIC_LAB"}


@pytest.mark.parametrize("answer, record", [(renapo.FOUND, RECORD), (renapo.NOT_FOUND, None),
                                            (renapo.BAD_CREDENTIALS, None), (renapo.INVALID_CURP, None)])
def test_parse_soap_response_of_the_simulator(answer, record):
    got = parse_soap_response(renapo.envelope(renapo.curpstruct(answer, record)))
    assert (got["status_oper"], got["message"], got["tipo_error"], got["codigo_error"]) == answer
    assert len(got["session_id"]) == 32
    if record:
        assert list(got["record"]) == list(CURP_FIELDS) and got["record"]["CURP"] == "HEGG560427MVZRRL04"
        assert got["status_curp"] == "BD"
    else:
        assert got["record"] == {} and got["status_curp"] == ""


ACCENTED = {**RECORD, "nombres": "JOSÉ ÁNGEL", "apellido1": "MUÑOZ", "apellido2": "NÚÑEZ"}


@pytest.mark.parametrize("latin1", [True, False], ids=["renapo-quirk", "real-utf8"])
def test_accents_and_enye_survive_renapos_encoding_quirk(latin1):
    body = renapo.envelope(renapo.curpstruct(renapo.FOUND, ACCENTED), latin1=latin1)
    assert body.startswith(b"<?xml version='1.0' encoding='UTF-8'?>")
    if latin1:  # what RENAPO really sends: the declaration says UTF-8, the bytes are ISO-8859-1
        assert "MUÑOZ".encode("iso-8859-1") in body and "MUÑOZ".encode() not in body
        with pytest.raises(UnicodeDecodeError):
            body.decode("utf-8")
    got = parse_soap_response(body)
    assert (got["record"]["nombres"], got["record"]["apellido1"], got["record"]["apellido2"]) == (
        "JOSÉ ÁNGEL", "MUÑOZ", "NÚÑEZ")


def test_decode_answer_keeps_valid_utf8_and_reads_stray_bytes_as_latin1():
    mixed = "<?xml version='1.0' encoding='UTF-8'?><a>PEÑA ".encode() + "YÁÑEZ</a>".encode("iso-8859-1")
    assert decode_answer(mixed) == ("<a>PEÑA YÁÑEZ</a>", "iso-8859-1 (declarado utf-8)")
    assert decode_answer('<?xml version="1.0" encoding="ISO-8859-1"?><a>ÑU</a>'.encode("iso-8859-1")) == (
        "<a>ÑU</a>", "iso-8859-1")
    assert decode_answer("\ufeff<a>é</a>".encode()) == ("<a>é</a>", "utf-8")


def test_parse_curpstruct_with_a_declaration():
    text = ('<?xml version="1.0" encoding="ISO-8859-1"?><CURPStruct statusOper="EXITOSO" message="OK" TipoError="" '
            'CodigoError="" SessionID="x"><CURP>HEGG560427MVZRRL04</CURP><nombres>MARÍA</nombres>'
            "<statusCurp>AN</statusCurp></CURPStruct>")
    got = parse_curpstruct(text)
    assert got["record"]["nombres"] == "MARÍA" and got["status_curp"] == "AN"


@pytest.mark.parametrize("body, kind, words", [
    (renapo.fault("Malformed SOAP request: nope"), "soap_fault", "SOAP fault: soapenv:Client: Malformed"),
    (b"<html>502 Bad Gateway</html>", "bad_response", "not a SOAP 1.1 envelope"),
    (b"not xml at all", "bad_response", "not XML"),
    (f'<e:Envelope xmlns:e="{SOAP_ENV}"><e:Body><x/></e:Body></e:Envelope>'.encode(), "bad_response", "<x>"),
    (renapo.envelope("<Other/>"), "bad_response", "not <CURPStruct>"),
])
def test_parse_soap_response_errors(body, kind, words):
    with pytest.raises(ConsultaError) as e:
        parse_soap_response(body)
    assert e.value.kind == kind and words in str(e.value)


@pytest.mark.parametrize("status, body, kind, words", [
    (400, b'{"error": "RFC mal formado"}', "http_status", "HTTP 400: RFC mal formado"),
    (200, b'{"opinion": "TAL VEZ"}', "bad_response", "unknown opinion"),
    (200, b"<html>", "bad_response", "not JSON"),
])
def test_parse_opinion_errors(status, body, kind, words):
    with pytest.raises(ConsultaError) as e:
        parse_opinion(status, body, "SAT")
    assert e.value.kind == kind and words in str(e.value) and str(e.value).startswith("SAT answered")


def test_parse_opinion():
    got = parse_opinion(200, b'{"rfc": "X", "opinion": "NEGATIVA", "folio": "F1", "fecha": "d", "client_serial": "AB"}')
    assert got == {"opinion": "NEGATIVA", "sat_folio": "F1", "sat_fecha": "d", "client_serial": "AB"}


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.mark.parametrize("kwargs, kind, words", [
    ({"curp": "HEGG560427MVZRRL05"}, "invalid_input", "malformed CURP rejected before sending"),
    ({"curp": "HEGG560427MVZRRL04", "expect": "MAYBE"}, "invalid_input", "expect must be"),
    ({"strategy": "rfc_opinion", "rfc": "NOPE"}, "invalid_input", "malformed RFC rejected before sending"),
    ({"strategy": "rfc_opinion", "rfc": "HEGG560427L85", "expect": "MAYBE"}, "invalid_input", "expect must be"),
    ({"strategy": "soap", "curp": "HEGG560427MVZRRL04"}, "invalid_input",
     "strategy must be one of curp_soap, rfc_opinion (the provider's consultation.strategy in the registry), "
     "not 'soap'"),
    ({"curp": "HEGG560427MVZRRL04", "base_path": "/../x"}, "invalid_input", "not a plain URL path prefix"),
])
def test_bad_input_is_refused_before_any_connection(kwargs, kind, words):
    port = _closed_port()  # anything sent would fail as refused, not as invalid_input
    with pytest.raises(ConsultaError) as e:
        consult(kwargs.pop("strategy", "curp_soap"), f"http://127.0.0.1:{port}", **kwargs)
    assert e.value.kind == kind and words in str(e.value)


def test_endpoint_down_is_named():
    port = _closed_port()
    with pytest.raises(ConsultaError) as e:
        consult("curp_soap", f"http://127.0.0.1:{port}", curp="HEGG560427MVZRRL04", password="s3cr3t-pass")
    assert e.value.kind == "refused" and "endpoint is down" in str(e.value)
    assert e.value.result["endpoint"].endswith("/WebServicesConsulta/services/ConsultaPorCurpService")
    assert "s3cr3t-pass" not in str(e.value) + json.dumps(e.value.result)


def test_timeout_is_named():
    with socket.socket() as silent:  # accepts (backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        with pytest.raises(ConsultaError) as e:
            consult("curp_soap", f"http://127.0.0.1:{silent.getsockname()[1]}", curp="HEGG560427MVZRRL04", timeout=0.3)
    assert e.value.kind == "timeout" and "did not answer within 0.3 s" in str(e.value)


@pytest.fixture
def http_server():
    """A real local HTTP server answering each path with the status and body the test registers."""
    answers = {}

    class H(BaseHTTPRequestHandler):
        def _answer(self):
            status, body = answers[self.path]
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _answer

        def log_message(self, *a):
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}", answers
    srv.shutdown()
    srv.server_close()


def test_gateway_502_is_named(http_server):
    url, answers = http_server
    answers["/WebServicesConsulta/services/ConsultaPorCurpService"] = (502, b"<html>502 Bad Gateway</html>")
    with pytest.raises(ConsultaError) as e:
        consult("curp_soap", url, curp="HEGG560427MVZRRL04")
    assert e.value.kind == "gateway" and "could not verify or reach the CURP service" in str(e.value)
    assert e.value.result["http_status"] == 502


def test_soap_fault_over_http_500(http_server):
    url, answers = http_server
    answers["/WebServicesConsulta/services/ConsultaPorCurpService"] = (500, renapo.fault("Malformed SOAP request"))
    with pytest.raises(ConsultaError) as e:
        consult("curp_soap", url, curp="HEGG560427MVZRRL04")
    assert e.value.kind == "soap_fault" and e.value.result["http_status"] == 500


@pytest.mark.parametrize("answer, expect, kind", [
    (renapo.FOUND, None, None),
    (renapo.NOT_FOUND, None, "no_exitoso"),
    (renapo.NOT_FOUND, "NO EXITOSO", None),
    (renapo.FOUND, "NO EXITOSO", "unexpected"),
    (renapo.BAD_CREDENTIALS, None, "no_exitoso"),
    (renapo.INVALID_CURP, None, "no_exitoso"),
])
def test_expect_maps_answers(http_server, answer, expect, kind):
    url, answers = http_server
    answers["/WebServicesConsulta/services/ConsultaPorCurpService"] = (
        200, renapo.envelope(renapo.curpstruct(answer, RECORD if answer == renapo.FOUND else None)))
    if kind is None:
        got = consult("curp_soap", url + "/", curp="HEGG560427MVZRRL04", expect=expect)
        assert got["status_oper"] == answer[0] and got["http_status"] == 200 and got["peer_serial"] is None
        return
    with pytest.raises(ConsultaError) as e:
        consult("curp_soap", url, curp="HEGG560427MVZRRL04", expect=expect)
    assert e.value.kind == kind and e.value.result["status_oper"] == answer[0]
    if answer == renapo.BAD_CREDENTIALS:
        assert "wrong usuario/password (TipoError=02 CodigoError=01" in str(e.value)
    if answer == renapo.NOT_FOUND:
        assert "CURP not found (TipoError=01 CodigoError=06" in str(e.value)
    if answer == renapo.INVALID_CURP:
        assert "invalid CURP (TipoError=01 CodigoError=09" in str(e.value)


def test_sat_opinion_expectation(http_server):
    url, answers = http_server
    answers["/sat/opinion/HEGG560427L85"] = (200, b'{"opinion": "NEGATIVA", "client_serial": "0A"}')
    assert consult("rfc_opinion", url, rfc="hegg560427l85")["opinion"] == "NEGATIVA"
    with pytest.raises(ConsultaError) as e:
        consult("rfc_opinion", url, rfc="HEGG560427L85", expect="POSITIVA")
    assert e.value.kind == "unexpected" and "is NEGATIVA, expected POSITIVA" in str(e.value)


def test_subjects_follow_the_strategy():
    assert SUBJECTS == {"curp_soap": "curp", "rfc_opinion": "rfc"}


@pytest.mark.parametrize("given, path", [("", ""), (None, ""), ("/ine", "/ine"), ("ine/", "/ine"),
                                         ("/a/b/", "/a/b")])
def test_base_path_of(given, path):
    assert base_path_of(given) == path


def test_a_third_provider_consults_under_its_base_path_with_its_name(http_server):
    """A provider defined in inventory only (ine: curp_soap, base_path /ine) is consulted at <gateway>/ine/..."""
    url, answers = http_server
    answers["/ine/WebServicesConsulta/services/ConsultaPorCurpService"] = (
        200, renapo.envelope(renapo.curpstruct(renapo.FOUND, RECORD)))
    got = consult("curp_soap", url, curp="HEGG560427MVZRRL04", base_path="/ine", name="INE")
    assert got["status_oper"] == "EXITOSO" and got["endpoint"] == url + "/ine" + "/WebServicesConsulta/services/" \
        "ConsultaPorCurpService"
    answers["/ine/WebServicesConsulta/services/ConsultaPorCurpService"] = (502, b"<html>502</html>")
    with pytest.raises(ConsultaError) as e:
        consult("curp_soap", url, curp="HEGG560427MVZRRL04", base_path="ine", name="INE")
    assert e.value.kind == "gateway" and "could not verify or reach INE" in str(e.value)
    answers["/ine/sat/opinion/HEGG560427L85"] = (200, b'{"opinion": "POSITIVA"}')
    assert consult("rfc_opinion", url, rfc="HEGG560427L85", base_path="/ine")["opinion"] == "POSITIVA"
