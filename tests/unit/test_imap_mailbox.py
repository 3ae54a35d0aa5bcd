"""imap_mailbox against a real Dovecot (tests/dovecot.py): order, moves, quarantine, resumption, TLS, secrets."""
import base64
import email
import email.utils
import os
from datetime import datetime, timedelta, timezone

import pytest
from ansible.module_utils.imap_mailbox import (
    SOURCE_HEADER,
    ImapError,
    ImapMailbox,
    encode_folder,
    parse_internaldate,
    preview,
    process_imap,
    xoauth2_string,
)
from ansible.module_utils.mail_intake import QuarantineMessage

pytest_plugins = ["tests.dovecot"]

MX = timezone(timedelta(hours=-6))


def request_mail(n, sender="juan.perez@agricultura.gob.mx"):
    return (f"From: Juan Perez <{sender}>\r\nTo: mesa@agricultura.gob.mx\r\nSubject: Solicitud {n}\r\n"
            f"Message-ID: <req-{n}@agricultura.gob.mx>\r\nDate: Tue, 01 Dec 2026 10:00:0{n % 10} -0600\r\n\r\n"
            f"Solicitante: Juan Perez {n}\r\nCorreo: {sender}\r\nSistema: Padron de Productores\r\n").encode()


def junk_mail(n):
    return (f"From: spam@example.com\r\nSubject: oferta {n}\r\nMessage-ID: <junk-{n}@example.com>\r\n\r\n"
            "Compre ahora\r\n").encode()


def message_ids(folder_content):
    return [email.message_from_bytes(raw)["Message-ID"] for raw, _flags in folder_content.values()]


@pytest.fixture
def box(dovecot_mailbox):
    return dovecot_mailbox


@pytest.fixture
def connect(box, dovecot_server):
    """Opens ImapMailbox sessions on the test's mailbox (implicit TLS verified against the test CA)."""
    opened = []

    def _open(**kw):
        args = dict(host="127.0.0.1", port=dovecot_server.imaps_port, user=box.user, password=box.password,
                    ca_file=str(dovecot_server.ca_file), server_name=dovecot_server.server_name)
        if "oauth2_token" in kw:
            args.pop("password")
        args.update(kw)
        mailbox = ImapMailbox(**args)
        opened.append(mailbox)
        return mailbox

    yield _open
    for mailbox in opened:
        mailbox.close()


# --- reading ------------------------------------------------------------------------------------------------------

def test_messages_in_uid_order_with_internaldate(box, connect):
    times = [datetime(2025, 3, 1, 9, 30, tzinfo=MX), datetime(2025, 2, 1, 8, 0, tzinfo=MX),
             datetime(2025, 4, 1, 18, 45, tzinfo=MX)]
    uids = [box.deliver(request_mail(n), when=when) for n, when in enumerate(times)]
    mailbox = connect()
    got = list(mailbox.messages())
    assert [uid for uid, _raw, _date in got] == sorted(uids) == uids
    assert [raw for _uid, raw, _date in got] == [request_mail(n) for n in range(3)]
    assert [date for _uid, _raw, date in got] == times  # same instants, whatever offset the server reports
    assert all(date.tzinfo is not None for _uid, _raw, date in got)
    status = box.client().status("INBOX", "(UIDVALIDITY)")[1][0].decode()
    assert mailbox.uidvalidity == int(status.split("UIDVALIDITY")[1].strip(" )"))


def test_internaldate_becomes_received_at(box, connect):
    arrival = datetime(2025, 12, 19, 23, 0, tzinfo=MX)  # a Friday night in Mexico City
    box.deliver(request_mail(1), when=arrival)
    handled = []
    process_imap(connect(), handled.append)
    received = datetime.fromisoformat(handled[0].received_at)
    assert received.utcoffset() is not None and received == arrival


def test_parse_internaldate_keeps_offset():
    got = parse_internaldate(b'1 (UID 7 INTERNALDATE " 7-Jul-1996 02:44:25 -0700")')
    assert got == datetime(1996, 7, 7, 2, 44, 25, tzinfo=timezone(timedelta(hours=-7)))
    assert got.isoformat() == "1996-07-07T02:44:25-07:00"
    assert parse_internaldate(b"1 (UID 7)") is None


