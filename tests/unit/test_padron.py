"""The lab padrón generator: valid CURPs (python-stdnum as oracle), the mix of the data file, its ground truth."""
import csv
import datetime as dt
import json

import pytest
from sim import padron
from stdnum.mx import curp as stdcurp
from stdnum.mx import rfc as stdrfc


@pytest.fixture(scope="module")
def mix():
    return padron.load_mix()


@pytest.fixture(scope="module")
def state(tmp_path_factory):
    s = tmp_path_factory.mktemp("padron")
    padron.ensure(s)
    return s


@pytest.mark.parametrize("person, expected", [
    # RENAPO's own worked example.
    (("GLORIA", "HERNANDEZ", "GARCIA", dt.date(1956, 4, 27), "M", "VZ", "0"), "HEGG560427MVZRRL04"),
    # A compound name starting with MARIA uses the second name; particles are skipped.
    (("MARIA DE LOURDES", "HERNANDEZ", "LOPEZ", dt.date(1980, 1, 2), "M", "DF", "0"), "HELL800102MDFRPR09"),
    # No second surname → X; born 2000 or later → a letter as differentiator.
    (("JOSE", "PEREZ", "", dt.date(2001, 1, 2), "H", "DF", "A"), "PEXJ010102HDFRXSA3"),
    # An offensive first four letters (PEDO) get an X in second place.
    (("OSCAR", "PEDRAZA", "DIAZ", dt.date(1980, 1, 1), "H", "DF", "0"), "PXDO800101HDFDZS06"),
])
def test_build_curp(person, expected):
    assert padron.build_curp(*person) == expected
    assert stdcurp.is_valid(expected)


def test_generation_is_deterministic(mix):
    a, b = padron.generate(mix), padron.generate(mix)
    assert a["padron"] == b["padron"] and a["renapo"] == b["renapo"] and a["sat"] == b["sat"]


def test_every_curp_is_valid_except_the_malformed_ones(state, mix):
    rows = list(csv.DictReader((state / "padron" / "padron.csv").open()))
    assert list(rows[0]) == list(padron.COLUMNS)
    invalid = [r["curp"] for r in rows if not stdcurp.is_valid(r["curp"])]
    assert len(invalid) == mix["malformed"]
    assert all(stdcurp.is_valid(c[:17] + stdcurp.calc_check_digit(c)) for c in invalid)  # only the digit is wrong
    assert len({r["curp"] for r in rows}) == len(rows)
    assert len(rows) == sum(mix["status_curp"].values()) + mix["not_found"] + mix["malformed"]


def test_renapo_records_agree_with_their_curp(state):
    renapo = json.loads((state / "padron" / "renapo.json").read_text())["curps"]
    for curp, rec in renapo.items():
        assert stdcurp.get_birth_date(curp).strftime("%d/%m/%Y") == rec["fechNac"]
        assert {"M": "H", "F": "M"}[stdcurp.get_gender(curp)] == rec["sexo"]
        assert curp[11:13] == rec["cveEntidadNac"]


def test_expected_counts_equal_the_data_file(state, mix):
    got = padron.expected_counts(state)
    assert got["status_curp"] == dict(sorted(mix["status_curp"].items()))
    assert got["not_found"] == mix["not_found"]
    assert got["malformed"] == mix["malformed"]
    assert got["mismatch"] == dict(sorted(mix["mismatch"].items()))
    assert got["mismatched_records"] == sum(mix["mismatch"].values())
    assert got["deceased"] == mix["status_curp"]["BD"]
    assert got["sat_opinion"] == dict(sorted(mix["sat_opinion"].items()))
    assert got["active"] + got["inactive"] == got["found"] == sum(mix["status_curp"].values())
    assert got["inconsistent"] == got["mismatched_records"] + got["not_found"] + got["malformed"]


