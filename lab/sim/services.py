"""The lab's simulators in one process: RENAPO (HTTPS SOAP), SAT (HTTPS, mutual TLS) and the SMTP sink.

    python lab/sim/services.py --state DIR [--renapo HOST:PORT] [--sat HOST:PORT] [--smtp HOST:PORT]

Creates what is missing first (lab PKI, padrón, Maildirs), logs one line per request to stdout, exits cleanly on
SIGTERM/SIGINT; SIGHUP makes RENAPO reload its certificate (it also does so by itself when `presented` changes).
Tests start it in-process: start(state, renapo=("127.0.0.1", 0), ...) → Services with .renapo_port, .stop().
Counters: GET https://RENAPO/__lab/stats (JSON), POST .../__lab/stats/reset.
"""
from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

LAB = Path(__file__).resolve().parents[1]
if str(LAB) not in sys.path:
    sys.path.insert(0, str(LAB))  # run as a script: lab/ holds pki and the sim package

import pki

from sim import Stats, padron, smtp_sink
from sim import renapo as renapo_sim
from sim import sat as sat_sim

DEFAULTS = {"renapo": ("127.0.0.1", 9443), "sat": ("127.0.0.1", 9444), "smtp": ("127.0.0.1", 2525)}


class Services:
    """Running simulators; a server started with address None is not started (its port is None)."""

    def __init__(self, state: Path, stats: Stats, renapo_srv, sat_srv, smtp) -> None:
        self.state, self.stats = Path(state), stats
        self.renapo, self.sat, self.smtp = renapo_srv, sat_srv, smtp
        self._threads = []
        for srv in (renapo_srv, sat_srv):
            if srv is not None:
                t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True,
                                     name=f"{srv.name}-accept")
                t.start()
                self._threads.append(t)

    renapo_port = property(lambda self: self.renapo.port if self.renapo else None)
    sat_port = property(lambda self: self.sat.port if self.sat else None)
    smtp_port = property(lambda self: self.smtp.port if self.smtp else None)

    def reload(self) -> None:
        if self.renapo is not None:
            self.renapo.context.reload()

    def stop(self) -> None:
        for srv in (self.renapo, self.sat):
            if srv is not None:
                srv.shutdown()
                srv.server_close()
        if self.smtp is not None:
            self.smtp.stop()
        for t in self._threads:
            t.join(5)


def prepare(state: Path) -> dict:
    """Everything the simulators read, created if missing: PKI, padrón, Maildirs."""
    return {"pki": pki.ensure(state), "padron": padron.ensure(state), "mail": smtp_sink.maildirs(state)}


def start(state: Path, renapo: tuple | None = DEFAULTS["renapo"], sat: tuple | None = DEFAULTS["sat"],
          smtp: tuple | None = DEFAULTS["smtp"], log=None) -> Services:
    state = Path(state)
    prepare(state)
    stats = Stats()
    renapo_srv = renapo_sim.make_server(state, renapo, stats, log) if renapo else None
    sat_srv = sat_sim.make_server(state, sat, stats, log) if sat else None
    sink = smtp_sink.SmtpSink(state, smtp, stats, log).start() if smtp else None
    return Services(state, stats, renapo_srv, sat_srv, sink)


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host or "127.0.0.1", int(port)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Run the lab's RENAPO, SAT and SMTP simulators.")
    ap.add_argument("--state", required=True, type=Path)
    for name, (host, port) in DEFAULTS.items():
        ap.add_argument(f"--{name}", type=_address, default=(host, port), metavar="HOST:PORT")
    args = ap.parse_args(argv)

    def log(line: str) -> None:
        print(line, flush=True)

    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    svc = start(args.state, args.renapo, args.sat, args.smtp, log=log)
    signal.signal(signal.SIGHUP, lambda *_: svc.reload())
    log(f"services up: renapo {args.renapo[0]}:{svc.renapo_port} sat {args.sat[0]}:{svc.sat_port} "
        f"smtp {args.smtp[0]}:{svc.smtp_port} state {args.state}")
    while not done.wait(1):
        pass
    svc.stop()
    log("services stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
