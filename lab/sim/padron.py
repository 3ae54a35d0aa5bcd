"""The lab's padrón: a deterministic producers' padrón and what RENAPO and SAT know about each producer.

Files under STATE/padron (regenerated only when the mix file changes):
  padron.csv   the producers' padrón (UTF-8): curp,nombres,apellido1,apellido2,fecha_nacimiento,sexo,entidad
  renapo.json  the RENAPO simulator's database: {"curps": {CURP: CURPStruct fields}}; names keep Ñ and accents
               as RENAPO holds them (the simulator sends them as ISO-8859-1 bytes)
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
import unicodedata
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
# Names with Ñ or accents, as RENAPO holds them (the CURP folds accents and writes Ñ as X).
NOMBRES_H_ACENTO = ("JOSÉ", "JESÚS", "RAÚL", "HÉCTOR", "RAMÓN", "ANDRÉS", "JOSÉ ÁNGEL", "JOAQUÍN", "MOISÉS", "ÓSCAR")
NOMBRES_M_ACENTO = ("MARÍA", "SOFÍA", "ANGÉLICA", "LUCÍA", "VERÓNICA", "MARÍA JOSÉ", "MARÍA DE LOS ÁNGELES", "INÉS",
                    "ROCÍO", "MÓNICA")
APELLIDOS_ACENTO = ("MUÑOZ", "NÚÑEZ", "PEÑA", "ACUÑA", "CASTAÑEDA", "ORDÓÑEZ", "YÁÑEZ", "BRISEÑO", "ZÚÑIGA",
                    "PÉREZ", "GÓMEZ", "HERNÁNDEZ", "MARTÍNEZ", "LÓPEZ", "GONZÁLEZ", "RODRÍGUEZ", "SÁNCHEZ",
                    "MÉNDEZ", "VÁZQUEZ", "ÁLVAREZ", "JIMÉNEZ", "DÍAZ", "GUTIÉRREZ", "RAMÍREZ")
# Foreign-born producers (CURP state NE): their nationality (RENAPO's three-letter code) and document.
NACIONALIDADES = ("USA", "GTM", "ESP", "COL", "HND", "SLV", "VEN", "ARG", "CUB")
# docProbatorio: 1 acta de nacimiento, 3 documento migratorio (NumRegExtranjeros), 4 carta de naturalización
# (FolioCarta): the lab's reading of RENAPO's codes; only what each document fills differs.
DOC_ACTA, DOC_MIGRATORIO, DOC_NATURALIZACION = "1", "3", "4"
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


def curp_letters(word: str) -> str:
    """A name as the CURP spells it: accents dropped, Ñ written X."""
    word = word.upper().replace("Ñ", "X")
    return "".join(c for c in unicodedata.normalize("NFKD", word) if not unicodedata.combining(c))


def build_curp(nombres: str, apellido1: str, apellido2: str, fecha: dt.date, sexo: str, entidad: str,
               homonimia: str) -> str:
    """The CURP of a person, check digit from python-stdnum; blacklisted first four letters get an X (RENAPO's rule).
    Accented names and Ñ are folded first (JOSÉ -> JOSE, MUÑOZ -> MUXOZ)."""
    nombres, apellido1, apellido2 = curp_letters(nombres), curp_letters(apellido1), curp_letters(apellido2)
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


def _person(rng: random.Random, used: set[str], traits: frozenset = frozenset()) -> dict:
    """One producer; traits: accented (Ñ/accents in a name), ne (born abroad), post2000 (born 2000-2007)."""
    sexo = rng.choice("HM")
    if "accented" in traits:
        nombres = rng.choice(NOMBRES_H_ACENTO if sexo == "H" else NOMBRES_M_ACENTO)
        a1, a2 = rng.choice(APELLIDOS_ACENTO), rng.choice(APELLIDOS + APELLIDOS_ACENTO)
    else:
        nombres = rng.choice(NOMBRES_H if sexo == "H" else NOMBRES_M)
        a1, a2 = rng.choice(APELLIDOS), rng.choice(APELLIDOS)
    if "post2000" in traits:
        fecha = dt.date(2000, 1, 1) + dt.timedelta(days=rng.randrange(365 * 8))
    else:
        fecha = dt.date(1940, 1, 1) + dt.timedelta(days=rng.randrange(365 * 60))
    entidad = "NE" if "ne" in traits else rng.choice(list(ENTIDADES))
    digits = "0123456789" if fecha.year < 2000 else "ABCDEFGHIJ"
    for h in digits:
        curp = build_curp(nombres, a1, a2, fecha, sexo, entidad, h)
        if curp not in used:
            used.add(curp)
            return {"curp": curp, "nombres": nombres, "apellido1": a1, "apellido2": a2, "fecha": fecha,
                    "sexo": sexo, "entidad": entidad, "traits": traits}
    return _person(rng, used, traits)


def _renapo_record(rng: random.Random, p: dict, status: str) -> dict:
    """RENAPO's CURPStruct of a person: an acta de nacimiento for the Mexican-born; a documento migratorio or a
    carta de naturalización for the foreign-born (NE), registered where they live."""
    base = {"CURP": p["curp"], "apellido1": p["apellido1"], "apellido2": p["apellido2"], "nombres": p["nombres"],
            "sexo": p["sexo"], "fechNac": p["fecha"].strftime("%d/%m/%Y"), "foja": "", "tomo": "", "CRIP": "",
            "NumRegExtranjeros": "", "FolioCarta": "", "cveEntidadNac": p["entidad"], "statusCurp": status}
    if p["entidad"] == "NE":
        reg = rng.choice(list(ENTIDADES.values()))
        doc = rng.choice((DOC_MIGRATORIO, DOC_NATURALIZACION))
        return {**base, "nacionalidad": rng.choice(NACIONALIDADES), "docProbatorio": doc, "anioReg": "",
                "libro": "", "numActa": "", "numEntidadReg": reg, "cveMunicipioReg": "", "cveEntidadEmisora": reg,
                "NumRegExtranjeros": f"{rng.randrange(10**9, 10**10)}" if doc == DOC_MIGRATORIO else "",
                "FolioCarta": f"CN{rng.randrange(10**6, 10**7)}" if doc == DOC_NATURALIZACION else ""}
    reg = ENTIDADES[p["entidad"]]
    return {**base, "nacionalidad": "MEX", "docProbatorio": DOC_ACTA,
            "anioReg": str(p["fecha"].year + rng.choice((0, 0, 0, 1, 2))), "libro": f"{rng.randrange(1, 20):04d}",
            "numActa": f"{rng.randrange(1, 99999):05d}", "numEntidadReg": reg,
            "cveMunicipioReg": f"{rng.randrange(1, 120):03d}", "cveEntidadEmisora": reg,
            "CRIP": f"{reg}{rng.randrange(10**11, 10**12)}" if rng.random() < 0.3 else ""}


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
    # Record 0 (the check record) stays plain; the others with Ñ/accents, born abroad or born 2000 on are drawn.
    special = mix.get("special", {})
    order = list(range(1, len(cats)))
    rng.shuffle(order)
    traits = [set() for _ in cats]
    for trait in ("accented", "ne", "post2000"):
        for i in order[:special.get(trait, 0)]:
            traits[i].add(trait)
        rng.shuffle(order)
    used: set[str] = set()
    people = [_person(rng, used, frozenset(t)) for t in traits]
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
    # Padrón rows whose entidad is not a state code (typed by hand, or a spreadsheet formula): the batch must
    # refuse the value, take the CURP's and keep it out of the KPI CSV.
    bad = list(mix.get("invalid_entidad", []))
    for i, value in zip((i for i in order if cats[i] != "MALFORMED"), bad, strict=False):
        rows[i]["entidad"] = value
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
    with tmp.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    tmp.replace(path)


def _write_json(path: Path, data) -> None:
    tmp = _tmp(path)
    tmp.write_text(json.dumps(data, ensure_ascii=False, indent=1), encoding="utf-8")
    tmp.replace(path)


def ensure(state: Path, mix_path: Path = DEFAULT_MIX) -> dict:
    """Writes the padrón files unless they already match the mix file; returns their paths and the check values."""
    d = _dir(state)
    digest = hashlib.sha256(Path(mix_path).read_bytes()).hexdigest()
    meta_path = d / "meta.json"
    meta = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.exists() else {}
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
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def load(state: Path) -> dict:
    d = _dir(state)
    return {"padron": _read_csv(d / "padron.csv"),
            "renapo": json.loads((d / "renapo.json").read_text(encoding="utf-8"))["curps"],
            "rfc": _read_csv(d / "rfc.csv"), "sat": json.loads((d / "sat.json").read_text(encoding="utf-8"))["rfcs"]}


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


def entidad_of(row: dict) -> str:
    """The entidad a padrón row counts under: its own when it is a state code (or NE), else the CURP's."""
    value = (row.get("entidad") or "").strip().upper()
    return value if value in ENTIDADES or value == "NE" else row["curp"][11:13]


def expected_counts(state: Path) -> dict:
    """Ground truth computed from the padrón files (not from the mix file), for comparing KPIs against."""
    data = load(state)
    cats, mismatch, mismatched, updated = Counter(), Counter(), 0, 0
    by_entidad, docs, invalid_entidad = {}, Counter(), 0
    for row in data["padron"]:
        cat, fields = classify(row, data["renapo"])
        cats[cat] += 1
        mismatch.update(fields)
        mismatched += bool(fields)
        updated += cat in ACTIVE and not fields
        value = (row["entidad"] or "").strip().upper()
        invalid_entidad += bool(value) and value not in ENTIDADES and value != "NE"
        if cat not in ("MALFORMED", "NOT_FOUND"):
            counts = by_entidad.setdefault(entidad_of(row), [0, 0])
            counts[0] += 1
            counts[1] += cat == "BD"
            docs[data["renapo"][row["curp"]]["docProbatorio"]] += 1
    valid = [r["curp"] for r in data["padron"] if stdcurp.is_valid(r["curp"])]
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
            # DESIGN §7: población actualizada = found, active statusCurp and consistent data.
            "updated": updated, "mortality_by_entidad": dict(sorted(by_entidad.items())),
            "doc_probatorio": dict(sorted(docs.items())), "invalid_entidad": invalid_entidad,
            "foreign_born": sum(c[11:13] == "NE" for c in valid),
            "born_2000_on": sum(c[16].isalpha() for c in valid),
            "accented": sum(any(not ch.isascii() for ch in r["nombres"] + r["apellido1"] + r["apellido2"])
                            for r in data["padron"]),
            "sat_opinion": dict(sorted(opinions.items())), "rfcs": len(data["rfc"])}


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
