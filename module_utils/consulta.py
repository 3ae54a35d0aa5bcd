"""One consultation through an endpoint, in the strategy the provider's web service speaks.

Strategies, not services: a provider of the registry (module_utils/providers.py) names its `consultation.strategy`
and may give a `base_path` (a path prefix on the gateway, e.g. "/ine"); this module knows only the strategies:

- ``curp_soap``: the SOAP 1.1 ConsultaPorCurpService, by CURP (usuario/password in the envelope);
- ``rfc_opinion``: the opinión de cumplimiento, by RFC (JSON over mutual TLS).

Pure stdlib (it runs on any host Ansible reaches). The endpoint is a host's gateway (plain HTTP to nginx, which
calls the provider over verified TLS) or the provider directly (HTTPS, verified against ca_path). Every failure is a
ConsultaError whose `kind` names the cause and whose message says it in words; the password never appears.
"""
from __future__ import annotations

import codecs
import datetime
import functools
import http.client
import json
import os
import re
import ssl
import time
import xml.etree.ElementTree as ET
from urllib.parse import quote, urlsplit
from xml.sax.saxutils import escape

from ansible.module_utils.pki_format import serial_text

CURP_SOAP, RFC_OPINION = "curp_soap", "rfc_opinion"
CURP_SOAP_PATH = "/WebServicesConsulta/services/ConsultaPorCurpService"
RFC_OPINION_PATH = "/sat/opinion/"  # the opinión service's own path (its wire format), under the provider's base_path
# What each strategy consults by: the subject a caller must give (a role asks for curp or rfc accordingly).
SUBJECTS = {CURP_SOAP: "curp", RFC_OPINION: "rfc"}
# How messages name the far end when the caller does not pass the provider's display name.
_DEFAULT_NAMES = {CURP_SOAP: "the CURP service", RFC_OPINION: "the opinion service"}
NS = "http://services.wserv.ecurp.dgti.segob.gob.mx"
NS_XSD = NS + "/xsd"
SOAP_ENV = "http://schemas.xmlsoap.org/soap/envelope/"
SOAP_ACTION = "urn:consultarPorCurp"
CURP_FIELDS = ("CURP", "apellido1", "apellido2", "nombres", "sexo", "fechNac", "nacionalidad", "docProbatorio",
               "anioReg", "foja", "tomo", "libro", "numActa", "CRIP", "numEntidadReg", "cveMunicipioReg",
               "NumRegExtranjeros", "FolioCarta", "cveEntidadNac", "cveEntidadEmisora", "statusCurp")
STATUS_ACTIVE = ("AN", "AH", "RCC", "RCN", "CRA")
STATUS_INACTIVE = ("BAP", "BSU", "BD", "BDM", "BDP", "BJD", "BDA", "BCC", "BCN")
OPINIONS = ("POSITIVA", "NEGATIVA", "INSCRITO SIN OBLIGACIONES", "NO INSCRITO")
# (TipoError, CodigoError) → what a NO EXITOSO answer means: 01/06 not found and 01/09 invalid CURP are RENAPO's
# (DESIGN.md §6); 01/03 is what older lab simulators said for an invalid CURP; 02/01 the lab's wrong credentials.
NO_EXITOSO = {("01", "06"): "CURP not found", ("01", "09"): "invalid CURP", ("01", "03"): "malformed CURP",
              ("02", "01"): "wrong usuario/password"}
# Answers that say the CURP itself is invalid: definitive, never worth another attempt.
INVALID_CURP = (("01", "09"), ("01", "03"))
# CURP state codes (entidad de nacimiento) and their names; NE = nacido en el extranjero.
ENTIDADES = {
    "AS": "Aguascalientes", "BC": "Baja California", "BS": "Baja California Sur", "CC": "Campeche",
    "CL": "Coahuila", "CM": "Colima", "CS": "Chiapas", "CH": "Chihuahua", "DF": "Ciudad de México",
    "DG": "Durango", "GT": "Guanajuato", "GR": "Guerrero", "HG": "Hidalgo", "JC": "Jalisco", "MC": "Estado de México",
    "MN": "Michoacán", "MS": "Morelos", "NT": "Nayarit", "NL": "Nuevo León", "OC": "Oaxaca", "PL": "Puebla",
    "QT": "Querétaro", "QR": "Quintana Roo", "SP": "San Luis Potosí", "SL": "Sinaloa", "SR": "Sonora",
    "TC": "Tabasco", "TS": "Tamaulipas", "TL": "Tlaxcala", "VZ": "Veracruz", "YN": "Yucatán", "ZS": "Zacatecas",
    "NE": "Nacido en el extranjero",
}

