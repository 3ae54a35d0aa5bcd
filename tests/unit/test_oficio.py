"""The oficio de respuesta through procedure.Intake on a real SQLite store, Maildirs and SMTP server: its own gap-free
number per unit and year, the letter's parts, the PDF attached (read back with poppler: pdftotext and pdftoppm), one
coherent message to a rejected requester, and the production rule that nothing goes out without a signer."""
import datetime as dt
import email
import email.policy
import email.utils
import os
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from ansible.module_utils import oficio
from ansible.module_utils.mail_intake import ensure_maildir
from ansible.module_utils.procedure import Intake, Mailer
from ansible.module_utils.staff_directory import open_directory
from test_notify import EphemeralController, MaildirSink

from tests.unit.stores import LAB as PROVIDERS
from tests.unit.stores import open_lab

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
from demo_procedure import OUTSIDER, STAFF, request_mail  # noqa: E402

MESA, ENLACE = "mesa.servicios@agricultura.gob.mx", "enlace.soas@agricultura.gob.mx"
AUTHSERV = "mx.agricultura.gob.mx"
CATALOG = {"Padrón de Productores": ["renapo", "sat"]}
LAB = yaml.safe_load((ROOT / "inventories" / "lab" / "group_vars" / "controller" / "oficio.yml").read_text())
PROD = yaml.safe_load((ROOT / "inventories" / "production" / "group_vars" / "controller" / "oficio.yml").read_text())
SIGNER = "Ing. Roberto Sánchez Ortiz"
YEAR = dt.date.today().year
POPPLER = shutil.which("pdftotext") and shutil.which("pdftoppm")


@pytest.fixture
def lab(tmp_path):
    sink = MaildirSink(tmp_path / "sink")
    sink.path = tmp_path / "sink"
    controller = EphemeralController(sink, hostname="127.0.0.1", port=0)
    controller.start()
    store = open_lab(str(tmp_path / "tickets.db"))
    inbox = ensure_maildir(tmp_path / "mesa")
    count = iter(range(100, 10_000))

    def intake(settings=LAB["procedure_oficio"], firmante=SIGNER, port=None):
        mailer = Mailer("127.0.0.1", port or controller.port, MESA, reply_to=MESA)
        run = Intake(store, open_directory(str(ROOT / "lab" / "data" / "staff.yml")), CATALOG, mailer,
                     mesa_address=MESA, enlace_address=ENLACE, deliveries_dir=str(tmp_path / "entregas"),
                     oficios_dir=str(tmp_path / "oficios"), firmante=firmante,
                     sender_auth={"trusted_authserv_ids": [AUTHSERV]}, providers=PROVIDERS)
        run.oficio = settings  # what mail_intake passes from procedure_oficio
        return run.run(inbox, tmp_path / "cuarentena")

    def deliver(person):
        msg = request_mail(person)
        msg["Message-ID"] = email.utils.make_msgid()
        domain = person["email"].rpartition("@")[2]
        header = f"Authentication-Results: {AUTHSERV}; dkim=pass header.d={domain}\r\n".encode()
        (inbox / "new" / f"{next(count)}.lab").write_bytes(header + msg.as_bytes())
        return msg["Message-ID"]

    def sent():
        return [email.message_from_bytes(sink.box.get_bytes(k), policy=email.policy.default)
                for k in sorted(sink.box.keys(),
                                key=lambda k: (sink.path / sink.box._lookup(k)).stat().st_mtime_ns)]

    yield type("Lab", (), dict(intake=staticmethod(intake), deliver=staticmethod(deliver), sent=staticmethod(sent),
                               store=store, tmp=tmp_path, inbox=inbox))
    store.close()
    controller.stop()


def outsider(n):
    return {**OUTSIDER, "name": f"{OUTSIDER['name']} {n}", "email": f"externo{n}@agricultura.gob.mx"}


def test_a_rejected_requester_gets_one_oficio_with_its_own_number_and_the_pdf(lab):
    lab.deliver(OUTSIDER)
    [outcome] = lab.intake()
    ticket = lab.store.get(outcome["ticket"])
    assert ticket["state"] == "closed" and outcome["oficio_numero"] == f"DGTIC/SOAS/0001/{YEAR}"
    assert outcome["oficio_numero"] != ticket["folio"] and ticket["folio"] not in outcome["oficio_numero"]
    # One coherent message: the oficio alone (no "folio asignado", no "cierre" meant for a completed renewal).
    [mail] = lab.sent()
    assert mail["Subject"] == f"Oficio de respuesta a la solicitud con folio {ticket['folio']}"
    assert mail["X-Envelope-To"] == f"{OUTSIDER['email']}, {MESA}"
    text = mail.get_body(("plain",)).get_content()
    for part in (f"Oficio núm.: DGTIC/SOAS/0001/{YEAR}",
                 f"Asunto: Respuesta a la solicitud con folio {ticket['folio']}",
                 "Ciudad de México, a ", OUTSIDER["name"], "P r e s e n t e", "Con fundamento en el artículo 8o.",
                 "no figura en el directorio", "Atentamente,", SIGNER,
                 "Subdirector de Operación y Administración de Sistemas",
                 "c.c.p. Mtra. Elena Vázquez Ruiz, Directora General de Tecnologías de la Información y "
                 "Comunicaciones", "Lic. Carmen Díaz Mora, Enlace Administrativo", "se cierra su ticket"):
        assert part in text, part
    assert "Titular de la" not in text and "folio asignado" not in text.lower()
    signature = text.split("Atentamente,")[1]
    assert signature.count("Subdirección de Operación y Administración de Sistemas") <= 1  # the cargo, once
    [pdf] = [p for p in mail.iter_attachments() if p.get_content_type() == "application/pdf"]
    assert pdf.get_filename() == f"oficio-DGTIC-SOAS-0001-{YEAR}.pdf"
    data = pdf.get_content()
    assert data.startswith(b"%PDF-") and data == Path(outcome["oficio_pdf"]).read_bytes()
    notes = " ".join(n["note"] for n in ticket["observations"])
    assert f"Oficio de respuesta núm. DGTIC/SOAS/0001/{YEAR}" in notes and "Aviso folio_issued" not in notes


