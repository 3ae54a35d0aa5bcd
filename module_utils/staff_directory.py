"""Step 3.1 of the procedure: is the requester staff of the Secretaría? A small directory interface and a selector.

Pure code (stdlib + PyYAML): no Ansible import.

`open_directory(source)` picks a backend from the source: a `.yml`/`.yaml`/`.csv` path (the default, `file`
backend) or `<scheme>://...` for a backend registered in `BACKENDS`. Every backend implements one method,
`find(email) -> StaffMember | None`; the rule that decides (`validate`) lives in the base class, so it is the same
whatever the source.

A file lists one person per entry (YAML: a list under `staff:`, or a bare list; CSV: a header row)::

    staff:
      - name: Ana López Ruiz
        email: ana.lopez@agricultura.gob.mx
        unit: Dirección General de Padrones
        rank: Jefa de Departamento
        active: true            # false: causó baja

How an LDAP source plugs in (the Secretaría's directory; `ldap3` is the usual client, not a dependency here)::

    class LdapStaffDirectory(StaffDirectory):
        def __init__(self, source):            # ldaps://ldap.agricultura.gob.mx/ou=personal,dc=agricultura,...
            self.conn, self.base = connect(source), base_dn_of(source)   # bind with an AWX/vault credential
        def find(self, email):
            entry = search(self.conn, self.base, f"(mail={escape_filter_chars(email)})", ["cn", "mail", "ou",
                           "title", "employeeType"])
            return entry and StaffMember(entry.cn, entry.mail, entry.ou, entry.title,
                                         active=entry.employeeType != "baja")

    BACKENDS["ldap"] = BACKENDS["ldaps"] = LdapStaffDirectory

and the inventory's `procedure_staff_directory` becomes the `ldaps://...` URL; nothing else changes.
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

from ansible.module_utils.providers import fold

try:  # a module without PyYAML (ansible-core's own dependency) fails with missing_required_lib("PyYAML")
    import yaml
except ImportError:
    import traceback
    PYYAML_IMPORT_ERROR = traceback.format_exc()
else:
    PYYAML_IMPORT_ERROR = None

TRUE_WORDS = {"1", "true", "yes", "si", "sí", "activo", "activa", "y", "s"}


class DirectoryError(Exception):
    """The directory cannot be read or is not in the expected shape; the message names the source and defect."""


@dataclass(frozen=True)
class StaffMember:
    name: str
    email: str
    unit: str | None = None
    rank: str | None = None
    active: bool = True


@dataclass(frozen=True)
class Validation:
    is_staff: bool
    reason: str  # Spanish, fit for the oficio de respuesta when is_staff is False
    member: StaffMember | None = None


def _same_person(a: str, b: str) -> bool:
    """Names match when one holds every word of the other (a second surname may be omitted), two words at least."""
    wa, wb = set(fold(a).split()), set(fold(b).split())
    return len(wa & wb) >= min(2, len(wa), len(wb)) and (wa <= wb or wb <= wa)


class StaffDirectory:
    """The interface: a backend implements find(); validate() is the rule of step 3.1."""

    def find(self, email: str) -> StaffMember | None:
        raise NotImplementedError

    def find_name(self, name: str) -> StaffMember | None:
        """The one member whose name is this person's (see _same_person); None when none or several match."""
        raise NotImplementedError

    def validate_forwarder(self, name: str | None) -> Validation:
        """Step 3.1 for whoever "turnó" the request: the name must be one active member of the directory."""
        if not name:
            return Validation(False, "La solicitud no indica quién la turna (Director de Área o superior).")
        member = self.find_name(name)
        if member is None:
            return Validation(False, f"Quien turna la solicitud, «{name}», no figura (o no de forma única) en el "
                                     "directorio de personal de la Secretaría.")
        if not member.active:
            return Validation(False, f"Quien turna la solicitud, {member.name}, no es personal activo de la "
                                     "Secretaría.", member)
        return Validation(True, f"La solicitud la turna {member.name}"
                                + (f", {member.rank}" if member.rank else "") + ".", member)

    def validate(self, name: str | None, email: str | None) -> Validation:
        if not email:
            return Validation(False, "La solicitud no indica el correo institucional del solicitante.")
        member = self.find(email.strip().lower())
        if member is None:
            return Validation(False, f"El correo «{email}» no figura en el directorio de personal de la Secretaría.")
        if not member.active:
            return Validation(False, f"{member.name} ({email}) no es personal activo de la Secretaría.", member)
        if name and not _same_person(name, member.name):
            return Validation(False, f"El nombre «{name}» no corresponde al registrado para «{email}» en el "
                                     f"directorio de personal de la Secretaría.", member)
        return Validation(True, f"{member.name} es personal de la Secretaría"
                                + (f" ({member.unit})" if member.unit else "") + ".", member)


def _member(entry, where: str) -> StaffMember:
    if not isinstance(entry, dict) or not entry.get("email") or not entry.get("name"):
        raise DirectoryError(f"{where}: every entry needs at least 'name' and 'email'")
    active = entry.get("active", True)
    if isinstance(active, str):
        active = fold(active) in TRUE_WORDS
    return StaffMember(str(entry["name"]).strip(), str(entry["email"]).strip().lower(),
                       entry.get("unit") or None, entry.get("rank") or None, bool(active))


class FileStaffDirectory(StaffDirectory):
    """The default backend: a YAML or CSV file read once."""

    def __init__(self, source):
        path = Path(source)
        try:
            text = path.read_text(encoding="utf-8-sig")
        except OSError as e:
            raise DirectoryError(f"cannot read the staff directory {path}: {e.strerror or e}") from None
        if path.suffix.lower() == ".csv":
            rows = list(csv.DictReader(io.StringIO(text)))
        else:
            try:
                data = yaml.safe_load(text)
            except yaml.YAMLError as e:
                raise DirectoryError(f"staff directory {path} is not valid YAML: {e}") from None
            rows = data.get("staff") if isinstance(data, dict) else data
            if not isinstance(rows, list):
                raise DirectoryError(f"staff directory {path}: expected a list of people under 'staff:'")
        self.members = {}
        for n, row in enumerate(rows, start=1):
            member = _member(row, f"{path} entry {n}")
            self.members[member.email] = member

    def find(self, email):
        return self.members.get(email.strip().lower())

    def find_name(self, name):
        # Titles ("Lic.", "Ing.", "Mtra.") are not part of the name a directory keeps.
        bare = " ".join(w for w in name.split() if not w.endswith("."))
        found = [m for m in self.members.values() if _same_person(bare, m.name)]
        return found[0] if len(found) == 1 else None


BACKENDS = {"file": FileStaffDirectory}


def open_directory(source: str) -> StaffDirectory:
    """The directory a source names: a .yml/.yaml/.csv path, or scheme://... of a registered backend."""
    scheme = source.split("://", 1)[0].lower() if "://" in source else "file"
    backend = BACKENDS.get(scheme)
    if backend is None:
        raise DirectoryError(f"no staff directory backend for {scheme!r} (have: {', '.join(sorted(BACKENDS))}); "
                             "register one in staff_directory.BACKENDS")
    if scheme == "file" and Path(source).suffix.lower() not in (".yml", ".yaml", ".csv"):
        raise DirectoryError(f"staff directory {source}: use a .yml, .yaml or .csv file")
    return backend(source.split("://", 1)[1] if "://" in source else source)
