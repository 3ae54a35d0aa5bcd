"""The lab's real mail host: dnsmasq, OpenDKIM, Postfix (inbound MX + outbound signing MTA) and Dovecot.

Every process runs in the foreground as a child of labctl, on 127.0.N.200 (N = LAB_SLOT), from files under
STATE/mailhost; /etc stays untouched. Mail flows as it does between real organisations:

  renapo/sat/secretaria --submission :587--> outbound Postfix --milter--> OpenDKIM signs (d=<From: domain>)
        --SMTP--> inbound MX :25 (the Secretaría's) --milter--> OpenDKIM verifies, strips any planted
        Authentication-Results, adds its own (authserv-id mx.agricultura.gob.mx)
        --LMTP--> Dovecot: the Mesa de Servicios mailbox (IMAP, implicit TLS :1993 / STARTTLS :1143)
        (any other recipient is relayed to the lab's SMTP sink, STATE/mail/sink)
  a forger or any outside sender --SMTP--> inbound MX :25 directly (send(msg, via="external"))

dnsmasq serves the lab domains' MX, A, SPF and DKIM records, for OpenDKIM and for any verifier (dnspython).

    python lab/mailhost.py send --via renapo --to mesa.servicios@agricultura.gob.mx --subject S < body.txt
    python lab/mailhost.py settings

Python API (tests, demo): send(msg, via) -> Message-ID; wait_for(message_id) -> raw bytes as delivered;
imap_settings() -> dict; mail_publication(state, published) -> Message-ID (RENAPO mails its renewal).
"""
from __future__ import annotations

import argparse
import base64
import datetime as dt
import email.utils
import hashlib
import imaplib
import json
import os
import pwd
import secrets
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import time
from email.message import EmailMessage
from pathlib import Path

LAB = Path(__file__).resolve().parent
if str(LAB) not in sys.path:
    sys.path.insert(0, str(LAB))

import pki  # noqa: E402  (the lab's CA helpers: one implementation of certificate issuing)
from procs import alive, wait_gone  # noqa: E402  (lab/procs.py, shared with labctl)

ROOT = LAB.parent
# The same slot and state dir as lab/labctl.py (which imports this module): slot N lives on 127.0.N.x.
SLOT = int(os.environ.get("LAB_SLOT", "0"))
STATE = Path(os.environ.get("LAB_STATE", ROOT / (".lab" if SLOT == 0 else f".lab-{SLOT}")))

IP = f"127.0.{SLOT}.200"
DNS_PORT = 53
MX_PORT = 25
SUBMISSION_PORT = 587
MILTER_PORT = 8891
IMAP_PORT = 1143        # plain IMAP with STARTTLS (plain login allowed: loopback only)
IMAPS_PORT = 1993       # implicit TLS
SELECTOR = "lab"
AUTHSERV_ID = "mx.agricultura.gob.mx"
MESA_USER = "mesa.servicios"
MESA_ADDRESS = "mesa.servicios@agricultura.gob.mx"
RENAPO_SENDER = "Dirección de Servicios de Consulta RENAPO <servicios.consulta@renapo.gob.mx>"

# Who sends through the outbound signing MTA, and the domain OpenDKIM signs for each.
# "ine": a third provider's domain, for the test that defines a provider in inventory only (test_third_provider.py).
SIGNING_DOMAINS = {"renapo": "renapo.gob.mx", "sat": "sat.gob.mx", "secretaria": "agricultura.gob.mx", "ine": "ine.mx"}
# The look-alike domain has DNS (MX, A, SPF) but no DKIM key: its mail arrives unsigned.
FORGER_DOMAIN = "renapo-gob.mx"
DOMAINS = {**SIGNING_DOMAINS, "forger": FORGER_DOMAIN}

# The mail host's processes, each a child of labctl: DNS, the DKIM milter, Dovecot, the inbound MX, the outbound MTA.
COMPONENTS = ("dns", "dkim", "imap", "mx", "out")


class MailHostError(RuntimeError):
    pass


def _dir(state: Path | None = None) -> Path:
    return Path(state or STATE) / "mailhost"