def test_deleted_messages_are_not_read(box, connect):
    box.deliver(request_mail(1))
    box.deliver(request_mail(2), flags=r"(\Deleted)")  # a move interrupted before its expunge: already copied
    assert [email.message_from_bytes(raw)["Subject"] for _u, raw, _d in connect().messages()] == ["Solicitud 1"]


# --- processing ---------------------------------------------------------------------------------------------------

def test_processed_messages_move_to_processed_folder(box, connect):
    for n in range(3):
        box.deliver(request_mail(n))
    handled = []
    mailbox = connect()
    result = process_imap(mailbox, lambda parsed: handled.append(parsed.message_id) or "ticket")
    assert handled == [f"<req-{n}@agricultura.gob.mx>" for n in range(3)]
    assert [(name, outcome) for name, _p, outcome in result.processed] == [(f"imap:{n}", "ticket") for n in (1, 2, 3)]
    assert box.fetch_all("INBOX") == {}
    assert message_ids(box.fetch_all("Procesados")) == handled
    assert "Procesados" in box.folders()
    # nothing was marked read by the intake: the Mesa still sees them as new in its client
    assert all("\\Seen" not in flags for _raw, flags in box.fetch_all("Procesados").values())


def test_quarantine_keeps_message_with_reason_and_source(box, connect):
    box.deliver(junk_mail(1))
    box.deliver(request_mail(2))
    mailbox = connect()
    result = process_imap(mailbox, lambda parsed: "ticket")
    assert [name for name, _r, _p in result.quarantined] == ["imap:1"]
    assert [name for name, _p, _o in result.processed] == ["imap:2"]
    (raw, _flags), = box.fetch_all("Cuarentena").values()
    msg = email.message_from_bytes(raw)
    reason = str(email.header.make_header(email.header.decode_header(msg["X-Quarantine-Reason"])))
    assert reason.startswith("no es solicitud")
    assert msg[SOURCE_HEADER] == f"{mailbox.uidvalidity}/1"
    assert raw.endswith(junk_mail(1))  # the original bytes, untouched, after the added headers
    assert box.fetch_all("INBOX") == {}


class Crash(BaseException):
    """A kill -9 stand-in: nothing after it runs."""


class CrashAfterAppend(ImapMailbox):
    def _remove(self, uid):
        raise Crash(f"killed after the quarantine copy of {uid}")


def test_quarantine_crash_between_append_and_delete_makes_no_duplicate(box, connect, dovecot_server):
    box.deliver(junk_mail(1))
    crashing = CrashAfterAppend("127.0.0.1", dovecot_server.imaps_port, box.user, password=box.password,
                                ca_file=str(dovecot_server.ca_file), server_name=dovecot_server.server_name)
    with pytest.raises(Crash):
        process_imap(crashing, lambda parsed: "ticket")
    crashing.close()
    assert len(box.fetch_all("INBOX")) == 1 and len(box.fetch_all("Cuarentena")) == 1  # the crash window
    result = process_imap(connect(), lambda parsed: "ticket")
    assert [name for name, _r, _p in result.quarantined] == ["imap:1"]
    assert box.fetch_all("INBOX") == {}
    assert len(box.fetch_all("Cuarentena")) == 1


def test_quarantine_source_match_is_exact(box, connect):
    """SEARCH HEADER matches substrings: the copy of UID 11 must not count as the copy of UID 1."""
    box.deliver(junk_mail(1))
    mailbox = connect()
    list(mailbox.messages())  # selects INBOX: its UIDVALIDITY
    conn = box.client()
    conn.create("Cuarentena")
    conn.logout()
    box.deliver(f"{SOURCE_HEADER}: {mailbox.uidvalidity}/11\r\n".encode() + junk_mail(11), folder="Cuarentena")
    assert not mailbox.quarantined(1)
    process_imap(mailbox, lambda parsed: "ticket")
    sources = sorted(email.message_from_bytes(raw)[SOURCE_HEADER] for raw, _f in box.fetch_all("Cuarentena").values())
    assert sources == [f"{mailbox.uidvalidity}/1", f"{mailbox.uidvalidity}/11"]
    assert mailbox.quarantined(1)


