"""KPI computation over N stored padrón results (default 2,000,000): wall time and peak RSS.

    python benchmarks/bench_kpi.py [--rows 2000000] [--runs 4] [--db PATH]

Fills a results database (padron_batch's schema) with synthetic results spread over --runs runs, generated inside
SQLite (no Python row loop), then computes every KPI (kpi.compute) in a fresh child process and prints its time
and peak RSS (resource.getrusage of that process alone). Targets (issues 6 and 12): under 15 s and under 300 MB.
"""
import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import ansible.module_utils

ROOT = Path(__file__).resolve().parents[1]
ansible.module_utils.__path__.append(str(ROOT / "module_utils"))

from ansible.module_utils import kpi, padron_batch  # noqa: E402
from ansible.module_utils.consulta import STATUS_INACTIVE  # noqa: E402

sys.path.insert(0, str(ROOT / "tests"))
from providers import lab_providers  # noqa: E402  (the lab inventory's registry)

PROVIDER = next(name for name, p in lab_providers().items() if p["consultation"]["strategy"] == "curp_soap")

STATUSES = ["AN"] * 78 + ["AH"] * 4 + ["RCC"] * 3 + ["RCN"] * 2 + ["BD"] * 5 + ["BAP", "BSU", "BDM", "BDP", "BJD",
                                                                                "BDA", "BCC", "BCN"]
ENTIDADES = "AS BC BS CC CL CM CS CH DF DG GT GR HG JC MC MN MS NT NL OC PL QT QR SP SL SR TC TS TL VZ YN ZS".split()


def fill(path: str, rows: int, runs: int) -> None:
    db = padron_batch.open_results(path)
    per_run = rows // runs
    status = "CASE abs(random()) % 100 " + " ".join(f"WHEN {i} THEN '{s}'" for i, s in enumerate(STATUSES)) + " END"
    entidad = "CASE abs(random()) % 32 " + " ".join(f"WHEN {i} THEN '{e}'" for i, e in enumerate(ENTIDADES)) + " END"
    inactive = ", ".join(f"'{s}'" for s in STATUS_INACTIVE)
    db.execute("BEGIN")
    for r in range(runs):
        run_id, day = f"2026{r + 1:02d}01T090000", f"2026-{r + 1:02d}-01"
        db.execute("INSERT INTO runs (run_id, started_at, finished_at, padron, padron_sha256, padron_total, endpoint,"
                   " provider) VALUES (?, ?, ?, 'padron.csv', 'synthetic', ?, 'https://renapo.lab', ?)",
                   (run_id, f"{day}T09:00:00-06:00", f"{day}T18:00:00-06:00", per_run, PROVIDER))
        # 3% not found, 1% malformed (never sent: 0 attempts), 2% name mismatch; the CURP is synthetic but unique.
        db.execute(f"""
            WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?)
            INSERT INTO results (run_id, row_no, curp, consulted_at, attempts, category, status_oper, status_curp,
                                 mismatch_nombre, edad, entidad, revisado, exitoso, inconsistente, baja, defuncion)
            SELECT run_id, row_no, curp, at, c != 'malformed', c, oper, st, mm, edad, entidad, 1, c = 'found',
                   c != 'found' OR mm, IFNULL(st IN ({inactive}), 0), IFNULL(st = 'BD', 0)
            FROM (SELECT ? AS run_id, i + 1 AS row_no, printf('CURP%014d', i) AS curp,
                         ? || printf('T%02d:%02d:00-06:00', 9 + i % 9, i % 60) AS at, c,
                         CASE c WHEN 'found' THEN 'EXITOSO' WHEN 'not_found' THEN 'NO EXITOSO' END AS oper,
                         CASE c WHEN 'found' THEN {status} END AS st, (c = 'found' AND abs(random()) % 50 = 0) AS mm,
                         18 + abs(random()) % 70 AS edad, {entidad} AS entidad
                  FROM (SELECT i, CASE WHEN abs(random()) % 100 < 3 THEN 'not_found'
                                       WHEN abs(random()) % 100 < 1 THEN 'malformed' ELSE 'found' END AS c FROM n))
            """, (per_run, run_id, day))  # noqa: S608 - the CASE texts are this script's constants
    db.execute("COMMIT")
    db.close()


def measure(path: str) -> None:
    """The child: compute, then print seconds, peak RSS and a few KPIs as JSON."""
    t0 = time.perf_counter()
    result = kpi.compute(path, providers=lab_providers(), provider=PROVIDER)
    seconds = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": round(seconds, 2), "peak_rss_mb": round(peak_mb, 1),
                      "runs": len(result["corridas"]), "indicadores": result["indicadores"]}))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=2_000_000)
    ap.add_argument("--runs", type=int, default=4)
    ap.add_argument("--db", help="reuse (or create) this results database instead of a temporary one")
    ap.add_argument("--measure", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        measure(args.measure)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        path = args.db or str(Path(tmp) / "results.db")
        if not Path(path).exists():
            t0 = time.perf_counter()
            fill(path, args.rows, args.runs)
            print(f"filled {args.rows:,} results in {args.runs} runs: {time.perf_counter() - t0:.1f} s "
                  f"({Path(path).stat().st_size / 2**20:.0f} MB on disk)")
        out = subprocess.run([sys.executable, __file__, "--measure", path], capture_output=True, text=True,
                             check=True).stdout
        data = json.loads(out)
        ok = data["seconds"] < 15 and data["peak_rss_mb"] < 300
        print(f"KPI computation over {args.rows:,} results: {data['seconds']:.2f} s (target < 15 s), peak RSS "
              f"{data['peak_rss_mb']:.0f} MB (target < 300 MB) -> {'OK' if ok else 'MISSED'}")
        print("latest run: " + ", ".join(f"{k} {v['valor']}%" for k, v in data["indicadores"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
