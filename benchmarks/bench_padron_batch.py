"""Padrón batch throughput against the RENAPO simulator at concurrency C, next to wrk at the same C, same run.

    python benchmarks/bench_padron_batch.py [-c 8] [--duration 5]

Starts the simulators (lab/sim/services.py) in their own process on ephemeral ports with a temporary state, then
  1. wrk (Debian's /usr/bin/wrk) with C connections POSTs the same consultarPorCurp SOAP body for --duration s;
  2. the batch (padron_batch.run_batch, the module's code) consults the lab padrón (990 well-formed CURPs) at C,
     run after run (each a new run with its results stored), for at least as long as wrk ran.
Both speak HTTPS to the same endpoint and the simulator answers each request on its own connection (HTTP/1.0),
so both pay one TLS handshake per consultation. Prints both rates and batch/wrk (target >= 0.8).
"""
import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import ansible.module_utils

ROOT = Path(__file__).resolve().parents[1]
ansible.module_utils.__path__.append(str(ROOT / "module_utils"))
sys.path.insert(0, str(ROOT / "lab"))

import pki  # noqa: E402
from ansible.module_utils.consulta import RENAPO_PATH, SOAP_ACTION, build_envelope  # noqa: E402
from ansible.module_utils.padron_batch import run_batch  # noqa: E402
from sim import padron, renapo  # noqa: E402

LUA = """wrk.method = "POST"
wrk.headers["Content-Type"] = "text/xml; charset=UTF-8"
wrk.headers["SOAPAction"] = '"%s"'
wrk.body = [[%s]]
"""


def start_simulator(state: Path) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen([sys.executable, str(ROOT / "lab" / "sim" / "services.py"), "--state", str(state),
                             "--renapo", "127.0.0.1:0", "--sat", "127.0.0.1:0", "--smtp", "127.0.0.1:0"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    first = proc.stdout.readline()
    if not first.startswith("services up: renapo "):
        proc.kill()
        raise SystemExit(f"the simulator did not start: {first!r}")
    subprocess.Popen(["cat"], stdin=proc.stdout, stdout=subprocess.DEVNULL)  # drain its per-request log lines
    return proc, int(first.split()[3].rsplit(":", 1)[1])


def wrk_rate(url: str, curp: str, concurrency: int, duration: int, tmp: Path) -> float:
    script = tmp / "consulta.lua"
    body = build_envelope(curp, renapo.LAB_USUARIO, renapo.LAB_PASSWORD).decode()
    script.write_text(LUA % (SOAP_ACTION, body))
    out = subprocess.run(["wrk", "-t", str(min(2, concurrency)), "-c", str(concurrency), "-d", f"{duration}s",
                          "-s", str(script), url + RENAPO_PATH], capture_output=True, text=True, check=True).stdout
    if "Non-2xx" in out:
        raise SystemExit(f"wrk got error answers:\n{out}")
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-c", "--concurrency", type=int, default=8)
    ap.add_argument("--duration", type=int, default=5, help="seconds of the wrk run")
    args = ap.parse_args()
    if not shutil.which("wrk"):
        print("wrk is not installed (Debian package wrk): skipped")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp)
        paths = padron.ensure(state)
        anchor = str(pki.ensure(state)["renapo_anchor"])
        sim, port = start_simulator(state)
        url = f"https://127.0.0.1:{port}"
        try:
            wrk = wrk_rate(url, paths["check_curp"], args.concurrency, args.duration, state)
            t0, consulted, errors, runs = time.perf_counter(), 0, 0, 0
            while time.perf_counter() - t0 < args.duration:
                run = run_batch(str(paths["padron"]), str(state / "results.db"), url, usuario=renapo.LAB_USUARIO,
                                password=renapo.LAB_PASSWORD, ca_path=anchor, concurrency=args.concurrency,
                                resume=False)
                consulted, errors, runs = consulted + run["consulted"], errors + run["error"], runs + 1
            seconds = time.perf_counter() - t0
        finally:
            sim.terminate()
            sim.wait(10)
    batch = consulted / seconds
    ratio = batch / wrk
    print(f"concurrency {args.concurrency}: wrk {wrk:.0f} req/s ({args.duration} s); batch {batch:.0f} consultations/s "
          f"({consulted} in {seconds:.2f} s over {runs} runs, {errors} errors, results stored)")
    print(f"batch/wrk = {ratio:.2f} (target >= 0.8) -> {'OK' if ratio >= 0.8 else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