def test_seen_messages_are_skipped_and_filed(box, connect):
    box.deliver(request_mail(1))
    box.deliver(request_mail(2))
    box.deliver(request_mail(1))  # the same Message-ID again in this run
    handled = []
    result = process_imap(connect(), handled.append, seen={"<req-2@agricultura.gob.mx>"}.__contains__)
    assert [p.message_id for p in handled] == ["<req-1@agricultura.gob.mx>"]
    assert result.skipped == [("imap:2", "<req-2@agricultura.gob.mx>"), ("imap:3", "<req-1@agricultura.gob.mx>")]
    assert box.fetch_all("INBOX") == {}
    assert len(box.fetch_all("Procesados")) == 3


def test_handler_quarantine_message(box, connect):
    box.deliver(request_mail(1))
    calls = []

    def handler(parsed):
        calls.append(parsed.message_id)
        raise QuarantineMessage("el folio DGTIC-RENAPO-2025-000001 no corresponde a ningún ticket")

    result = process_imap(connect(), handler)
    assert calls == ["<req-1@agricultura.gob.mx>"]
    (name, reason, parsed), = result.quarantined
    assert name == "imap:1" and parsed.quarantine and parsed.reason == reason
    (raw, _flags), = box.fetch_all("Cuarentena").values()
    header = email.message_from_bytes(raw)["X-Quarantine-Reason"]
    assert str(email.header.make_header(email.header.decode_header(header))) == reason
    assert box.fetch_all("INBOX") == {} and box.fetch_all("Procesados") == {}


def test_handler_error_leaves_message_for_the_rerun(box, connect):
    for n in range(3):
        box.deliver(request_mail(n))

    def failing(parsed):
        if parsed.message_id == "<req-1@agricultura.gob.mx>":
            raise ConnectionError("ticket store down")  # an outage: the run stops, the message stays
        return "ticket"

    with pytest.raises(ConnectionError, match="ticket store down"):
        process_imap(connect(), failing)
    assert message_ids(box.fetch_all("INBOX")) == ["<req-1@agricultura.gob.mx>", "<req-2@agricultura.gob.mx>"]
    assert message_ids(box.fetch_all("Procesados")) == ["<req-0@agricultura.gob.mx>"]
    assert all("\\Seen" not in flags for _raw, flags in box.fetch_all("INBOX").values())
    result = process_imap(connect(), lambda parsed: "ticket")
    assert [name for name, _p, _o in result.processed] == ["imap:2", "imap:3"]
    assert box.fetch_all("INBOX") == {} and len(box.fetch_all("Procesados")) == 3


@pytest.mark.parametrize("drop", [{"MOVE"}, {"MOVE", "UIDPLUS"}], ids=["copy-uid-expunge", "copy-expunge"])
def test_move_without_move_capability(box, connect, drop):
    box.deliver(request_mail(1))
    box.deliver(request_mail(2))
    mailbox = connect()
    mailbox.capabilities = mailbox.capabilities - drop  # a server without RFC 6851 (and without UIDPLUS)
    process_imap(mailbox, lambda parsed: "ticket")
    assert box.fetch_all("INBOX") == {}
    assert message_ids(box.fetch_all("Procesados")) == ["<req-1@agricultura.gob.mx>", "<req-2@agricultura.gob.mx>"]


def test_non_ascii_folder_names(box, connect):
    assert encode_folder("Año & más") == '"A&APE-o &- m&AOE-s"'
    box.deliver(request_mail(1))
    process_imap(connect(processed_folder="Procesados-Año"), lambda parsed: "ticket")
    assert "Procesados-A&APE-o" in box.folders()


# --- check mode ---------------------------------------------------------------------------------------------------

def test_preview_changes_nothing(box, connect):
    box.deliver(request_mail(1))
    box.deliver(junk_mail(2))
    before_folders, before = box.folders(), box.fetch_all("INBOX")
    rows = preview(connect(), seen={"<req-1@agricultura.gob.mx>"}.__contains__)
    assert [(r["file"], r["kind"], r["outcome"]) for r in rows] == [
        ("imap:1", "request", "would_skip"), ("imap:2", "unknown", "would_quarantine")]
    assert all(datetime.fromisoformat(r["received_at"]).tzinfo for r in rows)
    rows = preview(connect())
    assert [r["outcome"] for r in rows] == ["would_process", "would_quarantine"]
    assert box.folders() == before_folders == ["INBOX"]  # not even the processed/quarantine folders
    after = box.fetch_all("INBOX")
    assert after == before
    assert all("\\Seen" not in flags for _raw, flags in after.values())


