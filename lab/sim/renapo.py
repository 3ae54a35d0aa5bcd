"""RENAPO simulator: ConsultaPorCurpService over HTTPS, faithful to the contract public clients use.

SOAP 1.1, namespace http://services.wserv.ecurp.dgti.segob.gob.mx, SOAPAction urn:consultarPorCurp, WSDL at ?wsdl.
The answer (`return`) is a string holding escaped XML: <CURPStruct statusOper message TipoError CodigoError SessionID>.

Answers (checked in this order):
  malformed SOAP / unknown operation   HTTP 500, SOAP Fault (faultcode soapenv:Client)
  wrong usuario/password               NO EXITOSO, TipoError=02 CodigoError=01, "USUARIO O PASSWORD INCORRECTOS."
  invalid CURP (format/check digit)    NO EXITOSO, TipoError=01 CodigoError=09, "LA CURP NO ES VALIDA..."
  CURP not in RENAPO's database        NO EXITOSO, TipoError=01 CodigoError=06, "LA CURP NO SE ENCUENTRA..."
  found                                EXITOSO, "LA OPERACION SE EJECUTO.", the record with its statusCurp
RENAPO's encoding quirk is reproduced: every answer declares UTF-8 (XML declaration and Content-Type) but its
accents and Ñ are sent as ISO-8859-1 bytes (JOSÉ -> 4A 4F 53 C9), so a client that trusts the declaration fails
on the first accented name. make_server(..., latin1=False) answers in real UTF-8.
The TLS certificate is the presented generation's (lab/pki.py); it is reloaded when `presented` changes.
"""
from __future__ import annotations

import json
import ssl
import threading
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

import pki
from stdnum.mx import curp as stdcurp

from sim import Handler, Stats, TLSServer

LAB_USUARIO = "DGTIC_LAB"
LAB_PASSWORD = "lab-renapo-pass"
SERVICE_PATH = "/WebServicesConsulta/services/ConsultaPorCurpService"
NS = "http://services.wserv.ecurp.dgti.segob.gob.mx"
SOAP_ENV = "http://schemas.xmlsoap.org/soap/envelope/"
SOAP_ACTION = "urn:consultarPorCurp"
WSDL = Path(__file__).with_name("ConsultaPorCurpService.wsdl")
DATOS = ("cveCurp", "cveEntidadEmisora", "direccionIp", "password", "tipoTransaccion", "usuario")
FIELDS = ("CURP", "apellido1", "apellido2", "nombres", "sexo", "fechNac", "nacionalidad", "docProbatorio", "anioReg",
          "foja", "tomo", "libro", "numActa", "CRIP", "numEntidadReg", "cveMunicipioReg", "NumRegExtranjeros",
          "FolioCarta", "cveEntidadNac", "cveEntidadEmisora", "statusCurp")
FOUND = ("EXITOSO", "LA OPERACION SE EJECUTO.", "", "")
BAD_CREDENTIALS = ("NO EXITOSO", "USUARIO O PASSWORD INCORRECTOS.", "02", "01")
INVALID_CURP = ("NO EXITOSO", "LA CURP NO ES VALIDA (ESTRUCTURA O DIGITO VERIFICADOR).", "01", "09")
NOT_FOUND = ("NO EXITOSO", "LA CURP NO SE ENCUENTRA EN LA BASE DE DATOS.", "01", "06")


class SoapFault(Exception):
    pass


def parse_request(body: bytes) -> dict:
    """The `datos` of a consultarPorCurp envelope, by local name; SoapFault when it is not one."""
    try:
        root = ET.fromstring(body)  # noqa: S314 - lab server; expat here expands no external entities
    except ET.ParseError as e:
        raise SoapFault(f"Malformed SOAP request: the body is not XML ({e}).") from None
    if root.tag != f"{{{SOAP_ENV}}}Envelope":
        raise SoapFault(f"Malformed SOAP request: the root element is {root.tag}, not a SOAP 1.1 Envelope.")
    soap_body = root.find(f"{{{SOAP_ENV}}}Body")
    if soap_body is None or len(soap_body) == 0:
        raise SoapFault("Malformed SOAP request: the Envelope has no Body or the Body is empty.")
    op = soap_body[0]
    if op.tag != f"{{{NS}}}consultarPorCurp":
        raise SoapFault(f"The endpoint reference (EPR) for the Operation not found is {SERVICE_PATH} and the WSA "
                        f"Action = null. Unknown operation {op.tag}.")
    datos = next((c for c in op if c.tag.rsplit("}", 1)[-1] == "datos"), None)
    if datos is None:
        raise SoapFault("Malformed SOAP request: consultarPorCurp has no datos element.")
    return {c.tag.rsplit("}", 1)[-1]: (c.text or "").strip() for c in datos if c.tag.rsplit("}", 1)[-1] in DATOS}


