"""The lab's padrón: a deterministic producers' padrón and what RENAPO and SAT know about each producer.

Files under STATE/padron (regenerated only when the mix file changes):
  padron.csv   the producers' padrón: curp,nombres,apellido1,apellido2,fecha_nacimiento,sexo,entidad
  renapo.json  the RENAPO simulator's database: {"curps": {CURP: CURPStruct fields}}
  rfc.csv      the producers' RFCs: rfc,curp
  sat.json     the SAT simulator's database: {"rfcs": {RFC: opinion}} (an unknown RFC is NO INSCRITO)
  meta.json    mix digest, check CURP and RFC (always found, active, consistent, POSITIVA)
"""
from __future__ import annotations

import argparse
import csv
import datetime as dt
import hashlib
import json
import os
import random
import sys
from collections import Counter
from pathlib import Path

import yaml
from stdnum.mx import curp as stdcurp
from stdnum.mx import rfc as stdrfc

DEFAULT_MIX = Path(__file__).resolve().parents[1] / "data" / "padron_mix.yml"
ACTIVE = ("AN", "AH", "RCC", "RCN", "CRA")
COLUMNS = ("curp", "nombres", "apellido1", "apellido2", "fecha_nacimiento", "sexo", "entidad")
# CURP state code → INEGI number (numEntidadReg / cveEntidadEmisora).
ENTIDADES = {c: f"{i:02d}" for i, c in enumerate(
    "AS BC BS CC CL CM CS CH DF DG GT GR HG JC MC MN MS NT NL OC PL QT QR SP SL SR TC TS TL VZ YN ZS".split(), 1)}
NOMBRES_H = ("JOSE", "JUAN", "MIGUEL", "FRANCISCO", "PEDRO", "ANTONIO", "JESUS", "ALEJANDRO", "MANUEL", "RICARDO",
             "ROBERTO", "FERNANDO", "JAVIER", "RAFAEL", "ARTURO", "EDUARDO", "SERGIO", "RAUL", "GERARDO", "ENRIQUE",
             "MARIO", "ALFREDO", "ISIDRO", "ANDRES", "HECTOR", "RAMON", "SALVADOR", "GUILLERMO", "FELIPE", "VICENTE",
             "JOSE LUIS", "JUAN CARLOS", "JOSE ANTONIO", "MIGUEL ANGEL", "JUAN MANUEL")
NOMBRES_M = ("MARIA", "GUADALUPE", "JUANA", "ROSA", "MARGARITA", "VERONICA", "LETICIA", "PATRICIA", "ELIZABETH",
             "ALEJANDRA", "GABRIELA", "LAURA", "SILVIA", "ANA", "TERESA", "LUCIA", "CATALINA", "ANGELICA", "ELENA",
             "SOFIA", "ESPERANZA", "JOSEFINA", "ISABEL", "YOLANDA", "REBECA", "CARMEN", "ADRIANA", "DOLORES",
             "MARIA GUADALUPE", "MARIA ELENA", "ANA MARIA", "MARIA DE LOURDES", "ROSA MARIA", "MARIA ISABEL")
APELLIDOS = ("HERNANDEZ", "GARCIA", "MARTINEZ", "LOPEZ", "GONZALEZ", "PEREZ", "RODRIGUEZ", "SANCHEZ", "RAMIREZ",
             "CRUZ", "FLORES", "GOMEZ", "MORALES", "VAZQUEZ", "REYES", "JIMENEZ", "TORRES", "DIAZ", "GUTIERREZ",
             "RUIZ", "MENDOZA", "AGUILAR", "ORTIZ", "MORENO", "CASTILLO", "ROMERO", "ALVAREZ", "MENDEZ", "CHAVEZ",
             "RIVERA", "JUAREZ", "RAMOS", "DOMINGUEZ", "HERRERA", "MEDINA", "CASTRO", "VARGAS", "GUZMAN", "VELAZQUEZ",
             "ROJAS", "CONTRERAS", "SALAZAR", "LUNA", "ORTEGA", "SANTIAGO", "GUERRERO", "ESTRADA", "BAUTISTA",
             "CORTES", "SOTO", "ALVARADO", "ESPINOZA", "LARA", "AVILA", "RIOS", "CERVANTES", "SILVA", "DELGADO",
             "VEGA", "MARQUEZ", "SANDOVAL", "FUENTES", "CARRILLO", "LEON", "AYALA", "PACHECO", "TAPIA", "ZAVALA")