# --- connection, TLS and secrets ----------------------------------------------------------------------------------

def test_starttls_and_loopback_plain(box, connect, dovecot_server):
    box.deliver(request_mail(1))
    assert len(list(connect(port=dovecot_server.imap_port, tls="starttls").messages())) == 1
    assert len(list(connect(port=dovecot_server.imap_port, tls="none", ca_file=None).messages())) == 1


def test_tls_verification_fails_against_wrong_ca(connect, dovecot_server):
    with pytest.raises(ImapError, match="not trusted against .*other-ca.pem") as err:
        connect(ca_file=str(dovecot_server.wrong_ca_file))
    assert "certificate" in str(err.value)
    with pytest.raises(ImapError, match="not trusted"):
        connect(port=dovecot_server.imap_port, tls="starttls", ca_file=str(dovecot_server.wrong_ca_file))


def test_tls_hostname_is_checked(connect):
    with pytest.raises(ImapError, match="not trusted.*(mismatch|match)"):
        connect(server_name="mail.elsewhere.test")


def test_tls_none_refused_off_loopback():
    with pytest.raises(ImapError, match="loopback"):
        ImapMailbox("192.0.2.10", 143, "mesa", password="x", tls="none")
    with pytest.raises(ImapError, match="loopback"):
        ImapMailbox("imap.agricultura.gob.mx", 143, "mesa", password="x", tls="none")


def test_credentials_are_validated():
    with pytest.raises(ValueError, match="exactly one"):
        ImapMailbox("127.0.0.1", 1, "mesa", password="x", oauth2_token="y")
    with pytest.raises(ValueError, match="exactly one"):
        ImapMailbox("127.0.0.1", 1, "mesa")
    with pytest.raises(ValueError, match="tls must be"):
        ImapMailbox("127.0.0.1", 1, "mesa", password="x", tls="maybe")


@pytest.mark.parametrize("secret", ["Secreto-Mesa-2025!", "contraseña-ñandú"])
def test_password_never_in_errors_or_repr(connect, box, secret):
    with pytest.raises(ImapError) as err:
        connect(password=secret)
    assert "Authentication failed" in str(err.value)
    for text in (str(err.value), repr(err.value)):
        assert secret not in text and base64.b64encode(secret.encode()).decode() not in text
    mailbox = connect()
    assert box.password not in repr(mailbox) and box.password not in str(mailbox)


def test_token_never_in_errors(connect):
    token = "ya29.bad-bearer-token-0123456789"
    with pytest.raises(ImapError, match="XOAUTH2") as err:
        connect(oauth2_token=token)
    assert token not in str(err.value)
    assert base64.b64encode(xoauth2_string("x", token)).decode() not in str(err.value)


def test_xoauth2_string_format():
    assert xoauth2_string("mesa@agricultura.gob.mx", "tok123") == (
        b"user=mesa@agricultura.gob.mx\x01auth=Bearer tok123\x01\x01")
    # what Google's and Microsoft's documentation show base64-encoded on the wire
    assert base64.b64encode(xoauth2_string("someuser@example.com", "ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg")) \
        == (b"dXNlcj1zb21ldXNlckBleGFtcGxlLmNvbQFhdXRoPUJlYXJlciB5YTI5LnZGOWRmdDRxbVRjMk52YjNSbGNrQmhkSFJo"
            b"ZG1semRHRXVZMjl0Q2cBAQ==")


def test_xoauth2_login_against_dovecot(box, connect, dovecot_server):
    """Dovecot checks an XOAUTH2 bearer token as the user's password: the SASL exchange itself is real."""
    box.deliver(request_mail(1))
    mailbox = connect(oauth2_token=box.password)
    assert len(list(mailbox.messages())) == 1
    log = (dovecot_server.base / "dovecot.log").read_text()
    assert f"Login: user=<{box.user}>, method=XOAUTH2" in log


# --- release from quarantine --------------------------------------------------------------------------------------

