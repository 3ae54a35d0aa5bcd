#!/usr/bin/env python3
"""The local lab: N web-service hosts (sshd + nginx each, in their own namespaces), the RENAPO/SAT/SMTP servers and
a real mail host (Postfix, OpenDKIM, dnsmasq, Dovecot on 127.0.N.200: lab/mailhost.py).

    labctl.py up [--hosts N] [--fresh]   start what is not running (idempotent); --fresh wipes the lab state first
    labctl.py down                       stop everything; no process, namespace, mount or socket is left
    labctl.py status                     what runs, as a table (exit 1 if anything is down)
    labctl.py env                        the `export ANSIBLE_INVENTORY=...` line for this slot (plain ansible-playbook)
    labctl.py publish [--mode ca|selfsigned] [--resend]   RENAPO publishes its renewed certificate (step 1 of its
                                         renewal) and mails it, DKIM-signed, to the Mesa de Servicios
    labctl.py switch                     RENAPO starts presenting it (step 2)
    labctl.py kill-host NAME / start-host NAME   fault injection for the tests

Everything lives under <project>/.lab; the generated inventory is inventories/lab/hosts.yml.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Several labs can run side by side (a demo while the tests run): slot N has its own state, addresses and ports.
SLOT = int(os.environ.get("LAB_SLOT", "0"))
STATE = Path(os.environ.get("LAB_STATE", ROOT / (".lab" if SLOT == 0 else f".lab-{SLOT}")))
LAB_VARS = ROOT / "inventories" / "lab"
INVENTORY = LAB_VARS / "hosts.yml" if SLOT == 0 else STATE / "inventory" / "hosts.yml"
sys.path.insert(0, str(ROOT / "lab"))

import mailhost  # noqa: E402  (lab/mailhost.py: the lab's real mail host)
import pki  # noqa: E402  (lab/pki.py: the lab's certificate authorities)
from procs import alive, wait_gone  # noqa: E402  (lab/procs.py, shared with mailhost)
from sim import padron  # noqa: E402

RENAPO = ("127.0.0.1", 9443 + 10 * SLOT)
SAT = ("127.0.0.1", 9444 + 10 * SLOT)
SMTP = ("127.0.0.1", 2525 + 10 * SLOT)
GATEWAY_PORT = 8080
# Paths inside every host that get the host's own directory (see host_init.sh); created empty on the real root.
MOUNT_POINTS = ("/etc/consulta", "/var/backups/consulta", "/var/lib/nginx", "/var/log/nginx")


class LabError(RuntimeError):
    pass


if mailhost.STATE != STATE:  # both derive it from LAB_SLOT / LAB_STATE; a mismatch would mix two labs
    raise LabError(f"lab/mailhost.py uses {mailhost.STATE}, labctl {STATE}")


def host_name(i: int) -> str:
    return f"consulta-{i:02d}"


def host_ip(i: int) -> str:
    return f"127.0.{SLOT}.{1 + i}"


def _pidfile(name: str) -> Path:
    return STATE / "pids" / f"{name}.pid"


def _read_pid(name: str) -> int | None:
    try:
        pid = int(_pidfile(name).read_text())
    except (OSError, ValueError):
        return None
    if not alive(pid):
        return None
    # A recycled PID is not ours: the command line must name the lab.
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return pid if str(STATE).encode() in cmd or b"labctl" in cmd or b"sim/services.py" in cmd else None


def _port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _wait(predicate, what: str, timeout: float = 15.0, interval: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise LabError(f"timed out after {timeout:.0f}s waiting for {what}")


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _check_prerequisites() -> None:
    if os.geteuid() != 0:
        raise LabError("the lab needs root (namespaces and bind mounts); run as root")
    missing = [b for b in ("/usr/sbin/nginx", "/usr/sbin/sshd", "/usr/bin/unshare") if not os.path.exists(b)]
    if missing:
        raise LabError(f"missing {', '.join(missing)}: run `make bootstrap` (installs openssh-server nginx-light)")


# ---------------------------------------------------------------- ssh key

def ensure_ssh_key() -> Path:
    """The lab's ssh key pair (ed25519, OpenSSH format) and the authorized_keys every host reads."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    key = STATE / "ssh" / "lab_key"
    if not key.exists():
        k = ed25519.Ed25519PrivateKey.generate()
        priv = k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                               serialization.NoEncryption())
        pub = k.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        _write(key, priv.decode(), 0o600)
        _write(key.with_suffix(".pub"), pub.decode() + " lab\n")
        _write(STATE / "ssh" / "authorized_keys", pub.decode() + " lab\n", 0o600)
    return key