# First names the CURP skips when they open a compound name, and the particles it never uses.
_SKIP_FIRST = ("MARIA", "MA", "MA.", "JOSE", "J", "J.")
_PARTICLES = ("DE", "DEL", "LA", "LAS", "LOS", "Y")
VOWELS = "AEIOU"


def _internal(word: str, vowel: bool) -> str:
    """First internal vowel (or consonant) of a word, X when there is none."""
    for c in word[1:]:
        if c.isalpha() and (c in VOWELS) == vowel:
            return c
    return "X"


def build_curp(nombres: str, apellido1: str, apellido2: str, fecha: dt.date, sexo: str, entidad: str,
               homonimia: str) -> str:
    """The CURP of a person, check digit from python-stdnum; blacklisted first four letters get an X (RENAPO's rule)."""
    parts = [w for w in nombres.split() if w not in _PARTICLES]
    nombre = parts[1] if len(parts) > 1 and parts[0] in _SKIP_FIRST else parts[0]
    a2 = apellido2 or "X"
    four = apellido1[0] + _internal(apellido1, True) + a2[0] + nombre[0]
    body = (four + fecha.strftime("%y%m%d") + sexo + entidad + _internal(apellido1, False) + _internal(a2, False)
            + _internal(nombre, False) + homonimia)
    curp = body + stdcurp.calc_check_digit(body)
    if not stdcurp.is_valid(curp):
        body = body[0] + "X" + body[2:]
        curp = body + stdcurp.calc_check_digit(body)
    return stdcurp.validate(curp)


def _person(rng: random.Random, used: set[str]) -> dict:
    sexo = rng.choice("HM")
    nombres = rng.choice(NOMBRES_H if sexo == "H" else NOMBRES_M)
    a1, a2 = rng.choice(APELLIDOS), rng.choice(APELLIDOS)
    fecha = dt.date(1940, 1, 1) + dt.timedelta(days=rng.randrange(365 * 66))
    entidad = rng.choice(list(ENTIDADES))
    digits = "0123456789" if fecha.year < 2000 else "ABCDEFGHIJ"
    for h in digits:
        curp = build_curp(nombres, a1, a2, fecha, sexo, entidad, h)
        if curp not in used:
            used.add(curp)
            return {"curp": curp, "nombres": nombres, "apellido1": a1, "apellido2": a2, "fecha": fecha,
                    "sexo": sexo, "entidad": entidad}
    return _person(rng, used)


def _renapo_record(rng: random.Random, p: dict, status: str) -> dict:
    reg = ENTIDADES[p["entidad"]]
    return {"CURP": p["curp"], "apellido1": p["apellido1"], "apellido2": p["apellido2"], "nombres": p["nombres"],
            "sexo": p["sexo"], "fechNac": p["fecha"].strftime("%d/%m/%Y"), "nacionalidad": "MEX",
            "docProbatorio": "1", "anioReg": str(p["fecha"].year + rng.choice((0, 0, 0, 1, 2))),
            "foja": "", "tomo": "", "libro": f"{rng.randrange(1, 20):04d}", "numActa": f"{rng.randrange(1, 99999):05d}",
            "CRIP": "", "numEntidadReg": reg, "cveMunicipioReg": f"{rng.randrange(1, 120):03d}",
            "NumRegExtranjeros": "", "FolioCarta": "", "cveEntidadNac": p["entidad"], "cveEntidadEmisora": reg,
            "statusCurp": status}


def _rfc(rng: random.Random, curp: str) -> str:
    """A person's RFC: the CURP's first ten characters + a homoclave with a valid check digit."""
    while True:
        body = curp[:10] + rng.choice("123456789ABCDEFGHIJKLMNPRSTUV") + rng.choice("123456789ABCDEFGHIJKLMNPRSTUVWXYZ")
        rfc = body + stdrfc.calc_check_digit(body)
        if stdrfc.is_valid(rfc, validate_check_digits=True):
            return rfc


def load_mix(path: Path = DEFAULT_MIX) -> dict:
    return yaml.safe_load(Path(path).read_text())