def test_expected_counts_are_computed_from_the_files(state, tmp_path):
    """Not an echo of the mix file: a padrón row edited by hand moves the ground truth."""
    copy = tmp_path / "padron"
    copy.mkdir()
    for f in (state / "padron").iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    rows = list(csv.DictReader((copy / "padron.csv").open()))
    check = padron.check_curp(state)
    rows[0]["sexo"] = "H" if rows[0]["sexo"] == "M" else "M"
    with (copy / "padron.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=padron.COLUMNS)
        w.writeheader()
        w.writerows(rows)
    before, after = padron.expected_counts(state), padron.expected_counts(tmp_path)
    assert rows[0]["curp"] == check
    assert after["mismatch"]["sexo"] == before["mismatch"]["sexo"] + 1


def test_check_curp_and_rfc(state):
    data = padron.load(state)
    curp, rfc = padron.check_curp(state), padron.check_rfc(state)
    row = next(r for r in data["padron"] if r["curp"] == curp)
    assert padron.classify(row, data["renapo"]) == ("AN", [])
    assert stdrfc.is_valid(rfc, validate_check_digits=True) and rfc[:10] == curp[:10]
    assert data["sat"][rfc] == "POSITIVA"


def test_examples_cover_every_category(state, mix):
    ex = padron.examples(state)
    assert set(mix["status_curp"]) | {"NOT_FOUND", "MALFORMED", "check"} <= set(ex)
    assert {f"mismatch_{f}" for f in mix["mismatch"]} <= set(ex)


def test_ensure_is_idempotent_and_follows_the_mix(state, tmp_path):
    csv_path = state / "padron" / "padron.csv"
    mtime = csv_path.stat().st_mtime_ns
    padron.ensure(state)
    assert csv_path.stat().st_mtime_ns == mtime
    small = tmp_path / "mix.yml"
    small.write_text("seed: 7\nstatus_curp: {AN: 5, BD: 2}\nnot_found: 1\nmalformed: 1\nmismatch: {sexo: 1}\n"
                     "sat_opinion: {POSITIVA: 3, NEGATIVA: 1}\n")
    padron.ensure(tmp_path, small)
    got = padron.expected_counts(tmp_path)
    assert (got["total"], got["status_curp"], got["mismatch"]) == (9, {"AN": 5, "BD": 2}, {"sexo": 1})


@pytest.mark.parametrize("person, expected", [
    # Ñ is written X and accents are dropped in the CURP (the names keep them).
    (("JOSÉ ÁNGEL", "MUÑOZ", "NÚÑEZ", dt.date(1980, 1, 1), "H", "DF", "0"), "MUNA800101HDFXXN05"),
    (("LUCÍA", "YÁÑEZ", "CASTAÑEDA", dt.date(1945, 8, 7), "M", "NE", "0"), "YACL450807MNEXSC08"),
])
def test_build_curp_with_enye_and_accents(person, expected):
    assert padron.build_curp(*person) == expected and stdcurp.is_valid(expected)


def test_the_padron_has_what_renapos_real_answers_have(state, mix):
    e = padron.expected_counts(state)
    special = mix["special"]
    assert e["accented"] >= special["accented"] * 0.9  # a few drew the mismatch "nombre" on top
    assert e["foreign_born"] == special["ne"] and e["born_2000_on"] == special["post2000"]
    assert set(e["doc_probatorio"]) == {"1", "3", "4"}
    assert e["invalid_entidad"] == len(mix["invalid_entidad"])
    data = padron.load(state)
    for curp, rec in data["renapo"].items():
        if curp[11:13] == "NE":
            assert rec["nacionalidad"] != "MEX" and rec["docProbatorio"] in ("3", "4")
            assert bool(rec["NumRegExtranjeros"]) == (rec["docProbatorio"] == "3")
            assert bool(rec["FolioCarta"]) == (rec["docProbatorio"] == "4")
        else:
            assert rec["nacionalidad"] == "MEX" and rec["docProbatorio"] == "1" and rec["numActa"]
        born = dt.datetime.strptime(rec["fechNac"], "%d/%m/%Y").date()
        assert curp[16].isalpha() == (born.year >= 2000)  # the differentiator says the century
    # The check record stays plain ASCII, active and consistent.
    check = data["padron"][0]
    assert check["curp"] == padron.check_curp(state) and all(c.isascii() for c in "".join(check.values()))
    # The CSV is UTF-8 with the names as RENAPO holds them.
    text = (state / "padron" / "padron.csv").read_bytes().decode("utf-8")
    assert "Ñ" in text and "É" in text or "Í" in text


def test_ground_truth_per_kpi_definition(state):
    e = padron.expected_counts(state)
    assert e["updated"] == e["active"] - e["mismatched_records"]  # mismatches only among active records
    assert sum(n for n, _ in e["mortality_by_entidad"].values()) == e["found"]
    assert sum(bd for _, bd in e["mortality_by_entidad"].values()) == e["deceased"]
    assert "NE" in e["mortality_by_entidad"]