def consultar(db: dict, datos: dict) -> tuple[tuple, dict | None]:
    """((statusOper, message, TipoError, CodigoError), record or None) for one request's datos."""
    if datos.get("usuario") != LAB_USUARIO or datos.get("password") != LAB_PASSWORD:
        return BAD_CREDENTIALS, None
    curp = datos.get("cveCurp", "").upper()
    if not stdcurp.is_valid(curp):
        return INVALID_CURP, None
    rec = db.get(curp)
    return (FOUND, rec) if rec else (NOT_FOUND, None)


def curpstruct(answer: tuple, record: dict | None) -> str:
    status, message, tipo, codigo = answer
    attrs = (f"statusOper={quoteattr(status)} message={quoteattr(message)} TipoError={quoteattr(tipo)} "
             f"CodigoError={quoteattr(codigo)} SessionID={quoteattr(uuid.uuid4().hex)}")
    children = "".join(f"<{f}>{escape(record.get(f, ''))}</{f}>" for f in FIELDS) if record else ""
    return f"<CURPStruct {attrs}>{children}</CURPStruct>"


def envelope(curp_struct: str, latin1: bool = True) -> bytes:
    """The response envelope; latin1 = RENAPO's quirk (UTF-8 declared, ISO-8859-1 bytes for accents and Ñ)."""
    text = ("<?xml version='1.0' encoding='UTF-8'?>"
            f'<soapenv:Envelope xmlns:soapenv="{SOAP_ENV}"><soapenv:Body>'
            f'<ns:consultarPorCurpResponse xmlns:ns="{NS}"><ns:return>{escape(curp_struct)}</ns:return>'
            "</ns:consultarPorCurpResponse></soapenv:Body></soapenv:Envelope>")
    return text.encode("iso-8859-1", "xmlcharrefreplace") if latin1 else text.encode()


def fault(message: str) -> bytes:
    return ("<?xml version='1.0' encoding='UTF-8'?>"
            f'<soapenv:Envelope xmlns:soapenv="{SOAP_ENV}"><soapenv:Body><soapenv:Fault>'
            f"<faultcode>soapenv:Client</faultcode><faultstring>{escape(message)}</faultstring>"
            "</soapenv:Fault></soapenv:Body></soapenv:Envelope>").encode()


class PresentedContext:
    """The SSL context of the generation named in pki/renapo/presented, rebuilt when that file changes."""

    def __init__(self, state: Path, log=None) -> None:
        self.state, self.log = Path(state), log or (lambda _line: None)
        self._lock = threading.Lock()
        self._gen: str | None = None
        self._ctx: ssl.SSLContext | None = None

    def reload(self) -> None:
        with self._lock:
            self._gen = None

    def __call__(self) -> ssl.SSLContext:
        gen = pki.current_generation(self.state)  # one small read per connection: a switch applies at once
        with self._lock:
            if gen != self._gen:
                paths = pki.generation_paths(self.state, gen)
                ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
                ctx.minimum_version = ssl.TLSVersion.TLSv1_2
                ctx.load_cert_chain(paths["server_cert"], paths["server_key"])
                self._ctx, self._gen = ctx, gen
                self.log(f"renapo presents {gen}")
            return self._ctx


class RenapoHandler(Handler):
    def do_GET(self) -> None:
        if self.serve_stats():
            return
        path, _, query = self.path.partition("?")
        if path == SERVICE_PATH and query.lower() == "wsdl":
            self.server.stats.inc("renapo.wsdl")
            location = f"https://{self.headers.get('Host', 'renapo.lab')}{SERVICE_PATH}"
            wsdl = WSDL.read_text().replace(f"https://renapo.lab{SERVICE_PATH}", location)
            self.send_body(200, wsdl.encode(), "text/xml; charset=UTF-8")
        else:
            self.send_json(404, {"error": f"not found: {path}"})

    def do_POST(self) -> None:
        if self.serve_stats():
            return
        if self.path.partition("?")[0] != SERVICE_PATH:
            self.send_json(404, {"error": f"not found: {self.path}"})
            return
        stats = self.server.stats
        stats.inc("renapo.soap")
        stats.inc(f"renapo.client.{self.headers.get('X-Forwarded-For', self.client_address[0])}")
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            answer, record = consultar(self.server.db, parse_request(body))
        except SoapFault as e:
            stats.inc("renapo.fault")
            self.send_body(500, fault(str(e)), "text/xml; charset=UTF-8")
            return
        stats.inc(f"renapo.{answer[0]}")
        if answer[2]:
            stats.inc(f"renapo.{answer[0]}.{answer[2]}/{answer[3]}")
        self.send_body(200, envelope(curpstruct(answer, record), self.server.latin1), "text/xml; charset=UTF-8")


def make_server(state: Path, address: tuple[str, int], stats: Stats, log=None, latin1: bool = True) -> TLSServer:
    """The RENAPO simulator bound to address (port 0 = ephemeral); serve_forever() runs it."""
    state = Path(state)
    srv = TLSServer(address, RenapoHandler, PresentedContext(state, log), stats, "renapo", log)
    srv.db = json.loads((state / "padron" / "renapo.json").read_text(encoding="utf-8"))["curps"]
    srv.latin1 = latin1
    return srv