def generate(mix: dict) -> dict:
    """Everything the padrón files hold, in memory; deterministic for a given mix."""
    rng = random.Random(mix["seed"])
    cats = [code for code, n in mix["status_curp"].items() for _ in range(n)]
    cats.remove("AN")  # record 0 is the check record: AN, found, consistent
    cats += ["NOT_FOUND"] * mix["not_found"] + ["MALFORMED"] * mix["malformed"]
    rng.shuffle(cats)
    cats.insert(0, "AN")
    used: set[str] = set()
    people = [_person(rng, used) for _ in cats]
    renapo = {p["curp"]: _renapo_record(rng, p, c) for p, c in zip(people, cats, strict=True)
              if c not in ("NOT_FOUND", "MALFORMED")}
    rows = [{"curp": p["curp"], "nombres": p["nombres"], "apellido1": p["apellido1"], "apellido2": p["apellido2"],
             "fecha_nacimiento": p["fecha"].isoformat(), "sexo": p["sexo"], "entidad": p["entidad"]} for p in people]
    candidates = [i for i in range(1, len(cats)) if cats[i] in ACTIVE]
    rng.shuffle(candidates)
    for field, n in mix["mismatch"].items():
        for i in (candidates.pop() for _ in range(n)):
            row = rows[i]
            if field == "nombre":
                parts = row["nombres"].split()
                row["nombres"] = parts[0] if len(parts) > 1 else f"{parts[0]} {rng.choice(('DEL CARMEN', 'LUIS'))}"
            elif field == "fecha_nacimiento":
                d = dt.date.fromisoformat(row["fecha_nacimiento"]) + dt.timedelta(days=rng.randrange(1, 400))
                row["fecha_nacimiento"] = d.isoformat()
            elif field == "sexo":
                row["sexo"] = "M" if row["sexo"] == "H" else "H"
            else:
                raise ValueError(f"unknown mismatch field {field!r} in the mix file")
    for i in (i for i, c in enumerate(cats) if c == "MALFORMED"):
        c = rows[i]["curp"]
        rows[i]["curp"] = c[:17] + str((int(c[17]) + 1) % 10)  # a wrong check digit, as if mistyped
    rfc_rows, sat = [], {}
    opinions = [op for op, n in mix["sat_opinion"].items() for _ in range(n)]
    first, rest = opinions.pop(opinions.index("POSITIVA")), opinions
    rng.shuffle(rest)
    for row, op in zip((r for r, c in zip(rows, cats, strict=True) if c != "MALFORMED"), [first, *rest],
                       strict=False):
        rfc = _rfc(rng, row["curp"])
        rfc_rows.append({"rfc": rfc, "curp": row["curp"]})
        if op != "NO INSCRITO":
            sat[rfc] = op
    return {"padron": rows, "renapo": renapo, "rfc": rfc_rows, "sat": sat,
            "check_curp": rows[0]["curp"], "check_rfc": rfc_rows[0]["rfc"]}


def _dir(state: Path) -> Path:
    return Path(state) / "padron"