def _pidfile(state: Path, name: str) -> Path:
    return Path(state) / "pids" / f"mail-{name}.pid"


def _write(path: Path, text: str | bytes, mode: int = 0o644) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(text.encode() if isinstance(text, str) else text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)
    return path


def _write_config(path: Path, text: str) -> None:
    """A config file, rewritten only when its content changes; dated 1 min back when written, because Postfix
    waits (up to ~2 s) for a main.cf modified in the last second or two to "settle" before it starts."""
    if path.exists() and path.read_text() == text:
        return
    _write(path, text)
    past = time.time() - 60
    os.utime(path, (past, past))


def _port_open(port: int, host: str = IP, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _udp_dns_ready() -> bool:
    """dnsmasq answers a query for the Mesa's MX (a bare UDP probe: no dnspython needed to start the lab)."""
    q = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"
    q += b"".join(bytes([len(p)]) + p.encode() for p in "agricultura.gob.mx".split(".")) + b"\x00\x00\x0f\x00\x01"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.2)
        try:
            s.sendto(q, (IP, DNS_PORT))
            return s.recv(512)[:2] == b"\x12\x34"
        except OSError:
            return False


# ---------------------------------------------------------------- keys and certificates

def dkim_key_path(domain: str, state: Path | None = None) -> Path:
    """The private DKIM key of a signing domain (PEM, 0600): tests sign with it as dkimpy would."""
    return _dir(state) / "dkim" / "keys" / f"{domain}.private"


def _dkim_keys(state: Path) -> dict[str, str]:
    """RSA-2048 DKIM key per signing domain, generated once; returns domain -> the p= value (base64 DER SPKI)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    out = {}
    for domain in SIGNING_DOMAINS.values():
        path = dkim_key_path(domain, state)
        if not path.exists():
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            _write(path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                           serialization.NoEncryption()), 0o600)
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        der = key.public_key().public_bytes(serialization.Encoding.DER,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
        out[domain] = base64.b64encode(der).decode()
    return out


def _tls(state: Path) -> dict:
    """A lab mail CA and the IMAP server's certificate (names of the Mesa's host and the slot's address)."""
    import ipaddress

    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID

    d = Path(state) / "pki" / "mail"
    paths = {"ca": d / "ca.pem", "cert": d / "server.pem", "key": d / "server.key"}
    with pki._lock(state):
        if not pki._usable(d / "ca.pem", d / "ca.key"):
            pki._make_ca(d, "Secretaria Lab Mail CA", "Secretaria de Agricultura (lab)")
            paths["cert"].unlink(missing_ok=True)
        if not pki._usable(paths["cert"], paths["key"]):
            ca_cert, ca_key = pki._load(d / "ca.pem"), pki._load_key(d / "ca.key")
            key = pki._new_key()
            san = [x509.DNSName(AUTHSERV_ID), x509.DNSName("imap.agricultura.gob.mx"),
                   x509.IPAddress(ipaddress.ip_address(IP))]
            cert = pki._cert(pki._name(AUTHSERV_ID, "Secretaria de Agricultura (lab)"), key, ca_cert.subject,
                             ca_key, pki.LEAF_DAYS, ca=False, san=san, eku=[ExtendedKeyUsageOID.SERVER_AUTH])
            pki._write_key(paths["key"], key)
            pki._write(paths["cert"], pki._pem(cert, ca_cert))
    return paths


def password_file(state: Path | None = None) -> Path:
    return _dir(state) / "mesa.password"


def _mesa_password(state: Path) -> str:
    path = password_file(state)
    if not path.exists():
        _write(path, secrets.token_urlsafe(18) + "\n", 0o600)
    return path.read_text().strip()


def _ssha512(password: str) -> str:
    """Dovecot's {SSHA512}: the passwd-file holds a salted hash, never the password."""
    salt = secrets.token_bytes(16)
    return "{SSHA512}" + base64.b64encode(hashlib.sha512(password.encode() + salt).digest() + salt).decode()


# ---------------------------------------------------------------- configuration

