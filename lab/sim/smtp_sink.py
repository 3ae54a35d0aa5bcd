"""SMTP sink: a real SMTP server (aiosmtpd) that accepts any recipient and stores every message in a Maildir.

Messages land in STATE/mail/sink/new/ with two headers prepended (X-Lab-Mail-From, X-Lab-Rcpt-To: the SMTP
envelope, so tests see Bcc recipients too). STATE/mail/mesa is the Mesa de Servicios inbox Maildir (intake).
"""
from __future__ import annotations

import asyncio
import mailbox
import threading
from email.parser import BytesHeaderParser
from pathlib import Path

from aiosmtpd.smtp import SMTP

from sim import Stats


def maildirs(state: Path) -> dict:
    """Creates (if missing) and returns the lab's two Maildirs: the SMTP sink and the Mesa de Servicios inbox."""
    base = Path(state) / "mail"
    base.mkdir(parents=True, exist_ok=True)
    out = {"sink": base / "sink", "mesa": base / "mesa"}
    for path in out.values():
        mailbox.Maildir(path, create=True)
    return out


class MaildirHandler:
    def __init__(self, path: Path, stats: Stats, log) -> None:
        self.box, self.stats, self.log = mailbox.Maildir(path, create=True), stats, log

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # noqa: N802 - aiosmtpd hook
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd hook
        head = f"X-Lab-Mail-From: {envelope.mail_from}\nX-Lab-Rcpt-To: {', '.join(envelope.rcpt_tos)}\n"
        data = envelope.original_content or envelope.content
        key = self.box.add(head.encode() + data.replace(b"\r\n", b"\n"))
        self.stats.inc("smtp.message")
        subject = BytesHeaderParser().parsebytes(data).get("Subject", "")
        self.log(f"smtp {session.peer[0]} {envelope.mail_from} -> {','.join(envelope.rcpt_tos)} "
                 f"{subject!r} stored {key}")
        return "250 Message accepted for delivery"


class SmtpSink:
    """The sink on its own asyncio loop in a thread; port 0 binds an ephemeral port (see .port)."""

    def __init__(self, state: Path, address: tuple[str, int], stats: Stats, log=None) -> None:
        self.address, self.log = address, log or (lambda _line: None)
        self.handler = MaildirHandler(maildirs(state)["sink"], stats, self.log)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="smtp-sink", daemon=True)
        self.server = None

    def start(self) -> SmtpSink:
        self.thread.start()
        factory = lambda: SMTP(self.handler, enable_SMTPUTF8=True, hostname="smtp.lab", loop=self.loop)  # noqa: E731
        self.server = asyncio.run_coroutine_threadsafe(
            self.loop.create_server(factory, *self.address), self.loop).result(10)
        return self

    @property
    def port(self) -> int:
        return self.server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        async def close():
            self.server.close()
            await self.server.wait_closed()
        if self.server is not None:
            asyncio.run_coroutine_threadsafe(close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()