def test_numbers_are_consecutive_per_unit_and_year_and_never_skip_on_a_failed_send(lab, tmp_path):
    lab.deliver(outsider(1))
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    with pytest.raises(OSError):  # SMTP down: the run stops, the number stays with its ticket
        lab.intake(port=closed)
    assert not lab.sent()
    [first] = lab.intake()  # the rerun sends the same oficio with the same number
    lab.deliver(outsider(2))
    lab.deliver(STAFF)
    lab.deliver(outsider(3))
    later = lab.intake()
    numbers = [first["oficio_numero"], *(o.get("oficio_numero") for o in later)]
    assert numbers == [f"DGTIC/SOAS/{n:04d}/{YEAR}" for n in (1, 2)] + [None, f"DGTIC/SOAS/0003/{YEAR}"]
    assert [m["Subject"].split()[0] for m in lab.sent()] == ["Oficio", "Oficio", "Folio", "Oficio"]
    assert lab.intake() == []  # nothing left: no number drawn twice
    # Another unit keeps its own series, from 1.
    assert lab.store.next_oficio_number("DGPR", YEAR) == 1 and lab.store.next_oficio_number("SOAS", YEAR) == 4


def test_production_refuses_to_send_an_oficio_nobody_signs(lab):
    lab.deliver(OUTSIDER)
    with pytest.raises(oficio.OficioError, match="no tiene firmante: configure procedure_firmante"):
        lab.intake(settings=PROD["procedure_oficio"], firmante="")
    [ticket] = lab.store.find()
    assert ticket["state"] == "rejected" and oficio.assigned(ticket) is None  # not numbered, not sent
    assert not lab.sent() and list((lab.inbox / "new").iterdir())  # the request waits in the inbox
    [outcome] = lab.intake(settings=PROD["procedure_oficio"], firmante=SIGNER)  # once the signer is configured
    assert outcome["oficio_numero"] == f"DGTIC/SOAS/0001/{YEAR}" and lab.store.get(ticket["id"])["state"] == "closed"


def test_settings_are_checked():
    with pytest.raises(oficio.OficioError, match="unknown oficio setting 'firma'"):
        oficio.settings({"firma": "x"})
    with pytest.raises(oficio.OficioError, match="each c.c.p. needs nombre and cargo"):
        oficio.settings({"ccp": [{"nombre": "Solo nombre"}]})
    with pytest.raises(oficio.OficioError, match="numero_formato"):
        oficio.settings({"numero_formato": "{folio}"})
    conf = oficio.settings(LAB["procedure_oficio"], "Lic. Otra Persona")
    assert conf["firmante"] == {"nombre": "Lic. Otra Persona",
                                "cargo": "Subdirector de Operación y Administración de Sistemas"}
    assert oficio.format_number(conf, 12, 2027) == "DGTIC/SOAS/0012/2027"


@pytest.mark.skipif(not POPPLER, reason="poppler-utils (pdftotext, pdftoppm) is not installed")
def test_the_pdf_reads_as_an_oficio_and_renders_as_a_page(lab, tmp_path):
    lab.deliver({**OUTSIDER, "name": "José Ángel Muñoz Núñez"})
    [outcome] = lab.intake()
    pdf = Path(outcome["oficio_pdf"])
    text = subprocess.run(["pdftotext", "-layout", str(pdf), "-"], capture_output=True, text=True,
                          check=True).stdout
    words = " ".join(text.split())
    for part in ("SECRETARÍA DE AGRICULTURA Y DESARROLLO RURAL", "Dirección General de Tecnologías de la Información",
                 f"Oficio núm. DGTIC/SOAS/0001/{YEAR}", "Asunto: Respuesta a la solicitud con folio",
                 "Ciudad de México, a", "José Ángel Muñoz Núñez", "Con fundamento en",
                 "Atentamente,", SIGNER, "Subdirector de Operación y Administración de Sistemas",
                 "c.c.p. Mtra. Elena Vázquez Ruiz, Directora General", "página 1 de 1",
                 "mesa.servicios@agricultura.gob.mx"):
        assert part in words, part
    assert "P r e s e n t e" in words or "Presente" in words
    info = subprocess.run(["pdfinfo", str(pdf)], capture_output=True, text=True, check=True).stdout
    assert re.search(r"Pages:\s+1\n", info) and "612 x 792 pts (letter)" in info
    subprocess.run(["pdftoppm", "-png", "-r", "60", "-singlefile", str(pdf), str(tmp_path / "oficio")], check=True)
    if os.environ.get("OFICIO_PNG"):
        shutil.copy(tmp_path / "oficio.png", os.environ["OFICIO_PNG"])
    png = (tmp_path / "oficio.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", png[16:24]) == (510, 660)  # 8.5 x 11 in at 60 dpi
    assert len(png) > 15_000  # a page with text, not a blank one