def _txt(name: str, *strings: str) -> str:
    """A dnsmasq txt-record; DNS character-strings hold at most 255 bytes each."""
    parts = []
    for s in strings:
        parts += [s[i:i + 255] for i in range(0, len(s), 255)]
    return f"txt-record={name}," + ",".join(f'"{p}"' for p in parts)


def _dnsmasq_conf(keys: dict[str, str]) -> str:
    lines = ["# The lab domains' DNS (generated by lab/mailhost.py).", f"listen-address={IP}", f"port={DNS_PORT}",
             "bind-interfaces", "no-resolv", "no-hosts", "no-negcache", "user=nobody", "group=nogroup",
             "log-facility=-"]
    for domain in DOMAINS.values():
        mx = f"mx.{domain}"
        lines += [f"local=/{domain}/", f"host-record={domain},{IP}", f"host-record={mx},{IP}",
                  f"mx-host={domain},{mx},10", _txt(domain, f"v=spf1 ip4:{IP} -all")]
    lines.append(f"host-record=imap.agricultura.gob.mx,{IP}")
    for domain, p in keys.items():
        lines.append(_txt(f"{SELECTOR}._domainkey.{domain}", "v=DKIM1; k=rsa; ", f"p={p}"))
    return "\n".join(lines) + "\n"


def _opendkim_conf(d: Path) -> str:
    return f"""\
# OpenDKIM for the lab (generated by lab/mailhost.py): signs for the lab's signing domains when the outbound
# submission service hands it mail (MTA ORIGINATING); verifies everything else and says so in Authentication-Results.
Mode                sv
Socket              inet:{MILTER_PORT}@{IP}
MTA                 ORIGINATING
# No client is trusted by its address (the default would sign whatever 127.0.0.1 sends, a forger included).
InternalHosts       {d}/internalhosts
KeyTable            file:{d}/keytable
SigningTable        refile:{d}/signingtable
Canonicalization    relaxed/relaxed
OversignHeaders     From
AuthservID          {AUTHSERV_ID}
AlwaysAddARHeader   yes
# Authentication-Results planted by a sender (any authserv-id, any method) are removed before delivery.
RemoveARAll         yes
RemoveARFrom        refile:{d}/remarfrom
Nameservers         {IP}
RequireSafeKeys     no
Background          no
Syslog              no
LogWhy              yes
UMask               002
"""


def _dkim_tables(state: Path, d: Path) -> None:
    _write(d / "internalhosts", "# nobody: sign only what the submission service marks ORIGINATING\n192.0.2.254\n")
    _write(d / "remarfrom", "*\n")
    _write(d / "keytable", "".join(f"{SELECTOR}._domainkey.{dom} {dom}:{SELECTOR}:{dkim_key_path(dom, state)}\n"
                                   for dom in SIGNING_DOMAINS.values()))
    _write(d / "signingtable", "".join(f"*@{dom} {SELECTOR}._domainkey.{dom}\n" for dom in SIGNING_DOMAINS.values()))


MASTER_CF = """\
# Postfix master.cf for the lab's {role} instance (generated by lab/mailhost.py).
{listen} inet  n       -       n       -       -       smtpd{smtpd_opts}
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


def _postfix_main(role: str, d: Path, state: Path, sink: tuple[str, int]) -> str:
    common = f"""\
# Postfix main.cf for the lab's {role} instance (generated by lab/mailhost.py); /etc/postfix is not used.
compatibility_level = 3.6
config_directory = {d}
queue_directory = {d}/queue
data_directory = {d}/data
maillog_file = {state}/logs/mail-{role}.log
maillog_file_prefixes = {state}/logs
# A loopback address other than 127.0.0.1 is refused here; master.cf names the address of each service.
inet_interfaces = all
inet_protocols = ipv4
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
local_transport = error:no local delivery in the lab
biff = no
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
smtpd_peername_lookup = no
smtp_dns_support_level = disabled
milter_protocol = 6
# A message OpenDKIM did not see must not be delivered as if it had been checked.
milter_default_action = tempfail
queue_run_delay = 5s
minimal_backoff_time = 5s
maximal_backoff_time = 30s
"""
    if role == "mx":
        return common + f"""\