_STATES = "|".join(sorted(ENTIDADES))
_CURP_RE = re.compile(rf"^[A-Z]{{4}}\d{{6}}[HM]({_STATES})[A-Z]{{3}}[0-9A-Z]\d$")
_CURP_ALPHABET = "0123456789ABCDEFGHIJKLMN&OPQRSTUVWXYZ"
_RFC_RE = re.compile(r"^[A-Z&Ñ]{3,4}\d{6}[0-9A-Z]{3}$")


class ConsultaError(Exception):
    """A failed consultation: kind is one of invalid_input, tls_verify, tls, refused, unreachable, timeout,
    http_status, gateway, soap_fault, bad_response, no_exitoso, unexpected; result holds what was learnt."""

    def __init__(self, kind: str, text: str, result: dict | None = None) -> None:
        super().__init__(text)
        self.kind, self.result = kind, dict(result or {})


def curp_check_digit(curp17: str) -> str:
    """RENAPO's check digit over the first 17 characters (the algorithm python-stdnum implements)."""
    total = sum(_CURP_ALPHABET.index(c) * (18 - i) for i, c in enumerate(curp17))
    return str((10 - total % 10) % 10)


def curp_problem(curp: str) -> str | None:
    """Why a CURP is malformed (structure or check digit), or None when it is well formed."""
    if not _CURP_RE.match(curp or ""):
        return (f"CURP {curp!r} does not have the CURP structure (18 characters: 4 letters, birth date, H/M, "
                "state code, 3 consonants, differentiator, check digit)")
    try:
        datetime.date(int(curp[4:6]) + (2000 if curp[16].isalpha() else 1900), int(curp[6:8]), int(curp[8:10]))
    except ValueError:
        return f"CURP {curp!r} holds an impossible birth date {curp[4:10]}"
    if curp[17] != curp_check_digit(curp[:17]):
        return f"CURP {curp!r} has a wrong check digit (expected {curp_check_digit(curp[:17])})"
    return None


def rfc_problem(rfc: str) -> str | None:
    return None if _RFC_RE.match(rfc or "") else f"RFC {rfc!r} does not have the RFC structure"


def build_envelope(curp: str, usuario: str, password: str, entidad: str = "09", ip: str = "127.0.0.1",
                   tipo_transaccion: int = 1) -> bytes:
    """The SOAP 1.1 consultarPorCurp request, document/literal as the service's WSDL defines it."""
    datos = {"cveCurp": curp, "cveEntidadEmisora": entidad, "direccionIp": ip, "password": password,
             "tipoTransaccion": str(tipo_transaccion), "usuario": usuario}
    fields = "".join(f"<xsd:{k}>{escape(v)}</xsd:{k}>" for k, v in datos.items())
    return (f'<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv="{SOAP_ENV}" xmlns:ser="{NS}" '
            f'xmlns:xsd="{NS_XSD}"><soapenv:Body><ser:consultarPorCurp><ser:datos>{fields}</ser:datos>'
            "</ser:consultarPorCurp></soapenv:Body></soapenv:Envelope>").encode()


def _latin1_fallback(error: UnicodeDecodeError) -> tuple[str, int]:
    """A byte that is not UTF-8 is read as ISO-8859-1 (RENAPO's quirk), the valid UTF-8 around it as UTF-8."""
    return error.object[error.start:error.end].decode("iso-8859-1"), error.end


codecs.register_error("consulta.latin1", _latin1_fallback)
_DECLARATION = re.compile(rb"^\s*<\?xml[^>]*?\?>")
_DECLARED = re.compile(rb"""encoding\s*=\s*["']([A-Za-z0-9._-]+)["']""")