def _tmp(path: Path) -> Path:
    """A temp name of this process only: labctl and the simulators may generate the same (identical) files at once."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def _write_csv(path: Path, fields: tuple, rows: list[dict]) -> None:
    tmp = _tmp(path)
    with tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    tmp.replace(path)


def _write_json(path: Path, data) -> None:
    tmp = _tmp(path)
    tmp.write_text(json.dumps(data, ensure_ascii=False, indent=1))
    tmp.replace(path)


def ensure(state: Path, mix_path: Path = DEFAULT_MIX) -> dict:
    """Writes the padrón files unless they already match the mix file; returns their paths and the check values."""
    d = _dir(state)
    digest = hashlib.sha256(Path(mix_path).read_bytes()).hexdigest()
    meta_path = d / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    if meta.get("mix_sha256") != digest:
        g = generate(load_mix(mix_path))
        d.mkdir(parents=True, exist_ok=True)
        _write_csv(d / "padron.csv", COLUMNS, g["padron"])
        _write_json(d / "renapo.json", {"curps": g["renapo"]})
        _write_csv(d / "rfc.csv", ("rfc", "curp"), g["rfc"])
        _write_json(d / "sat.json", {"rfcs": g["sat"]})
        meta = {"mix": str(mix_path), "mix_sha256": digest, "check_curp": g["check_curp"], "check_rfc": g["check_rfc"]}
        _write_json(meta_path, meta)  # written last: its presence means the set is complete
    return {"padron": d / "padron.csv", "renapo_db": d / "renapo.json", "rfc": d / "rfc.csv", "sat_db": d / "sat.json",
            "meta": meta_path, "check_curp": meta["check_curp"], "check_rfc": meta["check_rfc"]}


def _read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def load(state: Path) -> dict:
    d = _dir(state)
    return {"padron": _read_csv(d / "padron.csv"), "renapo": json.loads((d / "renapo.json").read_text())["curps"],
            "rfc": _read_csv(d / "rfc.csv"), "sat": json.loads((d / "sat.json").read_text())["rfcs"]}


def check_curp(state: Path) -> str:
    """A CURP that RENAPO always finds, active and consistent: for the post-deploy consultation."""
    return ensure(state)["check_curp"]


def check_rfc(state: Path) -> str:
    """An RFC whose SAT opinion is always POSITIVA: for the post-deploy consultation on the SAT path."""
    return ensure(state)["check_rfc"]


def classify(row: dict, renapo: dict) -> tuple[str, list[str]]:
    """(category, disagreeing fields) of one padrón row: MALFORMED, NOT_FOUND or RENAPO's statusCurp."""
    if not stdcurp.is_valid(row["curp"]):
        return "MALFORMED", []
    rec = renapo.get(row["curp"])
    if rec is None:
        return "NOT_FOUND", []
    fields = []
    if (row["nombres"], row["apellido1"], row["apellido2"]) != (rec["nombres"], rec["apellido1"], rec["apellido2"]):
        fields.append("nombre")
    if row["fecha_nacimiento"] != dt.datetime.strptime(rec["fechNac"], "%d/%m/%Y").date().isoformat():
        fields.append("fecha_nacimiento")
    if row["sexo"] != rec["sexo"]:
        fields.append("sexo")
    return rec["statusCurp"], fields


def expected_counts(state: Path) -> dict:
    """Ground truth computed from the padrón files (not from the mix file), for comparing KPIs against."""
    data = load(state)
    cats, mismatch, mismatched = Counter(), Counter(), 0
    for row in data["padron"]:
        cat, fields = classify(row, data["renapo"])
        cats[cat] += 1
        mismatch.update(fields)
        mismatched += bool(fields)
    status = {k: v for k, v in cats.items() if k not in ("MALFORMED", "NOT_FOUND")}
    found = sum(status.values())
    opinions = Counter(data["sat"].get(r["rfc"], "NO INSCRITO") for r in data["rfc"])
    return {"total": len(data["padron"]), "found": found, "not_found": cats["NOT_FOUND"],
            "malformed": cats["MALFORMED"], "status_curp": dict(sorted(status.items())),
            "active": sum(v for k, v in status.items() if k in ACTIVE),
            "inactive": sum(v for k, v in status.items() if k not in ACTIVE), "deceased": status.get("BD", 0),
            "mismatch": dict(sorted(mismatch.items())), "mismatched_records": mismatched,
            # DESIGN §7: inconsistent = data disagree, or CURP not found / malformed.
            "inconsistent": mismatched + cats["NOT_FOUND"] + cats["MALFORMED"],
            "sat_opinion": dict(sorted(opinions.items()))}


def examples(state: Path) -> dict:
    """One padrón CURP per category (check, NOT_FOUND, MALFORMED, each statusCurp, each mismatch field)."""
    data = load(state)
    out = {"check": check_curp(state)}
    for row in data["padron"]:
        cat, fields = classify(row, data["renapo"])
        for key in (cat, *(f"mismatch_{f}" for f in fields)):
            out.setdefault(key, row["curp"])
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Generate the lab padrón and print its ground truth.")
    ap.add_argument("--state", required=True, type=Path)
    ap.add_argument("--mix", type=Path, default=DEFAULT_MIX)
    args = ap.parse_args(argv)
    paths = ensure(args.state, args.mix)
    print(json.dumps({"files": paths, "expected": expected_counts(args.state)}, default=str, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