myhostname = {AUTHSERV_ID}
smtpd_banner = $myhostname ESMTP
smtpd_milters = inet:{IP}:{MILTER_PORT}
# The Mesa's mailbox is Dovecot's (LMTP); every other recipient goes to the lab's SMTP sink.
transport_maps = texthash:{d}/transport
relayhost = [{sink[0]}]:{sink[1]}
"""
    return common + f"""\
myhostname = mta-out.lab
smtpd_banner = $myhostname ESMTP
# Everything is relayed to the Secretaría's MX (Postfix routes by /etc/resolv.conf only, so not via the lab DNS).
relayhost = [{IP}]:{MX_PORT}
"""


DOVECOT_CONF = """\
# Dovecot for the lab (generated by lab/mailhost.py): the Mesa de Servicios mailbox over IMAP, LMTP for Postfix.
instance_name = lab-dovecot-{slot}
base_dir = {d}/run
state_dir = {d}/lib
protocols = imap lmtp
listen = {ip}
log_path = {logs}/mail-imap.log
hostname = imap.agricultura.gob.mx
ssl = yes
ssl_cert = <{cert}
ssl_key = <{key}
ssl_min_protocol = TLSv1.2
# Plain login is allowed on loopback so simple clients work; the TLS port is the one to use.
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_username_format = %Ln
first_valid_uid = {uid}
last_valid_uid = {uid}
first_valid_gid = {gid}
mail_location = maildir:~/Maildir
mail_privileged_group =
passdb {{
  driver = passwd-file
  args = scheme=SSHA512 {d}/users
}}
userdb {{
  driver = passwd-file
  args = {d}/users
}}
service imap-login {{
  inet_listener imap {{
    address = {ip}
    port = {imap_port}
  }}
  inet_listener imaps {{
    address = {ip}
    port = {imaps_port}
    ssl = yes
  }}
}}
service lmtp {{
  unix_listener lmtp {{
    mode = 0666
  }}
}}
protocol lmtp {{
  postmaster_address = postmaster@agricultura.gob.mx
}}
namespace inbox {{
  inbox = yes
  separator = /
  mailbox Procesados {{
    auto = create
  }}
  mailbox Cuarentena {{
    auto = create
  }}
}}
"""


def _configure(state: Path, sink: tuple[str, int]) -> dict:
    """Writes every config file (each start; they derive from the slot) and creates keys, users and dirs once."""
    d = _dir(state)
    (Path(state) / "logs").mkdir(parents=True, exist_ok=True)
    (Path(state) / "pids").mkdir(parents=True, exist_ok=True)
    keys = _dkim_keys(state)
    _write(d / "dns" / "dnsmasq.conf", _dnsmasq_conf(keys))
    _dkim_tables(state, d / "dkim")
    _write(d / "dkim" / "opendkim.conf", _opendkim_conf(d / "dkim"))
    for role in ("mx", "out"):
        pd = d / f"postfix-{role}"
        listen = f"{IP}:{MX_PORT if role == 'mx' else SUBMISSION_PORT}"
        opts = ("" if role == "mx" else
                f"\n  -o smtpd_milters=inet:{IP}:{MILTER_PORT}\n  -o milter_macro_daemon_name=ORIGINATING")
        _write_config(pd / "master.cf", MASTER_CF.format(role=role, listen=listen, smtpd_opts=opts))
        _write_config(pd / "main.cf", _postfix_main(role, pd, state, sink))
        (pd / "queue").mkdir(exist_ok=True)
        if role == "mx":
            _write(pd / "transport", f"{MESA_ADDRESS} lmtp:unix:{d}/dovecot/run/lmtp\n")
    tls = _tls(state)
    mail = pwd.getpwnam("mail")
    dv = d / "dovecot"
    home = d / "mailboxes" / MESA_USER
    if not home.exists():
        home.mkdir(parents=True)
        os.chown(home, mail.pw_uid, mail.pw_gid)
        os.chmod(home, 0o700)
    users = dv / "users"
    if not users.exists():
        line = f"{MESA_USER}:{_ssha512(_mesa_password(state))}:{mail.pw_uid}:{mail.pw_gid}::{home}::\n"
        _write(users, line, 0o640)
        os.chown(users, 0, pwd.getpwnam("dovecot").pw_gid)
    for sub in ("run", "lib"):
        (dv / sub).mkdir(parents=True, exist_ok=True)
    _write(dv / "dovecot.conf", DOVECOT_CONF.format(
        slot=SLOT, d=dv, ip=IP, logs=Path(state) / "logs", cert=tls["cert"], key=tls["key"], uid=mail.pw_uid,
        gid=mail.pw_gid, imap_port=IMAP_PORT, imaps_port=IMAPS_PORT))
    return {"dir": d, "tls": tls}


# ---------------------------------------------------------------- processes

def _postfix(state: Path, role: str, verb: str) -> subprocess.CompletedProcess:
    """`postfix -c DIR verb`; Postfix prints its errors only to a terminal, hence `script`."""
    d = _dir(state) / f"postfix-{role}"
    return subprocess.run(["script", "-qec", f"/usr/sbin/postfix -c {d} {verb}", "/dev/null"],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)


def _master_pid(state: Path, role: str) -> int | None:
    """The instance's running master (its pid file, checked: a live master works in its own queue directory)."""
    queue = _dir(state) / f"postfix-{role}" / "queue"
    try:
        pid = int((queue / "pid" / "master.pid").read_text().split()[0])
        cwd = os.readlink(f"/proc/{pid}/cwd")
    except (OSError, ValueError, IndexError):
        return None
    return pid if alive(pid) and cwd == str(queue) else None


