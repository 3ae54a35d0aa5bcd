"""Benchmark of cert_validate on a typical identity delivery: RSA 2048 leaf, 2-level chain (root -> issuing CA -> leaf).

Prints the median of the pure check (validate(), in process), of the module as a process of its own (what runs on
the controller once Ansible has started), and of `ansible localhost -m cert_validate` end to end (Ansible's own
start-up included). Targets: pure check < 5 ms, module < 100 ms.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import ansible.module_utils
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

ROOT = Path(__file__).resolve().parents[1]
ansible.module_utils.__path__.append(str(ROOT / "module_utils"))
from ansible.module_utils.cert_validation import validate  # noqa: E402

# Runs library/cert_validate.py as AnsiballZ would: args from a JSON file, module_utils importable.
RUNNER = ("import sys, runpy, ansible.module_utils as m; m.__path__.append(sys.argv.pop(1)); "
          "runpy.run_path(sys.argv.pop(1), run_name='__main__')")


def issue(cn, key, signer=None, ca=False):
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    issuer, signing_key = (signer[0].subject, signer[1]) if signer else (name, key)
    b = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer).public_key(key.public_key())
         .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
         .not_valid_after(now + dt.timedelta(days=365))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if not ca:
        b = b.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    return b.sign(signing_key, hashes.SHA256())


def write_delivery(tmp):
    keys = [rsa.generate_private_key(65537, 2048) for _ in range(3)]
    root = issue("Bench Root CA", keys[0], ca=True)
    inter = issue("Bench Issuing CA", keys[1], (root, keys[0]), ca=True)
    leaf = issue("bench-client", keys[2], (inter, keys[1]))
    pem = serialization.Encoding.PEM
    (tmp / "fullchain.pem").write_bytes(leaf.public_bytes(pem) + inter.public_bytes(pem))
    (tmp / "key.pem").write_bytes(keys[2].private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                        serialization.NoEncryption()))
    (tmp / "root.pem").write_bytes(root.public_bytes(pem))
    return {"kind": "identity", "certificate": str(tmp / "fullchain.pem"), "private_key": str(tmp / "key.pem"),
            "trusted_roots": [str(tmp / "root.pem")]}


def median_ms(fn, runs):
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def run_checked(cmd, **kw):
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if proc.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")


def main():
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"))
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        args = write_delivery(tmp)
        report = validate(**args)
        assert not report.defects, report.error_text()
        pure = median_ms(lambda: validate(**args), 200)
        (tmp / "args.json").write_text(json.dumps({"ANSIBLE_MODULE_ARGS": args}))
        module_cmd = [sys.executable, "-c", RUNNER, str(ROOT / "module_utils"), str(ROOT / "library/cert_validate.py"),
                      str(tmp / "args.json")]
        module = median_ms(lambda: run_checked(module_cmd), 7)
        basic = median_ms(lambda: run_checked([sys.executable, "-c", "import ansible.module_utils.basic"]), 7)
        adhoc_cmd = [str(ROOT / ".venv/bin/ansible"), "localhost", "-m", "cert_validate", "-a", json.dumps(args)]
        adhoc = median_ms(lambda: run_checked(adhoc_cmd, cwd=ROOT, env=env), 5)
        floor_cmd = [str(ROOT / ".venv/bin/ansible"), "localhost", "-m", "ansible.builtin.ping"]
        floor = median_ms(lambda: run_checked(floor_cmd, cwd=ROOT, env=env), 5)
    print("cert_validate, RSA 2048 identity with a 2-level chain (medians)")
    print(f"  pure check (validate, 200 runs)                 {pure:8.2f} ms   target < 5 ms")
    print(f"  module process (python + imports + check, 7)    {module:8.1f} ms   target < 100 ms")
    print(f"  python + import AnsibleModule, nothing else (7) {basic:8.1f} ms   (any module's floor)")
    print(f"  module over that floor                          {module - basic:8.1f} ms")
    print(f"  ansible localhost -m cert_validate (5)          {adhoc:8.1f} ms")
    print(f"  ansible localhost -m ping, same way (5)         {floor:8.1f} ms   (Ansible's own floor)")
    print(f"  cert_validate over the ping floor               {adhoc - floor:8.1f} ms")


if __name__ == "__main__":
    main()