def _host_key(path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    if path.exists():
        return
    k = ed25519.Ed25519PrivateKey.generate()
    _write(path, k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                 serialization.NoEncryption()).decode(), 0o600)


# ---------------------------------------------------------------- hosts

NGINX_CONF = """\
# Lab host {name}: nginx as the consultation gateway (generated by lab/labctl.py).
user www-data;
worker_processes 1;
pid /run/nginx.pid;
error_log /var/log/nginx/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log /var/log/nginx/access.log;
    include /etc/nginx/conf.d/*.conf;
}}
"""

GATEWAY_CONF = """\
# The consultation gateway: callers speak plain HTTP to this host; nginx calls RENAPO/SAT over verified TLS.
server {{
    listen {ip}:{port};
    server_name {name};
    location = /health {{ return 200 "ok\\n"; }}

    # RENAPO: the host must trust an anchor of what RENAPO presents (its trust bundle), or the call fails (502).
    location /WebServicesConsulta/ {{
        proxy_pass https://{renapo_host}:{renapo_port};
        proxy_ssl_verify on;
        proxy_ssl_verify_depth 4;
        proxy_ssl_trusted_certificate /etc/consulta/trust/renapo-bundle.pem;
        proxy_ssl_name renapo.lab;
        proxy_ssl_server_name on;
        proxy_ssl_session_reuse off;
        proxy_set_header Host renapo.lab;
        proxy_set_header X-Forwarded-For $server_addr;  # lets the simulator count requests per host
    }}

    # SAT: mutual TLS, the host presents its own client identity.
    location /sat/ {{
        proxy_pass https://{sat_host}:{sat_port};
        proxy_ssl_verify on;
        proxy_ssl_trusted_certificate /etc/consulta/trust/sat-ca.pem;
        proxy_ssl_name sat.lab;
        proxy_ssl_server_name on;
        proxy_ssl_certificate /etc/consulta/identity/sat/cert.pem;
        proxy_ssl_certificate_key /etc/consulta/identity/sat/key.pem;
        proxy_ssl_session_reuse off;
    }}

    # What the operators add for another provider (a location per provider, its own trust bundle or identity).
    include /etc/consulta/gateway.d/*.conf;
}}
"""

SSHD_CONFIG = """\
# Lab host {name}: sshd as PID 1 of the host's namespaces (generated by lab/labctl.py).
ListenAddress {ip}:22
HostKey {tree}/ssh/ssh_host_ed25519_key
PidFile /run/sshd.pid
AuthorizedKeysFile {state}/ssh/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
UseDNS no
PrintMotd no
MaxStartups 100:30:200
MaxSessions 100
AcceptEnv LANG LC_*
Subsystem sftp internal-sftp
"""