def _commands(state: Path) -> dict[str, list[str]]:
    d = _dir(state)
    return {
        "dns": ["/usr/sbin/dnsmasq", "-k", f"--conf-file={d}/dns/dnsmasq.conf", "--pid-file="],
        "dkim": ["/usr/sbin/opendkim", "-f", "-x", f"{d}/dkim/opendkim.conf"],
        "imap": ["/usr/sbin/dovecot", "-F", "-c", f"{d}/dovecot/dovecot.conf"],
        "mx": ["/usr/sbin/postfix", "-c", f"{d}/postfix-mx", "start-fg"],
        "out": ["/usr/sbin/postfix", "-c", f"{d}/postfix-out", "start-fg"],
    }


def _ready(name: str) -> bool:
    return {"dns": _udp_dns_ready, "dkim": lambda: _port_open(MILTER_PORT),
            "imap": lambda: _port_open(IMAPS_PORT) and _port_open(IMAP_PORT),
            "mx": lambda: _port_open(MX_PORT), "out": lambda: _port_open(SUBMISSION_PORT)}[name]()


def _read_pid(state: Path, name: str) -> int | None:
    """The component's recorded pid if it still runs this lab's config (a recycled pid is not ours)."""
    if name in ("mx", "out"):
        return _master_pid(state, name)
    try:
        pid = int(_pidfile(state, name).read_text())
    except (OSError, ValueError):
        return None
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return pid if alive(pid) and str(_dir(state)).encode() in cmd else None


def running(state: Path | None = None) -> dict[str, bool]:
    state = Path(state or STATE)
    return {name: bool(_read_pid(state, name)) and _ready(name) for name in COMPONENTS}


