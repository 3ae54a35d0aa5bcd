"""Latency of one RENAPO consultation (consulta.consult: fresh connection, TLS, SOAP, parse): median over N.

    python benchmarks/bench_consulta.py [-n 50] [--endpoint URL --ca PEM --curp CURP]

Without --endpoint it starts the simulators in-process on ephemeral ports (temporary state) and consults them
directly over HTTPS. With --endpoint it consults that endpoint, e.g. a lab host's gateway http://127.0.0.2:8080.
"""
import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import ansible.module_utils

ROOT = Path(__file__).resolve().parents[1]
ansible.module_utils.__path__.append(str(ROOT / "module_utils"))
sys.path.insert(0, str(ROOT / "lab"))

import pki  # noqa: E402
from ansible.module_utils.consulta import consult  # noqa: E402
from sim import padron, renapo, services  # noqa: E402


def measure(n: int, **kwargs) -> list[float]:
    consult("renapo", **kwargs)  # warm-up: imports, first handshake
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        result = consult("renapo", **kwargs)
        times.append((time.perf_counter() - t0) * 1000)
        assert result["status_oper"] == "EXITOSO"
    return times


def report(label: str, times: list[float]) -> None:
    q = statistics.quantiles(times, n=20)
    print(f"{label}: n={len(times)} median={statistics.median(times):.2f} ms p95={q[18]:.2f} ms "
          f"min={min(times):.2f} ms max={max(times):.2f} ms")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=50)
    ap.add_argument("--endpoint")
    ap.add_argument("--ca", help="anchor PEM for an HTTPS --endpoint")
    ap.add_argument("--curp")
    args = ap.parse_args()
    creds = {"usuario": renapo.LAB_USUARIO, "password": renapo.LAB_PASSWORD}
    if args.endpoint:
        if not args.curp:
            ap.error("--endpoint needs --curp (padron.check_curp of the lab's state)")
        report(f"consulta via {args.endpoint}",
               measure(args.n, endpoint=args.endpoint, curp=args.curp, ca_path=args.ca, **creds))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        svc = services.start(Path(tmp), renapo=("127.0.0.1", 0), sat=None, smtp=None)
        try:
            report("consulta direct HTTPS (in-process simulator)",
                   measure(args.n, endpoint=f"https://127.0.0.1:{svc.renapo_port}", curp=padron.check_curp(tmp),
                           ca_path=str(pki.ensure(tmp)["renapo_anchor"]), **creds))
        finally:
            svc.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
