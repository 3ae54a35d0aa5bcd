"""The lab's own speed (issue 2, performance): up, down, and one consultation through a host's gateway.

    python benchmarks/bench_lab.py [--hosts 5] [-n 50]

Times `labctl.py up --hosts N` as an operator runs it (the CLI, wall time) from a clean slate (--fresh: new PKI, new
host trees) and from existing state (a restart), `labctl.py down`, and the median of n consultations through the first
host's gateway with module_utils.consulta.consult. Targets: up < 5 s, down < 1 s, consultation < 100 ms.
Runs on the lab slot in LAB_SLOT (default 3, the molecule/benchmark slot); leaves that lab down.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import ansible.module_utils

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("LAB_SLOT", "3")
ansible.module_utils.__path__.append(str(ROOT / "module_utils"))
sys.path.insert(0, str(ROOT / "lab"))

import labctl  # noqa: E402
from ansible.module_utils.consulta import consult  # noqa: E402
from sim import padron, renapo  # noqa: E402


def labctl_cli(*args: str) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, str(ROOT / "lab" / "labctl.py"), *args], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hosts", type=int, default=5)
    ap.add_argument("-n", type=int, default=50, help="consultations through the gateway (default 50)")
    args = ap.parse_args()
    labctl_cli("down")
    try:
        fresh = labctl_cli("up", "--hosts", str(args.hosts), "--fresh")
        again = labctl_cli("up", "--hosts", str(args.hosts))  # everything runs: starts nothing
        down = labctl_cli("down")
        restart = labctl_cli("up", "--hosts", str(args.hosts))
        url = f"http://{labctl.host_ip(1)}:{labctl.GATEWAY_PORT}"
        kwargs = {"curp": padron.check_curp(labctl.STATE), "usuario": renapo.LAB_USUARIO,
                  "password": renapo.LAB_PASSWORD}
        consult("renapo", url, **kwargs)  # warm-up: imports, nginx worker's first upstream handshake
        times = []
        for _ in range(args.n):
            t0 = time.perf_counter()
            assert consult("renapo", url, **kwargs)["status_oper"] == "EXITOSO"
            times.append((time.perf_counter() - t0) * 1000)
    finally:
        down2 = labctl_cli("down")
    print(f"lab on slot {labctl.SLOT}, {args.hosts} hosts (labctl CLI wall time, python start included):")
    print(f"  up --fresh (new PKI and host trees)  {fresh:6.2f} s   (target < 5 s)")
    print(f"  up from existing state (restart)     {restart:6.2f} s   (target < 5 s)")
    print(f"  up when already up (starts nothing)  {again:6.2f} s")
    print(f"  down                                 {statistics.median([down, down2]):6.2f} s   (target < 1 s; "
          f"{down:.2f} and {down2:.2f})")
    q = statistics.quantiles(times, n=20)
    print(f"  consultation via {url}: median {statistics.median(times):.1f} ms, p95 {q[18]:.1f} ms, "
          f"min {min(times):.1f} ms, max {max(times):.1f} ms over {len(times)}   (target < 100 ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