def _host_tree(i: int, pki_paths: dict) -> Path:
    """Lays out a host's own file tree the first time; an existing tree keeps what was deployed to it."""
    name, ip = host_name(i), host_ip(i)
    tree = STATE / "hosts" / name
    for sub in ("etc-nginx/conf.d", "etc-consulta/trust", "etc-consulta/identity/sat", "etc-consulta/gateway.d",
                "backups", "log-nginx", "lib-nginx", "ssh"):
        (tree / sub).mkdir(parents=True, exist_ok=True)
    _host_key(tree / "ssh" / "ssh_host_ed25519_key")
    _write(tree / "sshd_config", SSHD_CONFIG.format(name=name, ip=ip, tree=tree, state=STATE))
    conf = tree / "etc-nginx" / "nginx.conf"
    if not conf.exists():
        _write(conf, NGINX_CONF.format(name=name))
        _write(tree / "etc-nginx" / "conf.d" / "consulta.conf", GATEWAY_CONF.format(
            name=name, ip=ip, port=GATEWAY_PORT, renapo_host=RENAPO[0], renapo_port=RENAPO[1],
            sat_host=SAT[0], sat_port=SAT[1]))
    trust = tree / "etc-consulta" / "trust"
    if not (trust / "renapo-bundle.pem").exists():
        # Today's RENAPO anchor: what every host trusts before any renewal.
        shutil.copyfile(pki_paths["renapo_anchor"], trust / "renapo-bundle.pem")
        shutil.copyfile(pki_paths["sat_ca"], trust / "sat-ca.pem")
    ident = tree / "etc-consulta" / "identity" / "sat"
    if not (ident / "key.pem").exists():
        cert, key = pki.issue_sat_client(STATE, name)
        shutil.copyfile(cert, ident / "cert.pem")
        shutil.copyfile(key, ident / "key.pem")
        os.chmod(ident / "key.pem", 0o600)
    return tree


def _ssh_ready(ip: str) -> bool:
    try:
        with socket.create_connection((ip, 22), timeout=0.3) as s:
            s.settimeout(0.5)
            return s.recv(4).startswith(b"SSH-")
    except OSError:
        return False