def decode_answer(body: bytes) -> tuple[str, str]:
    """(text without its XML declaration, how it was decoded). RENAPO declares UTF-8 and sends accents and Ñ as
    ISO-8859-1 bytes: the declared encoding is tried first and, where a byte is not valid in it, that byte is read
    as ISO-8859-1, so JOSÉ and MUÑOZ arrive intact whichever of the two the service really used."""
    if body.startswith(b"\xef\xbb\xbf"):
        body = body[3:]
    head = _DECLARATION.match(body)
    declared = _DECLARED.search(head.group(0)) if head else None
    name = declared.group(1).decode("ascii").lower() if declared else "utf-8"
    rest = body[head.end():] if head else body
    try:
        codecs.lookup(name)
    except LookupError:
        name = "utf-8"
    try:
        return rest.decode(name), name
    except UnicodeDecodeError:
        return rest.decode(name if name in ("utf-8", "utf8") else "utf-8", "consulta.latin1"), \
            f"iso-8859-1 (declarado {name})"


def _xml(data: bytes | str, what: str) -> ET.Element:
    try:
        return ET.fromstring(data)  # noqa: S314 - stdlib only by design; expat expands no external entities
    except ET.ParseError as e:
        raise ConsultaError("bad_response", f"{what} is not XML ({e})") from None


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def parse_curpstruct(text: str) -> dict:
    """status_oper, message, tipo_error, codigo_error, session_id, status_curp and record from a CURPStruct."""
    text = re.sub(r"^\s*<\?xml[^>]*\?>", "", text or "")  # the declaration may name an encoding a str cannot have
    root = _xml(text, "the CURPStruct answer")
    if _local(root.tag) != "CURPStruct":
        raise ConsultaError("bad_response", f"the answer holds <{_local(root.tag)}>, not <CURPStruct>")
    record = {_local(c.tag): (c.text or "").strip() for c in root}
    a = root.attrib
    return {"status_oper": a.get("statusOper", ""), "message": a.get("message", ""),
            "tipo_error": a.get("TipoError", ""), "codigo_error": a.get("CodigoError", ""),
            "session_id": a.get("SessionID", ""), "status_curp": record.get("statusCurp", ""), "record": record}


def parse_soap_response(body: bytes) -> dict:
    """The CURPStruct carried in a consultarPorCurpResponse; a SOAP Fault raises ConsultaError(soap_fault).
    The bytes are decoded here (decode_answer), never by the XML parser, which would trust the declaration."""
    text, _how = decode_answer(body) if isinstance(body, bytes) else (body, "str")
    root = _xml(re.sub(r"^\s*<\?xml[^>]*\?>", "", text), "the SOAP answer")
    soap_body = root.find(f"{{{SOAP_ENV}}}Body")
    if soap_body is None or len(soap_body) == 0:
        raise ConsultaError("bad_response", "the answer is not a SOAP 1.1 envelope with a Body")
    first = soap_body[0]
    if _local(first.tag) == "Fault":
        code = (first.findtext("faultcode") or "").strip()
        text = (first.findtext("faultstring") or "").strip()
        raise ConsultaError("soap_fault", f"SOAP fault: {code}: {text}",
                            {"fault_code": code, "message": text})
    ret = next((c for c in first if _local(c.tag) == "return"), None)
    if _local(first.tag) != "consultarPorCurpResponse" or ret is None:
        raise ConsultaError("bad_response",
                            f"unexpected SOAP answer <{_local(first.tag)}> (no consultarPorCurpResponse/return)")
    return parse_curpstruct(ret.text or "")


def parse_opinion(status: int, body: bytes, name: str = _DEFAULT_NAMES[RFC_OPINION]) -> dict:
    """The opinión de cumplimiento of an rfc_opinion answer; `name` is how messages call the provider."""
    try:
        data = json.loads(body)
    except ValueError:
        raise ConsultaError("bad_response", f"{name} answered HTTP {status} with a body that is not JSON") from None
    if status != 200:
        error = data.get("error", data) if isinstance(data, dict) else data
        raise ConsultaError("http_status", f"{name} answered HTTP {status}: {error}", {"http_status": status})
    if not isinstance(data, dict) or data.get("opinion") not in OPINIONS:
        opinion = data.get("opinion") if isinstance(data, dict) else data
        raise ConsultaError("bad_response", f"{name} answered an unknown opinion {opinion!r}")
    return {"opinion": data["opinion"], "sat_folio": data.get("folio", ""), "sat_fecha": data.get("fecha", ""),
            "client_serial": data.get("client_serial")}