def start(state: Path | None = None, sink: tuple[str, int] = ("127.0.0.1", 2525)) -> bool:
    """Starts the mail host unless it all runs (then nothing is touched); returns True if it was (re)started."""
    state = Path(state or STATE)
    missing = [b for b in ("/usr/sbin/dnsmasq", "/usr/sbin/opendkim", "/usr/sbin/dovecot", "/usr/sbin/postfix")
               if not os.path.exists(b)]
    if missing:
        raise MailHostError(f"missing {', '.join(missing)}: run `make bootstrap` (installs postfix opendkim "
                            "dovecot-imapd dovecot-lmtpd dnsmasq-base)")
    # Postfix and Dovecot drop to their own users: every directory above the state dir must let others through
    # (a checkout under a `mktemp -d` directory, mode 0700, fails later with "master.lock: Permission denied").
    closed = [p for p in (state.resolve(), *state.resolve().parents) if p.exists() and not p.stat().st_mode & 0o001]
    if closed:
        raise MailHostError(f"{closed[-1]} (mode {closed[-1].stat().st_mode & 0o777:o}) does not let other users "
                            f"through: Postfix and Dovecot cannot reach {state}; chmod o+x {closed[-1]} or put the "
                            "project elsewhere")
    if all(running(state).values()):
        return False
    stop(state)
    _configure(state, sink)
    for role in ("mx", "out"):
        if (_dir(state) / f"postfix-{role}" / "queue" / "public").is_dir():
            continue  # the queue exists; start-fg checks the configuration itself
        check = _postfix(state, role, "check")
        if check.returncode != 0:
            raise MailHostError(f"postfix check ({role}) failed: {check.stdout.strip()[-800:]}")
    procs = {}
    for name in COMPONENTS:
        if name in ("mx", "out"):
            # The queue was checked when it was created: skip postfix-script's slow integrity scan (~1 s).
            (_dir(state) / f"postfix-{name}" / "queue" / "quick-start").touch()
        log = open(Path(state) / "logs" / f"mail-{name}.out", "ab")  # noqa: SIM115 - handed to the child
        procs[name] = subprocess.Popen(_commands(state)[name], stdin=subprocess.DEVNULL, stdout=log,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        _write(_pidfile(state, name), str(procs[name].pid))
    # All start side by side; no mail flows before every one is ready (labctl up returns only then).
    deadline = time.monotonic() + 15
    waiting = list(COMPONENTS)
    while waiting:
        name = waiting[0]
        if _ready(name) and (name not in ("mx", "out") or _master_pid(state, name)):
            waiting.pop(0)
            continue
        if procs[name].poll() is not None or time.monotonic() > deadline:
            stop(state)
            raise MailHostError(f"mail host component {name} did not start (exit {procs[name].poll()}); see "
                                f"{state}/logs/mail-{name}.out and mail-{name}.log")
        time.sleep(0.02)
    return True


def stop(state: Path | None = None) -> list[str]:
    """Stops every component; nothing is left: no process, no listening socket. Returns what was running."""
    state = Path(state or STATE)
    pids, stoppers = {}, []
    # All at once: Dovecot alone takes ~1.2 s to exit, `postfix stop` up to 1 s.
    for role in ("out", "mx"):
        pid = _master_pid(state, role)
        if pid:
            pids[role] = pid
            d = _dir(state) / f"postfix-{role}"
            stoppers.append(subprocess.Popen(["script", "-qec", f"/usr/sbin/postfix -c {d} stop", "/dev/null"],
                                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                             stderr=subprocess.DEVNULL))
    # SIGKILL for OpenDKIM: it takes ~5 s to exit on SIGTERM and holds its port meanwhile.
    for name, sig in (("imap", signal.SIGTERM), ("dkim", signal.SIGKILL), ("dns", signal.SIGTERM)):
        pid = _read_pid(state, name)
        if pid:
            pids[name] = pid
            os.kill(pid, sig)
    for pid in pids.values():
        if not wait_gone(pid, 6):
            os.kill(pid, signal.SIGKILL)
            wait_gone(pid, 2)
    for proc in stoppers:
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for name in COMPONENTS:
        _reap(state, name)
    return list(pids)


def _reap(state: Path, name: str) -> None:
    """The recorded child (postfix start-fg's own process, already gone) is reaped so no zombie stays."""
    try:
        pid = int(_pidfile(state, name).read_text())
    except (OSError, ValueError):
        pid = None
    if pid:
        alive(pid)
    _pidfile(state, name).unlink(missing_ok=True)


def status(state: Path | None = None) -> list[dict]:
    """One row per component, as labctl status shows them."""
    state = Path(state or STATE)
    where = {"dns": f"dns {IP}:{DNS_PORT}", "dkim": f"opendkim {IP}:{MILTER_PORT}",
             "imap": f"imap {IP}:{IMAP_PORT} imaps {IP}:{IMAPS_PORT}", "mx": f"smtp mx {IP}:{MX_PORT}",
             "out": f"submission {IP}:{SUBMISSION_PORT}"}
    rows = []
    for name in COMPONENTS:
        pid = _read_pid(state, name)
        rows.append({"name": f"mail-{name}", "address": where[name], "pid": pid, "up": bool(pid) and _ready(name)})
    return rows


def listening_addresses() -> set[str]:
    """Every TCP address the mail host listens on (for a test that nothing is left after down)."""
    return {f"{IP}:{p}" for p in (DNS_PORT, MX_PORT, SUBMISSION_PORT, MILTER_PORT, IMAP_PORT, IMAPS_PORT)}


# ---------------------------------------------------------------- settings

def imap_settings(state: Path | None = None) -> dict:
    """How a client reaches the Mesa's mailbox (the password stays in its file)."""
    state = Path(state or STATE)
    return {"host": IP, "port": IMAPS_PORT, "tls": "implicit", "starttls_port": IMAP_PORT,
            "ca_file": str(Path(state) / "pki" / "mail" / "ca.pem"), "user": MESA_USER,
            "password_file": str(password_file(state)), "address": MESA_ADDRESS}


def inventory_vars(state: Path | None = None) -> dict:
    """The mail host's variables in the generated lab inventory."""
    imap = imap_settings(state)
    return {"lab_mail_ip": IP, "lab_mail_mx_port": MX_PORT, "lab_mail_submission_port": SUBMISSION_PORT,
            "lab_imap_host": imap["host"], "lab_imap_port": imap["port"], "lab_imap_tls": imap["tls"],
            "lab_imap_starttls_port": imap["starttls_port"], "lab_imap_ca": imap["ca_file"],
            "lab_imap_user": imap["user"], "lab_imap_password_file": imap["password_file"],
            "lab_mesa_address": MESA_ADDRESS, "lab_mail_authserv_id": AUTHSERV_ID,
            "lab_mail_nameserver": f"{IP}@{DNS_PORT}", "lab_mail_dns_ip": IP, "lab_mail_dns_port": DNS_PORT,
            "lab_dkim_selector": SELECTOR, "lab_mail_domains": dict(DOMAINS)}


# ---------------------------------------------------------------- sending and reading

def send(msg: EmailMessage, via: str) -> str:
    """Sends msg and returns its Message-ID (added when missing, with Date).

    via "renapo" | "sat" | "secretaria": through the outbound MTA, which DKIM-signs for that sender's domain (the
    From: must be in it); via "external": straight to the Secretaría's MX, as a forger or any outside sender does.
    """
    if via not in (*SIGNING_DOMAINS, "external"):
        raise ValueError(f"via must be one of {', '.join((*SIGNING_DOMAINS, 'external'))}, not {via!r}")
    from_addr = email.utils.parseaddr(str(msg.get("From", "")))[1]
    if not from_addr:
        raise ValueError("the message has no From: address")
    domain = from_addr.rpartition("@")[2].lower()
    if via != "external" and domain != SIGNING_DOMAINS[via]:
        raise ValueError(f"via={via!r} sends for {SIGNING_DOMAINS[via]}, not for {domain}")
    if msg["Message-ID"] is None:
        msg["Message-ID"] = email.utils.make_msgid(domain=domain or None)
    if msg["Date"] is None:
        msg["Date"] = email.utils.format_datetime(dt.datetime.now(dt.UTC).astimezone())
    port = MX_PORT if via == "external" else SUBMISSION_PORT
    with smtplib.SMTP(IP, port, timeout=15) as smtp:
        smtp.send_message(msg)
    return str(msg["Message-ID"]).strip()


def send_raw(data: bytes, mail_from: str, rcpt_to: list[str], via: str = "external") -> None:
    """Sends bytes exactly as given (a message signed by the caller and altered after signing, for instance)."""
    port = MX_PORT if via == "external" else SUBMISSION_PORT
    with smtplib.SMTP(IP, port, timeout=15) as smtp:
        smtp.sendmail(mail_from, rcpt_to, data)


def imap_connect(state: Path | None = None) -> imaplib.IMAP4_SSL:
    """A logged-in IMAP connection to the Mesa's mailbox over verified TLS (the lab mail CA)."""
    s = imap_settings(state)
    ctx = ssl.create_default_context(cafile=s["ca_file"])
    conn = imaplib.IMAP4_SSL(s["host"], s["port"], ssl_context=ctx, timeout=15)
    conn.login(s["user"], Path(s["password_file"]).read_text().strip())
    return conn


def _find(conn: imaplib.IMAP4_SSL, message_id: str) -> bytes | None:
    typ, boxes = conn.list()
    names = [b.decode().rsplit(' "/" ', 1)[-1].strip('"') for b in boxes or [] if b]
    for box in ["INBOX"] + [n for n in names if n != "INBOX"]:
        if conn.select(f'"{box}"', readonly=True)[0] != "OK":
            continue
        typ, data = conn.uid("SEARCH", None, "HEADER", "Message-ID", f'"{message_id}"')
        uids = data[0].split() if typ == "OK" and data and data[0] else []
        if uids:
            typ, parts = conn.uid("FETCH", uids[-1], "(BODY.PEEK[])")
            for part in parts:
                if isinstance(part, tuple):
                    return part[1]
    return None


def wait_for(message_id: str, timeout: float = 15, state: Path | None = None) -> bytes:
    """The raw message as delivered to the Mesa's mailbox (read over IMAP, left unseen); waits until it arrives."""
    message_id = message_id.strip()
    deadline = time.monotonic() + timeout
    with imap_connect(state) as conn:
        while True:
            found = _find(conn, message_id)
            if found is not None:
                return found
            if time.monotonic() > deadline:
                raise TimeoutError(f"{message_id} did not reach the Mesa's mailbox within {timeout:.0f}s")
            time.sleep(0.1)


PUBLICATION_SUBJECT = "Renovación del certificado del servicio web ConsultaPorCurpService ({generation})"


def publication_message(published: dict) -> EmailMessage:
    """RENAPO's mail to the agencies using the service: the oficio as body, the certificate files attached.

    RENAPO writes "a las dependencias usuarias": it does not know, and never quotes, a folio of ours.
    """
    msg = EmailMessage()
    msg["From"] = RENAPO_SENDER
    msg["To"] = f"Mesa de Servicios <{MESA_ADDRESS}>"
    msg["Subject"] = PUBLICATION_SUBJECT.format(generation=published["generation"].upper())
    msg.set_content(Path(published["oficio"]).read_text(encoding="utf-8"))
    for path in map(Path, published["attachments"]):
        kind = ("application", "x-pem-file") if path.suffix == ".pem" else ("application", "pkix-cert")
        msg.add_attachment(path.read_bytes(), maintype=kind[0], subtype=kind[1], filename=path.name)
    return msg


def mail_publication(state: Path, published: dict, resend: bool = False) -> str:
    """Mails pki.publish()'s publication from RENAPO, DKIM-signed for renapo.gob.mx; returns the Message-ID.

    Once per generation: a repeated publish (the same pending publication) returns the first Message-ID unless
    resend is asked for.
    """
    record = Path(published["outbox"]) / "mailed.json"
    if record.exists() and not resend:
        return json.loads(record.read_text())["message_id"]
    message_id = send(publication_message(published), via="renapo")
    _write(record, json.dumps({"message_id": message_id, "to": MESA_ADDRESS,
                               "sent_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}) + "\n")
    return message_id


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p_send = sub.add_parser("send", help="send a text message (body on stdin)")
    p_send.add_argument("--via", required=True, choices=(*SIGNING_DOMAINS, "external"))
    p_send.add_argument("--from", dest="sender", required=True)
    p_send.add_argument("--to", default=MESA_ADDRESS)
    p_send.add_argument("--subject", default="")
    sub.add_parser("settings")
    args = ap.parse_args(argv)
    if args.cmd == "send":
        msg = EmailMessage()
        msg["From"], msg["To"], msg["Subject"] = args.sender, args.to, args.subject
        msg.set_content(sys.stdin.read())
        print(send(msg, args.via))
    else:
        print(json.dumps(inventory_vars(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
