"""cert_deploy through `ansible localhost -m` under /usr/bin/python3 (stdlib only, as on the hosts)."""
import base64
import datetime as dt
import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest
from ansible.module_utils import cert_files as cf
from cryptography import x509
from test_cert_files import fingerprint, key_pem, make_cert, tmpfs, tree

ROOT = Path(__file__).resolve().parents[2]
BACKUP_KEY = "module-test-fleet-key-5f2a"


def ansible(args, *flags):
    """Run the module ad hoc; return (status word, result dict, full output)."""
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_NOCOLOR="1")
    p = subprocess.run([str(ROOT / ".venv/bin/ansible"), "localhost", "-m", "cert_deploy", "-a", json.dumps(args),
                        "-e", "ansible_python_interpreter=/usr/bin/python3", *flags],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    out = p.stdout + p.stderr
    _, _, body = p.stdout.rpartition("localhost | ")
    status, _, result = body.partition(" => ")
    return status.split()[0].rstrip("!"), json.loads(result), out


@pytest.fixture
def site(tmp_path):
    etc = tmp_path / "etc"
    etc.mkdir()
    # the module merges against the real clock, so these certificates are valid today, not at the frozen NOW
    now = dt.datetime.now(dt.UTC)
    valid = {"not_before": now - dt.timedelta(days=1), "not_after": now + dt.timedelta(days=365)}
    anchor, anchor_cert = make_cert("RENAPO anchor 1", serial=0x01, **valid)
    (etc / "trust.pem").write_bytes(anchor)
    old_key = key_pem()
    (etc / "client.key").write_bytes(old_key)
    new_anchor, new_cert = make_cert("RENAPO anchor 2", serial=0x0B0C, **valid)
    new_key = key_pem()
    args = {"files": [
        {"path": str(etc / "trust.pem"), "content": base64.b64encode(new_anchor).decode(), "mode": "0644",
         "merge": True},
        {"path": str(etc / "client.key"), "content": base64.b64encode(new_key).decode(), "mode": "0600",
         "secret": True},
    ], "backup_dir": str(tmp_path / "backups"), "validate_command": ["/bin/true"], "reload_command": "/bin/true",
        "backup_key": BACKUP_KEY, "service": "renapo"}
    return {"etc": etc, "tmp": tmp_path, "args": args, "keys": (old_key, new_key), "new_cert": new_cert,
            "anchor_cert": anchor_cert, "new_key": new_key}


def assert_no_key_bytes(site, out):
    for key in site["keys"]:
        for line in key.splitlines()[1:-1]:
            assert line.decode() not in out
        assert base64.b64encode(key).decode() not in out
    assert BACKUP_KEY not in out


def test_install_then_idempotent_rerun_without_key_bytes(site):
    status, res, out = ansible(site["args"], "-vvv", "--diff")
    assert status == "CHANGED" and res["changed"] and not res["restored"], out
    assert "serial 0B0C" in out and fingerprint(site["new_cert"]) in out and "<secret file changed>" in out
    assert_no_key_bytes(site, out)
    assert (site["etc"] / "client.key").read_bytes() == site["new_key"]
    assert fingerprint(site["new_cert"]) in res["files"][0]["description"][1]
    manifest = Path(res["backup"]["path"]) / "manifest.json"
    assert_no_key_bytes(site, manifest.read_text())

    status, res, out = ansible(site["args"], "-vvv")
    assert status == "SUCCESS" and res["changed"] is False and res["backup"] is None, out
    assert_no_key_bytes(site, out)

    status, res, _ = ansible({"action": "list", "backup_dir": site["args"]["backup_dir"]})
    assert status == "SUCCESS" and len(res["backups"]) == 1

    status, res, out = ansible(restore_args(site), "--diff", "-vvv")
    assert status == "CHANGED" and (site["etc"] / "client.key").read_bytes() == site["keys"][0], out
    assert_no_key_bytes(site, out)


def restore_args(site, **kw):
    return dict({"action": "restore", "backup": "latest", "backup_dir": site["args"]["backup_dir"],
                 "backup_key": BACKUP_KEY, "managed_paths": [f["path"] for f in site["args"]["files"]]}, **kw)


def test_check_mode_touches_nothing(site):
    before = tree(site["tmp"])
    status, res, out = ansible(site["args"], "--check", "--diff")
    assert status == "CHANGED" and res["backup"] is None, out
    assert fingerprint(site["new_cert"]) in out and fingerprint(site["anchor_cert"]) in out
    assert tree(site["tmp"]) == before
    assert_no_key_bytes(site, out)


def test_config_test_failure_restores_and_names_the_step(site):
    originals = {p.name: p.read_bytes() for p in site["etc"].iterdir()}
    args = dict(site["args"], validate_command=["sh", "-c", "echo 'nginx: [emerg] broken include' >&2; exit 1"])
    status, res, out = ansible(args)
    assert status == "FAILED" and res["step"] == "validate" and res["restored"] is True, out
    assert res["msg"].startswith("config test failed: nginx: [emerg] broken include")
    assert {p.name: p.read_bytes() for p in site["etc"].iterdir()} == originals


def test_bad_content_is_named(site):
    args = dict(site["args"], files=[dict(site["args"]["files"][0], content="not base64!")])
    status, res, _ = ansible(args)
    assert status == "FAILED" and res["step"] == "input" and "not valid base64" in res["msg"]


def test_two_concurrent_module_merges_keep_both_entries(site):
    """Two `cert_deploy` runs (two processes, as two rollouts would start them) merge into one bundle at once."""
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_NOCOLOR="1")
    now = dt.datetime.now(dt.UTC)
    new = [make_cert("concurrent %d" % i, serial=0x60 + i, not_before=now - dt.timedelta(days=1),
                     not_after=now + dt.timedelta(days=365)) for i in range(2)]
    procs = []
    for pem, _cert in new:
        args = {"files": [{"path": str(site["etc"] / "trust.pem"), "content": base64.b64encode(pem).decode(),
                           "merge": True}], "backup_dir": site["args"]["backup_dir"], "backup_key": BACKUP_KEY,
                "service": "renapo"}
        procs.append(subprocess.Popen([str(ROOT / ".venv/bin/ansible"), "localhost", "-m", "cert_deploy", "-a",
                                       json.dumps(args), "-e", "ansible_python_interpreter=/usr/bin/python3"],
                                      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    held = {fingerprint(c) for c in x509.load_pem_x509_certificates((site["etc"] / "trust.pem").read_bytes())}
    assert held == {fingerprint(site["anchor_cert"])} | {fingerprint(c) for _p, c in new}


# ---------------------------------------------------------------- what an insider or a crash can reach (issue 14)

def installed_backup(site):
    status, res, out = ansible(site["args"])
    assert status == "CHANGED", out
    root = Path(res["backup"]["path"])
    return root, json.loads((root / "manifest.json").read_text())


def test_restore_refuses_a_tampered_copy_with_its_checksum_updated(site):
    root, manifest = installed_backup(site)
    rogue, _ = make_cert("Rogue CA", serial=0x666)
    (root / manifest["files"][0]["copy"]).write_bytes(rogue)
    manifest["files"][0]["sha256_before"] = hashlib.sha256(rogue).hexdigest()
    (root / "manifest.json").write_text(json.dumps(manifest))
    before = tree(site["etc"])
    status, res, out = ansible(restore_args(site))
    assert status == "FAILED" and res["step"] == "restore", out
    assert res["msg"].startswith("backup %s: the manifest HMAC does not verify" % root.name)
    assert tree(site["etc"]) == before and BACKUP_KEY not in out
    # with the wrong fleet key an intact backup is refused just the same; without any key the module says so
    status, res, _ = ansible(restore_args(site, backup_key="another-fleet"))
    assert status == "FAILED" and "HMAC does not verify" in res["msg"]
    status, res, _ = ansible({k: v for k, v in restore_args(site).items() if k != "backup_key"})
    assert status == "FAILED" and "backup_key" in res["msg"]
    status, res, _ = ansible({k: v for k, v in site["args"].items() if k != "backup_key"})
    assert status == "FAILED" and res["msg"].startswith("backup_key is empty")
    status, res, out = ansible({k: v for k, v in site["args"].items() if k != "backup_key"}, "--check")
    assert status == "SUCCESS" and res["backup"] is None, out  # a plan (check mode) needs no key


def test_restore_refuses_a_foreign_path_and_writes_or_deletes_nothing(site):
    root, manifest = installed_backup(site)
    passwd = site["tmp"] / "passwd"
    passwd.write_bytes(b"root:x:0:0:root:/root:/bin/bash\n")
    manifest["files"].append({"path": str(passwd), "secret": False, "existed": False, "sha256_before": None})
    manifest.pop("hmac")
    manifest["hmac"] = cf.manifest_mac(manifest, BACKUP_KEY)  # an insider holding the fleet key
    (root / "manifest.json").write_text(json.dumps(manifest))
    before = tree(site["tmp"] / "etc")
    status, res, out = ansible(restore_args(site))
    assert status == "FAILED" and "names %s, which is not a path this role manages" % passwd in res["msg"], out
    assert passwd.read_bytes().startswith(b"root:x") and tree(site["tmp"] / "etc") == before


def test_restore_refuses_another_service_and_returns_the_backups_own(site):
    installed_backup(site)
    status, res, _ = ansible(restore_args(site, service="sat"))
    assert status == "FAILED" and "was taken for service renapo, not sat" in res["msg"]
    status, res, out = ansible(restore_args(site, service="renapo"))
    assert status == "CHANGED" and res["backup"]["service"] == "renapo" and res["backup"]["signed"] is True, out


def test_a_symlinked_destination_is_refused_and_its_target_untouched(site):
    victim = site["tmp"] / "passwd"
    victim.write_bytes(b"root:x:0:0:root:/root:/bin/bash\n")
    (site["etc"] / "trust.pem").unlink()
    (site["etc"] / "trust.pem").symlink_to(victim)
    status, res, out = ansible(site["args"])
    assert status == "FAILED" and res["step"] == "input", out
    assert "%s is a symbolic link (to %s): refused" % (site["etc"] / "trust.pem", victim) in res["msg"]
    assert victim.read_bytes() == b"root:x:0:0:root:/root:/bin/bash\n"
    assert not (site["tmp"] / "backups").exists()


def test_a_secret_asked_0644_is_written_0600_with_a_warning(site):
    args = dict(site["args"], files=[dict(site["args"]["files"][1], mode="0644")])
    status, res, out = ansible(args)
    assert status == "CHANGED", out
    assert (site["etc"] / "client.key").stat().st_mode & 0o7777 == 0o600
    assert "mode 0644 asked, written 0600" in out
    assert_no_key_bytes(site, out)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_full_disk_in_the_backup_dir_leaves_files_and_no_partial_backup(site):
    backups = Path(site["args"]["backup_dir"])
    big = site["etc"] / "big.bin"
    big.write_bytes(os.urandom(80 * 1024))  # its copy cannot fit in 64k
    args = dict(site["args"], files=[{"path": str(big), "content": base64.b64encode(b"small").decode()}])
    before = tree(site["etc"])
    with tmpfs(backups):
        status, res, out = ansible(args)
        assert status == "FAILED" and res["step"] == "backup" and res["restored"] is False, out
        assert "backup failed writing the copy of %s: No space left on device" % big in res["msg"]
        assert "was removed" in res["msg"] and "FAILED" not in res["msg"]
        assert [p.name for p in backups.iterdir()] == [".lock"]
        assert tree(site["etc"]) == before