def _ssl_context(ca_path: str | None, client_cert: str | None, client_key: str | None) -> ssl.SSLContext:
    """One context per set of files (and their mtimes): loading the CA file per call dominated a batch's CPU."""
    files = (ca_path, client_cert, client_key)
    stamp = tuple(os.stat(p).st_mtime_ns if p and os.path.exists(p) else None for p in files)
    return _cached_context(ca_path, client_cert, client_key, stamp)


@functools.lru_cache(maxsize=16)
def _cached_context(ca_path, client_cert, client_key, _stamp) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=ca_path)
    if client_cert:
        ctx.load_cert_chain(client_cert, client_key)
    return ctx


def http_call(url: str, method: str = "GET", body: bytes | None = None, headers: dict | None = None,
              timeout: float = 10, ca_path: str | None = None, client_cert: str | None = None,
              client_key: str | None = None) -> dict:
    """One HTTP(S) exchange on a fresh connection: status, body, latency_ms, peer_serial (HTTPS only)."""
    u = urlsplit(url)
    where = f"{u.hostname}:{u.port or (443 if u.scheme == 'https' else 80)}"
    if u.scheme == "https":
        try:
            ctx = _ssl_context(ca_path, client_cert, client_key)
        except (OSError, ssl.SSLError) as e:
            raise ConsultaError("invalid_input",
                                f"cannot load the TLS files (ca_path, client_cert, client_key): {e}") from None
        conn = http.client.HTTPSConnection(u.hostname, u.port or 443, timeout=timeout, context=ctx)
    elif u.scheme == "http":
        conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=timeout)
    else:
        raise ConsultaError("invalid_input", f"endpoint {url!r} must start with http:// or https://")
    path = u.path + (f"?{u.query}" if u.query else "")
    start = time.perf_counter()
    try:
        conn.request(method, path, body=body, headers=headers or {})
        peer = conn.sock.getpeercert() if isinstance(conn.sock, ssl.SSLSocket) else None
        resp = conn.getresponse()
        data = resp.read()
    except ssl.SSLCertVerificationError as e:
        raise ConsultaError("tls_verify", f"TLS verification failed: the certificate presented by {where} is not "
                            f"trusted by {ca_path or 'the system trust store'} ({e.verify_message})") from None
    except ConnectionRefusedError:
        raise ConsultaError("refused", f"connection refused by {where}: the endpoint is down") from None
    except TimeoutError:
        raise ConsultaError("timeout", f"timeout: {where} did not answer within {timeout} s") from None
    except (ssl.SSLError, ConnectionResetError) as e:
        # With TLS 1.3 a server refusing the client certificate alerts after our handshake: we see an alert or EOF.
        hint = ""
        if re.search(r"CERTIFICATE_REQUIRED|UNKNOWN_CA|BAD_CERTIFICATE|EOF|reset", str(e), re.I):
            hint = ("; the server did not accept the client certificate (mutual TLS)" if client_cert else
                    "; the server requires a client certificate (mutual TLS) and none was presented")
        raise ConsultaError("tls", f"TLS handshake with {where} failed: {e}{hint}") from None
    except (OSError, http.client.HTTPException) as e:
        raise ConsultaError("unreachable", f"cannot reach {where}: {e}") from None
    finally:
        conn.close()
    latency = round((time.perf_counter() - start) * 1000, 2)
    serial = serial_text(int(peer["serialNumber"], 16)) if peer and "serialNumber" in peer else None
    return {"http_status": resp.status, "body": data, "latency_ms": latency, "peer_serial": serial}


def _exchange(url: str, what: str, parse, **kw) -> tuple[dict, dict]:
    """http_call + parse, with the endpoint and HTTP facts attached to any ConsultaError."""
    facts = {"endpoint": url}
    try:
        r = http_call(url, **kw)
        facts.update(http_status=r["http_status"], latency_ms=r["latency_ms"], peer_serial=r["peer_serial"])
        if r["http_status"] in (502, 504):
            raise ConsultaError("gateway", f"HTTP {r['http_status']} from the gateway at {url}: it could not verify "
                                f"or reach {what} (check the host's trust bundle / client identity, and that "
                                f"{what} is up)")
        return facts, parse(r["http_status"], r["body"])
    except ConsultaError as e:
        e.result = {**facts, **e.result}
        raise


