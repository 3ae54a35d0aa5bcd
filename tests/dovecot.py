"""A real, throw-away Dovecot IMAP server for the tests, and the fixtures that hand out mailboxes.

Debian's `dovecot-imapd` run by hand: `dovecot -F -c <conf>` with its own base_dir/state_dir under a fresh temporary
directory, IMAP only, on 127.0.0.1 at free ports: a plain listener (STARTTLS offered) and an implicit-TLS listener
whose certificate is issued for `imap.test` and 127.0.0.1 by a throw-away CA generated here with `cryptography`, so
the tests verify the server against that CA file. Users live in passwd-files (salted SHA-256 hashes); each test gets
its own user, hence its own empty Maildir. One server per pytest session (`dovecot_server`), stopped with SIGTERM at
the end, its processes waited for and its directory removed. A test module loads the fixtures with
`pytest_plugins = ["tests.dovecot"]`.
"""
import atexit
import base64
import datetime as dt
import hashlib
import imaplib
import itertools
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

SERVER_NAME = "imap.test"  # the name in the server certificate; clients connect to 127.0.0.1 and verify this name


def find_dovecot():
    """The dovecot master binary, or None."""
    for path in (shutil.which("dovecot"), "/usr/sbin/dovecot"):
        if path and os.access(path, os.X_OK):
            return path
    return None


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_ca(common_name):
    """A self-signed CA: (key, certificate)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return key, cert


def make_server_cert(ca_key, ca_cert, dns_names, ips):
    """A TLS server certificate for dns_names and ips, issued by the CA: (key, certificate)."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    san = [x509.DNSName(n) for n in dns_names] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns_names[0])]))
            .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(san), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return key, cert


def _pem_cert(cert):
    from cryptography.hazmat.primitives import serialization
    return cert.public_bytes(serialization.Encoding.PEM)


def _pem_key(key):
    from cryptography.hazmat.primitives import serialization
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _ssha256(password):
    """Dovecot's {SSHA256} scheme: base64(sha256(password + salt) + salt)."""
    salt = secrets.token_bytes(8)
    return "{SSHA256}" + base64.b64encode(hashlib.sha256(password.encode() + salt).digest() + salt).decode()


CONF = """\
# Throw-away test instance: nothing here is shared with the system's or the lab's Dovecot.
instance_name = {instance}
base_dir = {base}/run
state_dir = {base}/state
log_path = {base}/dovecot.log
info_log_path = {base}/dovecot.log
protocols = imap
listen = 127.0.0.1
default_internal_user = {internal_user}
default_login_user = {login_user}
first_valid_uid = 1
ssl = yes
ssl_cert = <{base}/tls/server.pem
ssl_key = <{base}/tls/server.key
ssl_min_protocol = TLSv1.2
disable_plaintext_auth = no
# The tests try wrong passwords on purpose: no failure delay, no per-IP penalty (anvil's socket closed to auth).
auth_failure_delay = 0
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
# xoauth2: Dovecot verifies the bearer token as the user's password, which is how the tests log in with a token.
auth_mechanisms = plain login xoauth2
# One file per user: a user added after start is read at once (a shared file is re-read at most once a second).
passdb {{
  driver = passwd-file
  args = scheme=SSHA256 {base}/users/%u
}}
userdb {{
  driver = passwd-file
  args = {base}/users/%u
}}
mail_location = maildir:~/Maildir
namespace inbox {{
  inbox = yes
  separator = /
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {imap_port}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {imaps_port}
    ssl = yes
  }}
}}
"""