def test_release_puts_the_message_back_as_it_arrived(box, connect):
    arrival = datetime(2025, 6, 2, 10, 15, tzinfo=MX)
    box.deliver(junk_mail(1), when=arrival)
    box.deliver(junk_mail(2))
    mailbox = connect()
    process_imap(mailbox, lambda parsed: "ticket")
    assert len(box.fetch_all("Cuarentena")) == 2
    released = mailbox.release(" <junk-1@example.com> ")
    assert released == [junk_mail(1)]
    assert message_ids(box.fetch_all("Cuarentena")) == ["<junk-2@example.com>"]
    (uid, raw, date), = connect().messages()
    assert raw == junk_mail(1) and date == arrival  # the bytes intake will hash, and the SLA clock's start
    assert mailbox.release("<junk-1@example.com>") == []  # nothing left to release


def test_release_crash_between_append_and_delete_makes_no_duplicate(box, connect, dovecot_server):
    box.deliver(junk_mail(1))
    process_imap(connect(), lambda parsed: "ticket")
    crashing = CrashAfterAppend("127.0.0.1", dovecot_server.imaps_port, box.user, password=box.password,
                                ca_file=str(dovecot_server.ca_file), server_name=dovecot_server.server_name)
    with pytest.raises(Crash):
        crashing.release("<junk-1@example.com>")
    crashing.close()
    assert len(box.fetch_all("INBOX")) == 1 and len(box.fetch_all("Cuarentena")) == 1
    assert connect().release("<junk-1@example.com>") == [junk_mail(1)]
    assert message_ids(box.fetch_all("INBOX")) == ["<junk-1@example.com>"]
    assert box.fetch_all("Cuarentena") == {}


def test_release_of_unknown_message_changes_nothing(box, connect):
    box.deliver(request_mail(1))
    assert connect().release("<nadie@example.com>") == []
    assert box.folders() == ["INBOX"]


# --- the fixture itself -------------------------------------------------------------------------------------------

def test_dovecot_fixture_stops_with_nothing_left(dovecot_server):
    from tests.dovecot import DovecotServer

    server = DovecotServer(dovecot_server.binary).start()
    user, password = server.new_user()
    server.client(user, password).logout()
    pids = [server.proc.pid, *server._children()]
    assert len(pids) > 1
    server.stop()
    assert not server.base.exists()
    assert [pid for pid in pids if os.path.exists(f"/proc/{pid}")] == []


# --- a real mailbox: automatic mail filed, oversize quarantined unread, one bad message never stops the run ----------
def test_automatic_mail_is_filed_oversize_quarantined_unread_and_errors_quarantined(box, connect):
    box.deliver(request_mail(1))
    box.deliver(b"Auto-Submitted: auto-replied\r\n" + request_mail(2))
    box.deliver(request_mail(3) + b"x" * 6000)
    box.deliver(request_mail(4))
    box.deliver(request_mail(5))
    handled, notices = [], []

    def handler(parsed):
        if parsed.message_id == "<req-4@agricultura.gob.mx>":
            raise KeyError("a defect of this one message")
        handled.append(parsed.message_id)
        return parsed.kind

    result = process_imap(connect(), handler, max_message_bytes=4096,
                          on_quarantine=lambda name, reason, parsed: notices.append(name))
    assert handled == ["<req-1@agricultura.gob.mx>", "<req-2@agricultura.gob.mx>", "<req-5@agricultura.gob.mx>"]
    assert [name for name, _p, _o in result.filed] == ["imap:2"]
    assert notices == ["imap:3", "imap:4"]
    assert message_ids(box.fetch_all("Automaticos")) == ["<req-2@agricultura.gob.mx>"]
    assert message_ids(box.fetch_all("Procesados")) == ["<req-1@agricultura.gob.mx>", "<req-5@agricultura.gob.mx>"]
    quarantined = sorted(box.fetch_all("Cuarentena").values())
    assert len(quarantined) == 2 and box.fetch_all("INBOX") == {}
    # the oversize one was moved as it arrived (never downloaded); the other carries its reason
    assert any(raw.startswith(b"From: Juan") and raw.rstrip().endswith(b"x" * 100) for raw, _f in quarantined)
    assert any(b"KeyError" in raw for raw, _f in quarantined)
    rows = preview(connect(), max_message_bytes=4096)
    assert rows == []