def _parse_soap(name: str):
    def parse(status: int, body: bytes) -> dict:
        if status != 200 and b"Fault" not in body:
            raise ConsultaError("http_status", f"{name} answered HTTP {status}")
        return parse_soap_response(body)
    return parse


def base_path_of(value: str | None) -> str:
    """A provider's gateway prefix as a URL path: "" or "/ine" (leading slash, no trailing one)."""
    text = str(value or "").strip().strip("/")
    if any(c in text for c in "?#\\ ") or ".." in text.split("/"):
        raise ConsultaError("invalid_input", f"base_path {value!r} is not a plain URL path prefix such as /ine")
    return "/" + quote(text) if text else ""


def consult(strategy: str, endpoint: str, curp: str | None = None, rfc: str | None = None,
            usuario: str = "", password: str = "", ca_path: str | None = None, client_cert: str | None = None,
            client_key: str | None = None, timeout: float = 10, expect: str | None = None,
            base_path: str | None = "", name: str | None = None) -> dict:
    """One consultation in `strategy` (curp_soap by CURP, rfc_opinion by RFC) at endpoint + base_path; `name` is
    the provider's display name for messages. Returns the module's result keys or raises ConsultaError."""
    if strategy not in SUBJECTS:
        raise ConsultaError("invalid_input", f"strategy must be one of {', '.join(SUBJECTS)} (the provider's "
                            f"consultation.strategy in the registry), not {strategy!r}")
    name = name or _DEFAULT_NAMES[strategy]
    base = endpoint.rstrip("/") + base_path_of(base_path)
    tls = {"timeout": timeout, "ca_path": ca_path, "client_cert": client_cert, "client_key": client_key}
    if strategy == CURP_SOAP:
        curp = (curp or "").strip().upper()
        expect = expect or "EXITOSO"
        if expect not in ("EXITOSO", "NO EXITOSO"):
            raise ConsultaError("invalid_input", f"expect must be EXITOSO or NO EXITOSO for {strategy}, not {expect!r}")
        problem = curp_problem(curp)
        if problem:
            raise ConsultaError("invalid_input", f"malformed CURP rejected before sending: {problem}")
        headers = {"Content-Type": "text/xml; charset=UTF-8", "SOAPAction": f'"{SOAP_ACTION}"'}
        facts, answer = _exchange(base + CURP_SOAP_PATH, name, _parse_soap(name), method="POST",
                                  body=build_envelope(curp, usuario, password), headers=headers, **tls)
        result = {**facts, **answer, "opinion": None}
        got = answer["status_oper"]
        if got != expect:
            code = (answer["tipo_error"], answer["codigo_error"])
            detail = (f"{name} answered NO EXITOSO: {NO_EXITOSO.get(code, 'consultation refused')} "
                      f"(TipoError={code[0]} CodigoError={code[1]}: {answer['message']})"
                      if got == "NO EXITOSO" else f"{name} answered {got!r}")
            raise ConsultaError("no_exitoso" if got == "NO EXITOSO" else "unexpected",
                                f"{detail} for CURP {curp}; expected {expect}", result)
        return result
    rfc = (rfc or "").strip().upper()
    expect = expect or "any"
    if expect not in (*OPINIONS, "any"):
        raise ConsultaError("invalid_input", f"expect must be one of {', '.join(OPINIONS)} or any for {strategy}")
    problem = rfc_problem(rfc)
    if problem:
        raise ConsultaError("invalid_input", f"malformed RFC rejected before sending: {problem}")
    facts, answer = _exchange(base + RFC_OPINION_PATH + quote(rfc), name,
                              lambda status, body: parse_opinion(status, body, name), **tls)
    result = {**facts, "status_oper": None, "status_curp": None, "message": None, "tipo_error": None,
              "codigo_error": None, "record": {}, **answer}
    if expect != "any" and answer["opinion"] != expect:
        raise ConsultaError("unexpected", f"{name} opinion for {rfc} is {answer['opinion']}, expected {expect}",
                            result)
    return result
