"""SAT simulator: opinión de cumplimiento by RFC over HTTPS with mutual TLS (client certificate from the lab SAT CA).

GET /sat/opinion/<RFC> → 200 {"rfc", "opinion", "folio", "fecha", "client_serial"}; opinion POSITIVA, NEGATIVA,
INSCRITO SIN OBLIGACIONES, or NO INSCRITO for an RFC SAT does not know. client_serial is the serial of the client
certificate presented (upper-case hex), so a test sees which identity a host used. Malformed RFC → 400 {"error"}.
No client certificate, or one from another CA → the TLS handshake is refused.
"""
from __future__ import annotations

import datetime as dt
import itertools
import json
import ssl
from pathlib import Path

import pki
from stdnum.mx import rfc as stdrfc

from sim import Handler, Stats, TLSServer

PATH_PREFIX = "/sat/opinion/"


def make_context(paths: dict) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(paths["sat_server_cert"], paths["sat_server_key"])
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(paths["sat_ca"])  # the lab SAT CA is the only client CA
    return ctx


class SatHandler(Handler):
    def do_GET(self) -> None:
        if self.serve_stats():
            return
        if not self.path.startswith(PATH_PREFIX):
            self.send_json(404, {"error": f"not found: {self.path}"})
            return
        stats = self.server.stats
        rfc = self.path[len(PATH_PREFIX):].partition("?")[0].upper()
        if not stdrfc.is_valid(rfc, validate_check_digits=True):
            stats.inc("sat.bad_rfc")
            self.send_json(400, {"error": "RFC mal formado (estructura o digito verificador)", "rfc": rfc})
            return
        opinion = self.server.db.get(rfc, "NO INSCRITO")
        stats.inc("sat.opinion")
        stats.inc(f"sat.opinion.{opinion}")
        serial = format(int(self.connection.getpeercert()["serialNumber"], 16), "X")
        now = dt.datetime.now().astimezone()
        self.send_json(200, {"rfc": rfc, "opinion": opinion, "folio": f"{now:%y}NA{next(self.server.folios):08d}",
                             "fecha": now.isoformat(timespec="seconds"), "client_serial": serial})


def make_server(state: Path, address: tuple[str, int], stats: Stats, log=None) -> TLSServer:
    """The SAT simulator bound to address (port 0 = ephemeral); serve_forever() runs it."""
    state = Path(state)
    ctx = make_context(pki.ensure(state))
    srv = TLSServer(address, SatHandler, lambda: ctx, stats, "sat", log)
    srv.db = json.loads((state / "padron" / "sat.json").read_text())["rfcs"]
    srv.folios = itertools.count(1)
    return srv
