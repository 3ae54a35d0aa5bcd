"""staff_directory: YAML and CSV sources, the step 3.1 rule, and the backend selector."""
import pytest
from ansible.module_utils.staff_directory import (
    BACKENDS,
    DirectoryError,
    FileStaffDirectory,
    StaffDirectory,
    StaffMember,
    open_directory,
)

YAML = """\
staff:
  - {name: Ana López Ruiz, email: Ana.Lopez@agricultura.gob.mx, unit: DGPR, rank: Jefa de Departamento}
  - {name: Rosa Martínez Vega, email: rosa.martinez@agricultura.gob.mx, active: false}
"""
CSV = """\
name,email,unit,rank,active
Ana López Ruiz,ana.lopez@agricultura.gob.mx,DGPR,Jefa de Departamento,sí
Rosa Martínez Vega,rosa.martinez@agricultura.gob.mx,UAF,Analista,no
"""


@pytest.fixture(params=["yml", "csv"])
def directory(request, tmp_path):
    path = tmp_path / f"personal.{request.param}"
    path.write_text(YAML if request.param == "yml" else CSV, encoding="utf-8")
    return open_directory(str(path))


@pytest.mark.parametrize(("name", "email", "is_staff", "reason"), [
    ("Ana López Ruiz", "ana.lopez@agricultura.gob.mx", True, "es personal de la Secretaría (DGPR)"),
    ("ANA LOPEZ", "ANA.LOPEZ@agricultura.gob.mx", True, "es personal"),  # second surname and accents omitted
    ("Ana María López Ruiz", "ana.lopez@agricultura.gob.mx", True, "es personal"),
    ("Pedro Gálvez", "ana.lopez@agricultura.gob.mx", False, "no corresponde al registrado"),
    ("Pedro Gálvez Ortega", "pedro.galvez@agricultura.gob.mx", False, "no figura en el directorio"),
    ("Rosa Martínez Vega", "rosa.martinez@agricultura.gob.mx", False, "no es personal activo"),
    ("Ana López Ruiz", None, False, "no indica el correo"),
])
def test_validate(directory, name, email, is_staff, reason):
    verdict = directory.validate(name, email)
    assert verdict.is_staff is is_staff
    assert reason in verdict.reason


def test_find_is_case_insensitive_and_keeps_fields(directory):
    member = directory.find("ANA.LOPEZ@AGRICULTURA.GOB.MX")
    assert member.name == "Ana López Ruiz" and member.unit == "DGPR" and member.active is True


@pytest.mark.parametrize(("source", "content", "message"), [
    ("personal.txt", "x", "use a .yml, .yaml or .csv file"),
    ("ldap://ldap.example/ou=personal", None, "no staff directory backend for 'ldap'"),
    ("missing.yml", None, "cannot read the staff directory"),
    ("bad.yml", "staff: [", "is not valid YAML"),
    ("shape.yml", "staff: {a: 1}", "expected a list of people"),
    ("noemail.yml", "staff: [{name: A B}]", "needs at least 'name' and 'email'"),
])
def test_errors_name_the_source_and_defect(tmp_path, source, content, message):
    if content is not None:
        (tmp_path / source).write_text(content)
    with pytest.raises(DirectoryError, match=message):
        open_directory(source if "://" in source else str(tmp_path / source))


def test_a_registered_backend_plugs_in(monkeypatch):
    class Fixed(StaffDirectory):
        def __init__(self, source):
            self.source = source

        def find(self, email):
            return StaffMember("Luis Pérez Gómez", email) if email.endswith("@agricultura.gob.mx") else None

    monkeypatch.setitem(BACKENDS, "ldaps", Fixed)
    directory = open_directory("ldaps://ldap.agricultura.gob.mx/ou=personal")
    assert directory.source == "ldap.agricultura.gob.mx/ou=personal"
    assert directory.validate("Luis Pérez", "luis.perez@agricultura.gob.mx").is_staff
    assert not directory.validate("Luis Pérez", "luis@gmail.com").is_staff


def test_lab_directory_loads():
    from pathlib import Path
    lab = FileStaffDirectory(Path(__file__).resolve().parents[2] / "lab" / "data" / "staff.yml")
    assert lab.find("ana.lopez@agricultura.gob.mx").active and not lab.find("rosa.martinez@agricultura.gob.mx").active