class DovecotServer:
    """One Dovecot on 127.0.0.1; `start()` / `stop()`; `new_user()` makes an empty mailbox."""

    def __init__(self, binary=None):
        self.binary = binary or find_dovecot()
        self.base = Path(tempfile.mkdtemp(prefix="dovecot-test-"))
        os.chmod(self.base, 0o711)  # noqa: S103 - the auth process (internal user) reads the passwd-files inside
        self.imap_port = self.imaps_port = None
        self.server_name = SERVER_NAME
        self.proc = None
        self.ca_file = self.base / "tls" / "ca.pem"
        self.wrong_ca_file = self.base / "tls" / "other-ca.pem"  # a CA that did not issue the server certificate
        self._users = itertools.count(1)
        if os.geteuid() == 0:
            # Mail processes never run as root; the login and internal users are Debian's.
            self.internal_user, self.login_user, self.mail_user = "dovecot", "dovenull", "nobody"
        else:
            me = pwd.getpwuid(os.geteuid()).pw_name
            self.internal_user = self.login_user = self.mail_user = me

    def _write_tls(self):
        tls = self.base / "tls"
        tls.mkdir(mode=0o700)
        ca_key, ca_cert = make_ca("Mesa de Servicios test CA")
        key, cert = make_server_cert(ca_key, ca_cert, [SERVER_NAME, "localhost"], ["127.0.0.1"])
        self.ca_file.write_bytes(_pem_cert(ca_cert))
        self.wrong_ca_file.write_bytes(_pem_cert(make_ca("Some other CA")[1]))
        (tls / "server.pem").write_bytes(_pem_cert(cert) + _pem_cert(ca_cert))
        fd = os.open(tls / "server.key", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(_pem_key(key))
        os.chmod(tls, 0o755)  # noqa: S103 - public certificates; the key file itself stays 0600
        os.chmod(self.ca_file, 0o644)
        os.chmod(self.wrong_ca_file, 0o644)

    def start(self):
        self._write_tls()
        (self.base / "users").mkdir(mode=0o711)
        (self.base / "home").mkdir(mode=0o711)
        for attempt in range(3):  # a free port can be taken between the probe and the bind
            self.imap_port, self.imaps_port = _free_port(), _free_port()
            (self.base / "dovecot.conf").write_text(CONF.format(
                base=self.base, instance=f"test-{os.getpid()}-{self.base.name}", imap_port=self.imap_port,
                imaps_port=self.imaps_port, internal_user=self.internal_user, login_user=self.login_user))
            self.proc = subprocess.Popen([self.binary, "-F", "-c", str(self.base / "dovecot.conf")],
                                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                         cwd=self.base)
            if self._wait_listening(20):
                break
            out = self._stop_process()
            if attempt == 2:
                log = (self.base / "dovecot.log").read_text()[-2000:] if (self.base / "dovecot.log").exists() else ""
                self.stop()
                raise RuntimeError(f"dovecot did not start: {out}{log}")
        atexit.register(self.stop)  # also when the session dies before its finalizers
        return self

    def _wait_listening(self, seconds):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                for port in (self.imap_port, self.imaps_port):
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return True
            except OSError:
                time.sleep(0.05)
        return False

    def _children(self):
        """PIDs of the master's child processes (imap-login, auth, imap, ...)."""
        found = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == self.proc.pid:
                found.append(int(stat.parent.name))
        return found

    def _stop_process(self):
        if self.proc is None or self.proc.returncode is not None:
            return ""
        if self.proc.poll() is not None:  # it died on its own: say why
            return self.proc.communicate()[0].decode(errors="replace")
        children = self._children()
        self.proc.send_signal(signal.SIGTERM)
        try:
            out, _ = self.proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        deadline = time.monotonic() + 10  # the master waits for most children; make sure none is left
        for pid in children:
            while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
                time.sleep(0.02)
            if Path(f"/proc/{pid}").exists():
                os.kill(pid, signal.SIGKILL)
        return (out or b"").decode(errors="replace")

    def stop(self):
        self._stop_process()
        shutil.rmtree(self.base, ignore_errors=True)

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def new_user(self):
        """A fresh user with an empty Maildir: (name, password)."""
        name = f"mesa{next(self._users)}"
        password = secrets.token_urlsafe(12)
        home = self.base / "home" / name
        home.mkdir(mode=0o700)
        entry = pwd.getpwnam(self.mail_user)
        os.chown(home, entry.pw_uid, entry.pw_gid)
        passwd = self.base / "users" / name
        fd = os.open(passwd, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        with os.fdopen(fd, "w") as fh:
            fh.write(f"{name}:{_ssha256(password)}:{entry.pw_uid}:{entry.pw_gid}::{home}::\n")
        if os.geteuid() == 0:
            shutil.chown(passwd, "root", self.internal_user)  # the auth process runs as the internal user
        return name, password

    def client(self, user, password):
        """A logged-in plain imaplib connection on loopback, for the tests' own assertions and deliveries."""
        conn = imaplib.IMAP4("127.0.0.1", self.imap_port, timeout=10)
        conn.login(user, password)
        return conn


_server = None


@pytest.fixture(scope="session")
def dovecot_server():
    """The session's Dovecot, started on first use."""
    global _server
    binary = find_dovecot()
    if binary is None:
        pytest.skip("dovecot not found (Debian package `dovecot-imapd`, installed by scripts/bootstrap.sh)")
    pytest.importorskip("cryptography")
    if _server is None:
        _server = DovecotServer(binary).start()
    yield _server
    if _server is not None:
        _server.stop()
        _server = None


class Mailbox:
    """One test user's mailbox on the session's Dovecot: its credentials and helpers to fill and inspect it."""

    def __init__(self, server, user, password):
        self.server, self.user, self.password = server, user, password

    def client(self):
        return self.server.client(self.user, self.password)

    def deliver(self, raw, folder="INBOX", when=None, flags=None):
        """APPEND a message as a delivery would; `when` (aware datetime) becomes its INTERNALDATE. Returns its UID."""
        conn = self.client()
        try:
            date = imaplib.Time2Internaldate(when) if when else None
            typ, data = conn.append(folder, flags, date, raw)
            assert typ == "OK", data
            # Dovecot answers [APPENDUID <uidvalidity> <uid>] (UIDPLUS)
            return int(data[0].decode().split("APPENDUID", 1)[1].split()[1].rstrip("]"))
        finally:
            conn.logout()

    def folders(self):
        conn = self.client()
        try:
            typ, data = conn.list()
            return sorted(line.decode().rsplit(' "/" ', 1)[1].strip('"') for line in data if line)
        finally:
            conn.logout()

    def fetch_all(self, folder="INBOX"):
        """{uid: (raw bytes, flags)} of a folder, read without setting \\Seen."""
        conn = self.client()
        try:
            typ, _ = conn.select(_quote(folder), readonly=True)
            if typ != "OK":
                return {}
            typ, data = conn.uid("SEARCH", None, "ALL")
            out = {}
            for uid in data[0].split():
                typ, parts = conn.uid("FETCH", uid, "(FLAGS BODY.PEEK[])")
                head = b" ".join(p[0] if isinstance(p, tuple) else p for p in parts)
                raw = next(p[1] for p in parts if isinstance(p, tuple))
                flags = imaplib.ParseFlags(head)
                out[int(uid)] = (raw, tuple(f.decode() for f in flags))
            return out
        finally:
            conn.logout()


def _quote(name):
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


@pytest.fixture
def dovecot_mailbox(dovecot_server):
    """A fresh, empty mailbox (its own user) on the session's Dovecot."""
    user, password = dovecot_server.new_user()
    return Mailbox(dovecot_server, user, password)