def start_host(i: int, pki_paths: dict | None = None) -> bool:
    """Starts host i unless it runs; returns True if it was started."""
    name, ip = host_name(i), host_ip(i)
    if _read_pid(name) and _ssh_ready(ip):
        return False
    stop_host(name)
    tree = _host_tree(i, pki_paths or pki.ensure(STATE))
    log = open(STATE / "logs" / f"{name}.log", "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(
        ["unshare", "--pid", "--fork", "--kill-child", "--mount-proc", "--uts", "--propagation", "private",
         "bash", str(ROOT / "lab" / "host_init.sh"), name, str(tree)],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    _write(_pidfile(name), str(proc.pid))
    return True


def stop_host(name: str) -> None:
    """SIGKILL the namespace's unshare (it ignores SIGTERM); --kill-child takes sshd, nginx and all with it."""
    pid = _read_pid(name)
    if pid:
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        wait_gone(pid, 2.0)
    _pidfile(name).unlink(missing_ok=True)
    _close_ssh_masters(name)


def _close_ssh_masters(name: str | None = None) -> None:
    """A persistent ssh connection to a stopped host would be reused by Ansible and hang: end them."""
    cp = STATE / "cp"
    if not cp.is_dir():
        return
    ip = host_ip(int(name.rsplit("-", 1)[1])) if name else None
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if str(cp).encode() in cmd and b"ssh" in cmd and (ip is None or ip.encode() in cmd):
            try:
                os.kill(int(proc.name), signal.SIGTERM)
            except ProcessLookupError:
                pass
    if name is None:
        shutil.rmtree(cp, ignore_errors=True)


# ---------------------------------------------------------------- services

def start_services() -> bool:
    if _read_pid("services") and all(_port_open(*a) for a in (RENAPO, SAT, SMTP)):
        return False
    stop_services()
    log = open(STATE / "logs" / "services.log", "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "lab" / "sim" / "services.py"), "--state", str(STATE),
         "--renapo", "%s:%d" % RENAPO, "--sat", "%s:%d" % SAT, "--smtp", "%s:%d" % SMTP],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    _write(_pidfile("services"), str(proc.pid))
    _wait(lambda: all(_port_open(*a) for a in (RENAPO, SAT, SMTP)) or proc.poll() is not None,
          "the RENAPO, SAT and SMTP simulators", timeout=60)
    if proc.poll() is not None:
        raise LabError(f"the simulators exited (code {proc.returncode}); see {STATE}/logs/services.log")
    return True


def stop_services() -> None:
    pid = _read_pid("services")
    if pid:
        os.killpg(pid, signal.SIGTERM)
        if not wait_gone(pid, 3.0):
            os.killpg(pid, signal.SIGKILL)
            wait_gone(pid, 1.0)
    _pidfile("services").unlink(missing_ok=True)


# ---------------------------------------------------------------- inventory

def write_inventory(n: int) -> None:
    """The generated part of the lab inventory: hosts and how to reach them. Settings live in group_vars/."""
    key = STATE / "ssh" / "lab_key"
    hosts = {host_name(i): {"ansible_host": host_ip(i), "consulta_gateway_url": f"http://{host_ip(i)}:{GATEWAY_PORT}"}
             for i in range(1, n + 1)}
    inv = {
        "all": {
            "vars": {"lab_state_dir": str(STATE), "lab_check_curp": padron.check_curp(STATE),
                     "lab_check_rfc": padron.check_rfc(STATE),
                     "lab_renapo_endpoint": "%s:%d" % RENAPO, "lab_sat_endpoint": "%s:%d" % SAT,
                     "lab_smtp_host": SMTP[0], "lab_smtp_port": SMTP[1],
                     "lab_mail_sink": str(STATE / "mail" / "sink"), "lab_mesa_inbox": str(STATE / "mail" / "mesa"),
                     **mailhost.inventory_vars(STATE)},
            "children": {
                "consulta_hosts": {
                    "hosts": hosts,
                    "vars": {
                        "ansible_user": "root",
                        "ansible_ssh_private_key_file": str(key),
                        "ansible_python_interpreter": "/usr/bin/python3",
                        "ansible_control_path_dir": str(STATE / "cp"),
                    },
                },
                "controller": {"hosts": {"localhost": {
                    "ansible_connection": "local",
                    "ansible_python_interpreter": "{{ ansible_playbook_python }}",
                }}},
            },
        }
    }
    header = "# Generated by lab/labctl.py up — do not edit; settings are in group_vars/ and host_vars/.\n"
    _write(INVENTORY, header + json.dumps(inv, indent=2) + "\n")
    if SLOT:
        # Another slot's inventory lives in its state dir and reads the same settings.
        for sub in ("group_vars", "host_vars"):
            link = INVENTORY.parent / sub
            if not link.exists() and (LAB_VARS / sub).is_dir():
                link.symlink_to(LAB_VARS / sub)


# ---------------------------------------------------------------- commands

def up(n: int, fresh: bool = False) -> dict:
    _check_prerequisites()
    if fresh:
        down(quiet=True)
        shutil.rmtree(STATE, ignore_errors=True)
    t0 = time.monotonic()
    for d in ("pids", "logs", "cp", "hosts"):
        (STATE / d).mkdir(parents=True, exist_ok=True)
    for mp in MOUNT_POINTS:
        os.makedirs(mp, exist_ok=True)
    ensure_ssh_key()
    pki_paths = pki.ensure(STATE)
    started_services = start_services()
    # After the simulators: the MX relays every recipient but the Mesa to the SMTP sink.
    started_mailhost = mailhost.start(STATE, sink=SMTP)
    # Hosts beyond N from an earlier, larger lab are stopped: the inventory says exactly what runs.
    for tree in sorted((STATE / "hosts").glob("consulta-*")):
        if int(tree.name.rsplit("-", 1)[1]) > n:
            stop_host(tree.name)
    started = [host_name(i) for i in range(1, n + 1) if start_host(i, pki_paths)]
    write_inventory(n)
    _wait(lambda: all(_ssh_ready(host_ip(i)) for i in range(1, n + 1)), f"sshd on {n} lab hosts")
    _wait(lambda: all(_port_open(host_ip(i), GATEWAY_PORT) for i in range(1, n + 1)), f"nginx on {n} lab hosts")
    return {"hosts": n, "started_hosts": started, "started_services": started_services,
            "started_mailhost": started_mailhost, "seconds": round(time.monotonic() - t0, 2)}


def down(quiet: bool = False) -> dict:
    t0 = time.monotonic()
    stopped = []
    for pidfile in sorted((STATE / "pids").glob("consulta-*.pid")) if (STATE / "pids").is_dir() else []:
        stop_host(pidfile.stem)
        stopped.append(pidfile.stem)
    mailhost.stop(STATE)
    stop_services()
    _close_ssh_masters()
    return {"stopped_hosts": stopped, "seconds": round(time.monotonic() - t0, 3)}


def status() -> list[dict]:
    rows = [{"name": "services", "address": "renapo %s:%d sat %s:%d smtp %s:%d" % (RENAPO + SAT + SMTP),
             "pid": _read_pid("services"), "up": all(_port_open(*a) for a in (RENAPO, SAT, SMTP))}]
    rows += mailhost.status(STATE)
    for tree in sorted((STATE / "hosts").glob("consulta-*")) if (STATE / "hosts").is_dir() else []:
        i = int(tree.name.rsplit("-", 1)[1])
        pid = _read_pid(tree.name)
        rows.append({"name": tree.name, "address": host_ip(i), "pid": pid,
                     "up": bool(pid) and _ssh_ready(host_ip(i)) and _port_open(host_ip(i), GATEWAY_PORT)})
    return rows


def publish(mode: str = "ca", resend: bool = False) -> dict:
    """RENAPO's renewal step 1 (pki.publish) and its e-mail to the Mesa, DKIM-signed for renapo.gob.mx.

    Returns pki.publish()'s result plus `message_id`; the publication is mailed once (resend mails it again).
    """
    r = pki.publish(STATE, mode=mode)
    if not all(mailhost.running(STATE).values()):
        raise LabError(f"published {r['generation']} (outbox {r['outbox']}) but the mail host is not running: "
                       "run `labctl up`, then `labctl publish` again to mail it")
    return {**r, "message_id": mailhost.mail_publication(STATE, r, resend=resend)}


def export_line() -> str:
    """The one line that points plain `ansible-playbook` at this slot's inventory (hosts.yml + group_vars/)."""
    # The directory, not hosts.yml: slot N's group_vars/host_vars sit next to its hosts.yml and load only this way.
    where = INVENTORY.parent
    return f"export ANSIBLE_INVENTORY={where.relative_to(ROOT) if where.is_relative_to(ROOT) else where}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p_up = sub.add_parser("up")
    p_up.add_argument("--hosts", type=int, default=int(os.environ.get("HOSTS", 5)))
    p_up.add_argument("--fresh", action="store_true", help="wipe the lab state (PKI, hosts' files) first")
    sub.add_parser("down")
    sub.add_parser("status")
    sub.add_parser("env")
    p_pub = sub.add_parser("publish")
    p_pub.add_argument("--mode", choices=("ca", "selfsigned"), default="ca")
    p_pub.add_argument("--resend", action="store_true", help="mail the pending publication again")
    sub.add_parser("switch")
    for verb in ("kill-host", "start-host"):
        sub.add_parser(verb).add_argument("name")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "up":
            if not 1 <= args.hosts <= 50:
                raise LabError(f"--hosts must be between 1 and 50, not {args.hosts}")
            r = up(args.hosts, args.fresh)
            print(f"lab up: {r['hosts']} hosts ({len(r['started_hosts'])} started) in {r['seconds']}s; "
                  f"inventory {INVENTORY}")
            print(export_line())
        elif args.cmd == "env":
            print(export_line())
        elif args.cmd == "down":
            r = down()
            print(f"lab down: {len(r['stopped_hosts'])} hosts stopped in {r['seconds']}s")
        elif args.cmd == "status":
            rows = status()
            for r in rows:
                print(f"{r['name']:<12} {'up' if r['up'] else 'DOWN':<5} pid={r['pid'] or '-':<8} {r['address']}")
            return 0 if all(r["up"] for r in rows) else 1
        elif args.cmd == "publish":
            r = publish(args.mode, resend=args.resend)
            print(json.dumps({k: str(v) for k, v in r.items()}, indent=2))
        elif args.cmd == "switch":
            print(f"RENAPO now presents {pki.switch(STATE)}")
        elif args.cmd == "kill-host":
            stop_host(args.name)
        elif args.cmd == "start-host":
            start_host(int(args.name.rsplit("-", 1)[1]))
            i = int(args.name.rsplit("-", 1)[1])
            _wait(lambda: _ssh_ready(host_ip(i)), f"sshd on {args.name}")
    except (LabError, mailhost.MailHostError) as e:
        print(f"labctl: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
