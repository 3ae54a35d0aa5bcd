"""cert_files: stdlib DER facts, bundle merge, backup, atomic install, config test, reload, restore (real files)."""
import base64
import contextlib
import datetime as dt
import hashlib
import json
import os
import shlex
import subprocess
from pathlib import Path

import pytest
from ansible.module_utils import cert_files as cf
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

ROOT = Path(__file__).resolve().parents[2]
NOW = dt.datetime(2026, 1, 15, 12, 0, tzinfo=dt.UTC)
_KEY = ec.generate_private_key(ec.SECP256R1())


def make_cert(cn, serial=0x1A2B, not_after=NOW + dt.timedelta(days=365), not_before=NOW - dt.timedelta(days=1)):
    """A self-signed test certificate as (pem bytes, cryptography Certificate)."""
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Lab"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(_KEY.public_key())
            .serial_number(serial).not_valid_before(not_before).not_valid_after(not_after)
            .sign(_KEY, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM), cert


def key_pem():
    return ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def fingerprint(cert):
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


def run(cmd):
    p = subprocess.run(shlex.split(cmd) if isinstance(cmd, str) else cmd, capture_output=True, text=True)
    return p.returncode, p.stdout, p.stderr


def tree(path):
    """Checksums, modes and owners of everything under path: equal trees mean nothing was touched."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            st = os.lstat(full)
            digest = hashlib.sha256(Path(full).read_bytes()).hexdigest() if os.path.isfile(full) else None
            out[os.path.relpath(full, path)] = (digest, st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns)
    return out


@pytest.fixture
def host(tmp_path):
    """A host's certificate directory with a trust bundle and an identity, plus an empty backup directory."""
    etc = tmp_path / "etc"
    etc.mkdir()
    anchor, anchor_cert = make_cert("RENAPO anchor 1", serial=0x01)
    (etc / "trust.pem").write_bytes(anchor)
    (etc / "trust.pem").chmod(0o644)
    (etc / "client.key").write_bytes(key_pem())
    (etc / "client.key").chmod(0o600)
    return {"etc": etc, "backups": tmp_path / "backups", "anchor": anchor, "anchor_cert": anchor_cert,
            "log": tmp_path / "commands.log"}


def recorder(host, name, rc=0):
    """A command that appends its name to a log and exits rc: proves which commands ran, and how often."""
    return ["sh", "-c", 'echo %s >> "%s"; echo "%s says no" >&2; exit %d' % (name, host["log"], name, rc)]


def calls(host):
    return host["log"].read_text().split() if host["log"].exists() else []


def targets(host, trust=None, key=None, **kw):
    out = []
    if trust is not None:
        out.append(cf.make_target(str(host["etc"] / "trust.pem"), trust, mode="0644", now=NOW, **kw))
    if key is not None:
        out.append(cf.make_target(str(host["etc"] / "client.key"), key, mode="0600", secret=True, now=NOW))
    return out


BACKUP_KEY = "unit-test-fleet-key"


def managed(host):
    """The paths the role would manage on this host."""
    return [str(host["etc"] / n) for n in ("trust.pem", "client.key", "chain.pem", "sat.pem")]


def do_install(host, tg, **kw):
    kw.setdefault("validate_command", recorder(host, "validate"))
    kw.setdefault("reload_command", recorder(host, "reload"))
    kw.setdefault("key", BACKUP_KEY)
    kw.setdefault("service", "renapo")
    return cf.install(tg, str(host["backups"]), run, now=kw.pop("now", NOW), **kw)


def do_restore(host, name, **kw):
    kw.setdefault("key", BACKUP_KEY)
    kw.setdefault("managed_paths", managed(host))
    return cf.restore(str(host["backups"]), name, run, **kw)


# ---------------------------------------------------------------- DER facts

@pytest.mark.parametrize("serial, not_after", [
    (1, NOW + dt.timedelta(days=30)),
    (0x80, NOW + dt.timedelta(days=30)),  # high bit set: DER adds a leading zero byte
    (0x7F1E2D3C4B5A69788796A5B4C3D2E1F0, NOW + dt.timedelta(days=3650)),
    (2**159 - 1, dt.datetime(2051, 6, 1, tzinfo=dt.UTC)),  # 20-byte serial, GeneralizedTime after 2049
])
def test_parse_certificate_matches_cryptography(serial, not_after):
    pem, cert = make_cert("RENAPO ñ anchor", serial=serial, not_after=not_after)
    info = cf.parse_certificate(cert.public_bytes(serialization.Encoding.DER))
    assert int(info.serial_hex, 16) == serial and len(info.serial_hex) % 2 == 0
    assert info.fingerprint == fingerprint(cert)
    assert info.subject_cn == info.issuer_cn == "RENAPO ñ anchor"
    assert info.not_after == cert.not_valid_after_utc and info.not_before == cert.not_valid_before_utc
    assert [c.fingerprint for _b, c in cf.pem_certificates(pem)] == [fingerprint(cert)]


@pytest.mark.parametrize("data", [b"", b"\x30\x03\x02\x01", b"\x30\x00", b"not a certificate", b"\x04\x02ab"])
def test_parse_certificate_rejects_garbage(data):
    with pytest.raises(ValueError, match="not an X.509 certificate"):
        cf.parse_certificate(data)


def test_describe_content_never_shows_bytes():
    pem, cert = make_cert("RENAPO anchor", serial=0x0ABC)
    line = cf.describe_content(pem)[0]
    assert line.startswith("serial 0ABC · sha256 " + fingerprint(cert) + " · CN=RENAPO anchor · not_after ")
    assert cf.describe_content(cert.public_bytes(serialization.Encoding.DER)) == [line]  # SAT-style .cer
    key = key_pem()
    assert cf.describe_content(key, secret=True) == ["secret file"]
    assert cf.describe_content(key)[0].startswith("sha256 ")  # an unflagged key still shows no byte
    assert cf.describe_content(None) == ["absent"]


# ---------------------------------------------------------------- merge

def test_merge_pem_bundles_dedupes_drops_expired_and_keeps_order():
    a, ca = make_cert("A", serial=1)
    b, cb = make_cert("B", serial=2)
    old, _ = make_cert("expired", serial=3, not_after=NOW - dt.timedelta(seconds=1),
                       not_before=NOW - dt.timedelta(days=9))
    c, cc = make_cert("C", serial=4)
    merged = cf.merge_pem_bundles(a + old + b, b + c + a, NOW)
    assert [i.fingerprint for _b, i in cf.pem_certificates(merged)] == [fingerprint(x) for x in (ca, cb, cc)]
    assert cf.merge_pem_bundles(merged, c, NOW) == merged  # idempotent, byte for byte
    assert cf.merge_pem_bundles(a.decode(), "", NOW) == a
    assert cf.merge_pem_bundles(None, a, NOW) == a  # no bundle yet


def test_merge_rejects_corrupt_certificate():
    a, cert = make_cert("A")
    der = cert.public_bytes(serialization.Encoding.DER)
    truncated = b"-----BEGIN CERTIFICATE-----\n%s\n-----END CERTIFICATE-----\n" % base64.b64encode(der[:-20])
    with pytest.raises(ValueError, match="certificate 2: not an X.509 certificate"):
        cf.merge_pem_bundles(a, a + truncated, NOW)


def _merge_in_a_process(path, backups, pem, barrier, errors):
    """One cert_deploy merge run: resolve the target, wait until the other run has resolved its own, then install."""
    try:
        target = cf.make_target(path, pem, mode="0644", merge=True, now=NOW)
        barrier.wait(timeout=30)  # both targets are made from the same bundle before either installs
        cf.install([target], backups, run, now=NOW)
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which fails the test
        errors.put(repr(exc))


def test_two_concurrent_merges_into_one_bundle_keep_both_entries(host):
    """Two processes merge a different anchor into the same file: the merge is computed under the backup lock."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    barrier, errors = ctx.Barrier(2), ctx.Queue()
    new = [make_cert("concurrent %d" % i, serial=0x50 + i) for i in range(2)]
    procs = [ctx.Process(target=_merge_in_a_process, args=(str(host["etc"] / "trust.pem"), str(host["backups"]),
                                                           pem, barrier, errors)) for pem, _c in new]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0, 0] and errors.empty(), errors.get() if not errors.empty() else ""
    held = [i.fingerprint for _b, i in cf.pem_certificates((host["etc"] / "trust.pem").read_bytes())]
    assert held[0] == fingerprint(host["anchor_cert"])
    assert sorted(held[1:]) == sorted(fingerprint(c) for _p, c in new)  # neither merge lost the other's entry
    assert len(cf.list_backups(str(host["backups"]))) == 2


def test_a_merge_target_is_merged_again_against_the_file_at_plan_time(host):
    a2, c2 = make_cert("anchor 2", serial=2)
    a3, c3 = make_cert("anchor 3", serial=3)
    late = cf.make_target(str(host["etc"] / "trust.pem"), a3, merge=True, now=NOW)  # made before a2 lands
    do_install(host, targets(host, a2, merge=True))
    res = do_install(host, [late])
    held = [i.fingerprint for _b, i in cf.pem_certificates((host["etc"] / "trust.pem").read_bytes())]
    assert held == [fingerprint(host["anchor_cert"]), fingerprint(c2), fingerprint(c3)]
    assert [a["fingerprint"] for a in res["files"][0]["added"]] == [fingerprint(c3)]


def test_diff_says_why_each_certificate_goes(host):
    rogue, rogue_cert = make_cert("Rogue CA", serial=0x66)
    stale, stale_cert = make_cert("stale", serial=0x77, not_after=NOW - dt.timedelta(days=1),
                                  not_before=NOW - dt.timedelta(days=9))
    (host["etc"] / "trust.pem").write_bytes(host["anchor"] + rogue + stale)
    a2, c2 = make_cert("anchor 2", serial=2)
    tg = [cf.make_target(str(host["etc"] / "trust.pem"), host["anchor"] + a2, mode="0644", now=NOW,
                         removal_note="not in the trust-anchor registry")]
    res = do_install(host, tg, check_mode=True, diff=True)
    before = res["diff"][0]["before"].splitlines()
    assert before[0].startswith("serial 01 ") and "removed" not in before[0]  # kept: no note
    assert before[1].endswith("CN=Rogue CA · not_after 2027-01-15T12:00:00Z"
                              " · removed: not in the trust-anchor registry")
    assert before[2].endswith(" · removed: expired")
    f = res["files"][0]
    assert [(r["fingerprint"], r["reason"]) for r in f["removed"]] == [
        (fingerprint(rogue_cert), "not in the trust-anchor registry"), (fingerprint(stale_cert), "expired")]
    assert [a["subject_cn"] for a in f["added"]] == ["anchor 2"]
    key = cf.make_target(str(host["etc"] / "client.key"), key_pem(), secret=True)
    assert cf.plan([key])[0].report()["removed"] == []  # a secret file never lists anything


# ---------------------------------------------------------------- install

def test_noop_when_equal_creates_no_backup_and_runs_nothing(host):
    key = (host["etc"] / "client.key").read_bytes()
    res = do_install(host, targets(host, host["anchor"], key))
    assert res["changed"] is False and res["backup"] is None
    assert not host["backups"].exists() and calls(host) == []
    assert [f["sha256_after"] for f in res["files"]] == [f["sha256_before"] for f in res["files"]]
    assert res["files"][0]["description"][0].startswith("serial 01 · sha256 " + fingerprint(host["anchor_cert"]))


def test_install_backs_up_installs_and_writes_manifest(host):
    before = {p.name: p.read_bytes() for p in host["etc"].iterdir()}
    new_anchor, new_cert = make_cert("RENAPO anchor 2", serial=0x02)
    new_key = key_pem()
    res = do_install(host, targets(host, new_anchor, new_key, merge=True))
    assert res["changed"] and not res["restored"] and calls(host) == ["validate", "reload"]
    trust = (host["etc"] / "trust.pem").read_bytes()
    assert [i.subject_cn for _b, i in cf.pem_certificates(trust)] == ["RENAPO anchor 1", "RENAPO anchor 2"]
    assert (host["etc"] / "client.key").read_bytes() == new_key
    assert oct((host["etc"] / "client.key").stat().st_mode & 0o777) == "0o600"
    root = Path(res["backup"]["path"])
    assert root.name == res["backup"]["label"] and root.parent == host["backups"]
    manifest = json.loads((root / "manifest.json").read_text())
    for entry, f in zip(manifest["files"], res["files"], strict=True):
        copy = (root / entry["copy"]).read_bytes()
        assert copy == before[Path(entry["path"]).name]
        assert hashlib.sha256(copy).hexdigest() == entry["sha256_before"] == f["sha256_before"]
        installed = hashlib.sha256(Path(entry["path"]).read_bytes()).hexdigest()
        assert entry["sha256_after"] == f["sha256_after"] == installed
        assert entry["mode"] == ("0600" if entry["secret"] else "0644") and entry["owner"]
    raw = (root / "manifest.json").read_bytes()
    for key in (before["client.key"], new_key):
        assert b"PRIVATE" not in raw and key.splitlines()[1] not in raw
    assert oct(host["backups"].stat().st_mode & 0o777) == "0o700"
    assert not [p for p in host["etc"].iterdir() if p.name.endswith(".tmp")]  # no temp file left behind


def test_install_new_file_and_owner(host):
    pem, _ = make_cert("SAT client")
    path = host["etc"] / "sat.pem"
    res = do_install(host, [cf.make_target(str(path), pem, mode="0640", owner="nobody", group="nogroup")])
    st = path.stat()
    assert res["changed"] and (st.st_uid, st.st_gid, st.st_mode & 0o777) == (65534, 65534, 0o640)
    assert res["files"][0]["sha256_before"] is None
    assert json.loads((Path(res["backup"]["path"]) / "manifest.json").read_text())["files"][0]["existed"] is False
    # only the owner differs now: that is a change too
    res = do_install(host, [cf.make_target(str(path), pem, mode="0640", owner="root", group="nogroup")])
    assert res["changed"] and path.stat().st_uid == 0


@pytest.mark.parametrize("failing", ["validate", "reload"])
def test_failed_step_restores_original_bytes(host, failing):
    new_file = host["etc"] / "chain.pem"
    before = tree(host["etc"])
    originals = {p: p.read_bytes() for p in host["etc"].iterdir()}
    new_anchor, _ = make_cert("RENAPO anchor 2", serial=0x02)
    tg = targets(host, new_anchor, key_pem()) + [cf.make_target(str(new_file), new_anchor)]
    with pytest.raises(cf.CertFilesError) as err:
        do_install(host, tg, **{failing + "_command": recorder(host, failing, rc=1)})
    exc = err.value
    assert exc.step == failing and exc.restored and exc.result["restored"]
    assert exc.msg.startswith({"validate": "config test failed: ", "reload": "reload failed: "}[failing])
    assert failing + " says no" in exc.msg
    assert {p: p.read_bytes() for p in host["etc"].iterdir()} == originals  # byte for byte, new file removed
    assert {k: v[:4] for k, v in tree(host["etc"]).items()} == {k: v[:4] for k, v in before.items()}
    # validate failing: nothing reloaded; reload failing: reload again after the restore
    assert calls(host) == {"validate": ["validate"], "reload": ["validate", "reload", "reload"]}[failing]
    assert len(cf.list_backups(str(host["backups"]))) == 1  # the backup stays for the record


def test_check_mode_touches_nothing(host):
    before = tree(host["etc"].parent)
    new_anchor, new_cert = make_cert("RENAPO anchor 2", serial=0x0B0C)
    new_key = key_pem()
    res = do_install(host, targets(host, new_anchor, new_key, merge=True), check_mode=True, diff=True)
    assert res["changed"] and res["backup"] is None
    assert tree(host["etc"].parent) == before and calls(host) == []
    trust_diff, key_diff = res["diff"]
    assert fingerprint(new_cert) in trust_diff["after"] and "serial 0B0C" in trust_diff["after"]
    assert fingerprint(new_cert) not in trust_diff["before"]
    assert fingerprint(host["anchor_cert"]) in trust_diff["before"]
    assert (key_diff["before"], key_diff["after"]) == ("<secret file>\n", "<secret file changed>\n")
    text = json.dumps(res)
    for key in (new_key, (host["etc"] / "client.key").read_bytes()):
        for line in key.splitlines():
            assert line.decode() not in text


def test_two_runs_in_one_second_get_distinct_labels_and_pruning_keeps_k(host):
    labels = []
    for i in range(5):
        pem, _ = make_cert("anchor %d" % i, serial=i + 10)
        now = NOW + dt.timedelta(milliseconds=i)  # five runs inside one second
        labels.append(do_install(host, targets(host, pem), keep=3, now=now)["backup"]["label"])
    assert len(set(labels)) == 5 and all(label.startswith("20260115T120000Z-") for label in labels)
    kept = [m["label"] for m in cf.list_backups(str(host["backups"]))]
    assert len(kept) == 3 and labels[-1] in kept
    assert set(kept) == set(labels[-3:])  # the oldest go first


# ---------------------------------------------------------------- restore / list

def test_restore_by_label_latest_previous_and_idempotent(host):
    original = (host["etc"] / "trust.pem").read_bytes()
    a2, _ = make_cert("anchor 2", serial=2)
    a3, _ = make_cert("anchor 3", serial=3)
    first = do_install(host, targets(host, a2), now=NOW)["backup"]["label"]  # holds anchor 1
    do_install(host, targets(host, a3), now=NOW + dt.timedelta(seconds=1))  # holds anchor 2
    trust = host["etc"] / "trust.pem"

    res = do_restore(host, "latest", reload_command=recorder(host, "reload"))
    assert res["changed"] and trust.read_bytes() == a2 and calls(host)[-1] == "reload"
    res = do_restore(host, "latest")
    assert res["changed"] is False  # already equal to the backup
    res = do_restore(host, "previous")
    assert res["changed"] and res["backup"]["label"] == first and trust.read_bytes() == original
    trust.write_bytes(a3)
    assert do_restore(host, first)["changed"] and trust.read_bytes() == original
    with pytest.raises(cf.CertFilesError, match="not found"):
        do_restore(host, "nope")


def test_restore_refuses_a_tampered_copy_naming_the_file(host):
    a2, _ = make_cert("anchor 2", serial=2)
    res = do_install(host, targets(host, a2))
    copy = Path(res["backup"]["path"]) / "files" / str(host["etc"] / "trust.pem").lstrip("/")
    copy.write_bytes(copy.read_bytes() + b"\n")
    with pytest.raises(cf.CertFilesError, match="copy of %s does not match" % (host["etc"] / "trust.pem")) as err:
        do_restore(host, "latest")
    assert err.value.step == "restore" and (host["etc"] / "trust.pem").read_bytes() == a2


def test_restore_validate_failure_puts_back_what_was_there(host):
    a2, _ = make_cert("anchor 2", serial=2)
    do_install(host, targets(host, a2))
    with pytest.raises(cf.CertFilesError, match="config test failed") as err:
        do_restore(host, "latest", validate_command="/bin/false")
    assert err.value.restored and (host["etc"] / "trust.pem").read_bytes() == a2


def test_interrupted_backup_is_ignored_by_list_restore_and_prune(host):
    a2, _ = make_cert("anchor 2", serial=2)
    good = do_install(host, targets(host, a2), keep=1)["backup"]["label"]
    partial = host["backups"] / "20991231T235959Z-ffffff"  # newer than any, but no manifest: killed mid-backup
    (partial / "files").mkdir(parents=True)
    assert [m["label"] for m in cf.list_backups(str(host["backups"]))] == [good]
    assert cf.find_backup(str(host["backups"]), "latest")["label"] == good
    a3, _ = make_cert("anchor 3", serial=3)
    newest = do_install(host, targets(host, a3), keep=1)["backup"]["label"]
    assert partial.exists() and not (host["backups"] / good).exists()
    assert [m["label"] for m in cf.list_backups(str(host["backups"]))] == [newest]


@pytest.mark.parametrize("kwargs, match", [
    ({"mode": "rw-r--r--"}, "octal"),
    ({"owner": "no-such-user-here"}, "unknown owner"),
    ({"group": "no-such-group-here"}, "unknown group"),
])
def test_bad_input_is_named(host, kwargs, match):
    with pytest.raises(cf.CertFilesError, match=match) as err:
        cf.make_target(str(host["etc"] / "trust.pem"), b"x", **kwargs)
    assert err.value.step == "input"


def test_missing_directory_and_relative_path_are_named(host):
    with pytest.raises(cf.CertFilesError, match="directory of .* does not exist"):
        cf.plan([cf.make_target(str(host["etc"] / "nope" / "a.pem"), b"x")])
    with pytest.raises(cf.CertFilesError, match="must be absolute"):
        cf.make_target("etc/a.pem", b"x")


def test_stdlib_only_under_system_python(tmp_path):
    """Hosts run /usr/bin/python3 with no third-party package: import and use the module_utils there, packaged as
    AnsiballZ ships them (ansible/module_utils/<file>, nothing else of Ansible)."""
    pem, cert = make_cert("stdlib", serial=0x42)
    pkg = tmp_path / "ansible" / "module_utils"
    pkg.mkdir(parents=True)
    for init in (tmp_path / "ansible" / "__init__.py", pkg / "__init__.py"):
        init.write_text("")
    for name in ("cert_files.py", "pki_format.py"):
        (pkg / name).write_bytes((ROOT / "module_utils" / name).read_bytes())
    code = (
        "import sys, base64\n"
        "sys.path.insert(0, %r)\n"
        "from ansible.module_utils import cert_files\n"
        "print(cert_files.describe_content(base64.b64decode(sys.argv[1]))[0])\n"
        "assert not [n for n in sys.modules if n.split('.')[0] in ('cryptography', 'yaml')]\n"
        "assert {n for n in sys.modules if n.startswith('ansible')} <= {'ansible', 'ansible.module_utils', "
        "'ansible.module_utils.cert_files', 'ansible.module_utils.pki_format'}\n"
    ) % str(tmp_path)
    out = subprocess.run(["/usr/bin/python3", "-I", "-S", "-c", code, base64.b64encode(pem).decode()],
                         capture_output=True, text=True, check=True, env={"PATH": "/usr/bin:/bin"}).stdout
    assert out.startswith("serial 42 · sha256 " + fingerprint(cert))


# ---------------------------------------------------------------- what an insider or a crash can reach (issue 14)

def manifest_of(res):
    root = Path(res["backup"]["path"])
    return root, json.loads((root / "manifest.json").read_text())


def rewrite_manifest(root, manifest, key=None):
    """Write a forged manifest, signed again with key when the forger has it (the HMAC dropped otherwise)."""
    manifest.pop("hmac", None)
    if key:
        manifest["hmac"] = cf.manifest_mac(manifest, key)
    (root / "manifest.json").write_text(json.dumps(manifest))


def test_backups_are_signed_and_record_their_service(host):
    a2, _ = make_cert("anchor 2", serial=2)
    res = do_install(host, targets(host, a2), service="sat")
    root, manifest = manifest_of(res)
    assert manifest["service"] == "sat" and res["backup"]["service"] == "sat" and res["backup"]["signed"]
    assert manifest["hmac"] == cf.manifest_mac(manifest, BACKUP_KEY) and BACKUP_KEY not in json.dumps(manifest)
    out = do_restore(host, "latest", service="sat")
    assert out["changed"] and out["backup"]["service"] == "sat" and out["backup"]["signed"] is True


def test_tampered_copy_with_its_checksum_updated_is_refused_naming_the_backup(host):
    a2, _ = make_cert("anchor 2", serial=2)
    res = do_install(host, targets(host, a2))
    root, manifest = manifest_of(res)
    rogue, _ = make_cert("Rogue CA", serial=0x666)
    copy = root / manifest["files"][0]["copy"]
    copy.write_bytes(rogue)
    manifest["files"][0]["sha256_before"] = hashlib.sha256(rogue).hexdigest()
    hmac_kept = manifest["hmac"]
    (root / "manifest.json").write_text(json.dumps(manifest))  # checksum updated, old HMAC left in place
    before = tree(host["etc"])
    with pytest.raises(cf.CertFilesError, match="backup %s: the manifest HMAC does not verify" % root.name) as err:
        do_restore(host, "latest")
    assert err.value.step == "restore" and tree(host["etc"]) == before and hmac_kept
    rewrite_manifest(root, manifest, key="a key guessed by the insider")
    with pytest.raises(cf.CertFilesError, match="HMAC does not verify"):
        do_restore(host, "latest")
    assert tree(host["etc"]) == before and b"Rogue" not in (host["etc"] / "trust.pem").read_bytes()


def test_unsigned_backup_refused_unless_explicitly_allowed(host):
    a2, _ = make_cert("anchor 2", serial=2)
    res = do_install(host, targets(host, a2))
    root, manifest = manifest_of(res)
    rewrite_manifest(root, manifest)  # as a backup made before this change: no HMAC
    with pytest.raises(cf.CertFilesError, match="has no HMAC .*allow_unsigned_backup"):
        do_restore(host, "latest")
    assert (host["etc"] / "trust.pem").read_bytes() == a2
    out = do_restore(host, "latest", allow_unsigned=True)
    assert out["changed"] and out["backup"]["signed"] is False
    assert (host["etc"] / "trust.pem").read_bytes() == host["anchor"]


def test_manifest_naming_a_foreign_path_is_refused_nothing_written_or_deleted(host, tmp_path):
    passwd = tmp_path / "passwd"  # stands for /etc/passwd
    passwd.write_bytes(b"root:x:0:0:root:/root:/bin/bash\n")
    shadow = tmp_path / "shadow"
    shadow.write_bytes(b"root:*:19000:0:99999:7:::\n")
    a2, _ = make_cert("anchor 2", serial=2)
    res = do_install(host, targets(host, a2))
    root, manifest = manifest_of(res)
    rogue = b"evil::0:0::/:/bin/sh\n"
    (root / "files" / str(passwd).lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
    (root / "files" / str(passwd).lstrip("/")).write_bytes(rogue)
    manifest["files"] += [
        {"path": str(passwd), "secret": False, "existed": True, "sha256_before": hashlib.sha256(rogue).hexdigest(),
         "copy": "files/" + str(passwd).lstrip("/"), "mode": "0644", "uid": 0, "gid": 0},
        {"path": str(shadow), "secret": False, "existed": False, "sha256_before": None}]
    rewrite_manifest(root, manifest, key=BACKUP_KEY)  # even signed with the fleet key
    before = tree(tmp_path / "etc"), passwd.read_bytes(), shadow.read_bytes()
    with pytest.raises(cf.CertFilesError, match="names %s, which is not a path this role manages" % passwd) as err:
        do_restore(host, "latest")
    assert "nothing was written or deleted" in err.value.msg
    assert (tree(tmp_path / "etc"), passwd.read_bytes(), shadow.read_bytes()) == before
    # a path smuggled with ".." (normalising into a managed one) is refused too
    manifest["files"] = [dict(manifest["files"][0], path=str(host["etc"] / "x" / ".." / "trust.pem"))]
    rewrite_manifest(root, manifest, key=BACKUP_KEY)
    with pytest.raises(cf.CertFilesError, match="not a plain absolute path"):
        do_restore(host, "latest")
    assert tree(tmp_path / "etc") == before[0]


def test_restore_refuses_a_backup_of_another_service(host):
    a2, _ = make_cert("anchor 2", serial=2)
    label = do_install(host, targets(host, a2), service="sat")["backup"]["label"]
    with pytest.raises(cf.CertFilesError, match="backup %s was taken for service sat, not renapo" % label):
        do_restore(host, "latest", service="renapo")
    assert (host["etc"] / "trust.pem").read_bytes() == a2


def test_symlink_at_a_destination_is_refused_and_its_target_untouched(host, tmp_path):
    victim = tmp_path / "passwd"
    victim.write_bytes(b"root:x:0:0:root:/root:/bin/bash\n")
    victim.chmod(0o644)
    (host["etc"] / "trust.pem").unlink()
    (host["etc"] / "trust.pem").symlink_to(victim)
    a2, _ = make_cert("anchor 2", serial=2)
    with pytest.raises(cf.CertFilesError, match="destination %s is a symbolic link \\(to %s\\): refused"
                       % (host["etc"] / "trust.pem", victim)) as err:
        do_install(host, targets(host, a2))
    assert err.value.step == "input"
    assert victim.read_bytes() == b"root:x:0:0:root:/root:/bin/bash\n" and (host["etc"] / "trust.pem").is_symlink()
    assert calls(host) == [] and not host["backups"].exists()
    # the same link appearing between the plan and the write is refused by the write itself
    (host["etc"] / "trust.pem").unlink()
    tg = targets(host, a2)
    (host["etc"] / "trust.pem").symlink_to(victim)
    with pytest.raises(cf.CertFilesError, match="symbolic link"):
        do_install(host, tg)
    with pytest.raises(OSError, match="symbolic link; refused"):
        cf.write_atomic(str(host["etc"] / "trust.pem"), a2, 0o644)  # the last check, at the write itself
    assert victim.read_bytes() == b"root:x:0:0:root:/root:/bin/bash\n" and victim.stat().st_mode & 0o777 == 0o644


def test_symlinks_in_the_backup_dir_are_refused(host, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    host["backups"].symlink_to(elsewhere)
    a2, _ = make_cert("anchor 2", serial=2)
    with pytest.raises(cf.CertFilesError, match="backup dir %s is a symbolic link" % host["backups"]):
        do_install(host, targets(host, a2))
    assert list(elsewhere.iterdir()) == [] and (host["etc"] / "trust.pem").read_bytes() == host["anchor"]
    host["backups"].unlink()
    res = do_install(host, targets(host, a2))
    root, manifest = manifest_of(res)
    # a copy replaced by a link to a file of the same bytes elsewhere: refused, never followed
    copy = root / manifest["files"][0]["copy"]
    outside = tmp_path / "outside.pem"
    outside.write_bytes(copy.read_bytes())
    copy.unlink()
    copy.symlink_to(outside)
    with pytest.raises(cf.CertFilesError, match="backup entry %s is a symbolic link" % copy):
        do_restore(host, "latest")
    assert (host["etc"] / "trust.pem").read_bytes() == a2
    # a whole backup that is a link to a directory elsewhere is refused by name, and never listed
    (host["backups"] / "20990101T000000Z-abcdef").symlink_to(root)
    with pytest.raises(cf.CertFilesError, match="backup .*20990101T000000Z-abcdef is a symbolic link"):
        do_restore(host, "20990101T000000Z-abcdef")
    assert [m["label"] for m in cf.list_backups(str(host["backups"]))] == [root.name]
    # the lock file as a link
    lock = host["backups"] / ".lock"
    lock.unlink()
    lock.symlink_to(outside)
    a3, _ = make_cert("anchor 3", serial=3)
    with pytest.raises(cf.CertFilesError, match="backup lock file .* is a symbolic link"):
        do_install(host, targets(host, a3))


@pytest.mark.parametrize("group, written", [(None, 0o600), ("root", 0o640)])
def test_a_secret_asked_0644_is_written_0600_or_0640_with_a_group(host, group, written):
    path = host["etc"] / "new.key"
    target = cf.make_target(str(path), key_pem(), mode="0644", group=group, secret=True)
    assert target.mode == written and "0644 asked, written %04o" % written in target.warning
    do_install(host, [target])
    assert path.stat().st_mode & 0o7777 == written
    # an existing key found world-readable is tightened too, and a stricter mode is kept as asked
    assert cf.make_target(str(path), key_pem(), mode="0400", secret=True).mode == 0o400
    assert cf.make_target(str(path), key_pem(), mode="4755", secret=True).mode == 0o700 & 0o600


@contextlib.contextmanager
def tmpfs(path, size="64k"):
    """A small real file system that fills up: a full disk, not a simulated error."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%s,mode=0755" % size, "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")


@needs_root
def test_full_disk_during_backup_leaves_no_partial_backup_and_says_so(host):
    big = os.urandom(48 * 1024)  # two of them do not fit in 64k
    (host["etc"] / "a.bin").write_bytes(big)
    (host["etc"] / "b.bin").write_bytes(os.urandom(48 * 1024))
    before = tree(host["etc"])
    with tmpfs(host["backups"]):
        tg = [cf.make_target(str(host["etc"] / n), b"new " + n.encode()) for n in ("a.bin", "b.bin")]
        with pytest.raises(cf.CertFilesError) as err:
            do_install(host, tg)
        exc = err.value
        assert exc.step == "backup" and not exc.restored and exc.result["changed"] is False
        assert "backup failed writing the copy of %s: No space left on device" % (host["etc"] / "b.bin") in exc.msg
        assert "the partial backup" in exc.msg and "was removed" in exc.msg
        assert "no file was installed or changed" in exc.msg and "FAILED" not in exc.msg
        assert [p.name for p in host["backups"].iterdir()] == [".lock"]  # no partial backup dir
        assert tree(host["etc"]) == before and calls(host) == []


@needs_root
def test_full_disk_at_the_destination_keeps_the_files_and_says_what_was_written(host, tmp_path):
    dest = tmp_path / "dest"
    with tmpfs(dest):
        (dest / "small.pem").write_bytes(host["anchor"])
        (dest / "big.bin").write_bytes(os.urandom(30 * 1024))
        before = {p.name: p.read_bytes() for p in dest.iterdir()}
        a2, _ = make_cert("anchor 2", serial=2)
        # nothing fits: the first write already fails
        with pytest.raises(cf.CertFilesError) as err:
            do_install(host, [cf.make_target(str(dest / "big.bin"), os.urandom(40 * 1024))])
        exc = err.value
        assert exc.step == "install" and not exc.restored and "FAILED" not in exc.msg
        assert exc.msg.startswith("install failed writing %s: No space left on device; nothing was written: %s are "
                                  "as they were" % (dest / "big.bin", dest / "big.bin"))
        assert "this run's backup" in exc.msg and "was removed" in exc.msg and exc.result["backup"] is None
        assert {p.name: p.read_bytes() for p in dest.iterdir()} == before
        assert cf.list_backups(str(host["backups"])) == []
        assert calls(host) == []
        # the first file fits, the second does not: the first is put back and the message names both
        tg = [cf.make_target(str(dest / "small.pem"), a2), cf.make_target(str(dest / "big.bin"), os.urandom(40 * 1024))]
        with pytest.raises(cf.CertFilesError) as err:
            do_install(host, tg)
        exc = err.value
        assert exc.restored and "install failed writing %s" % (dest / "big.bin") in exc.msg
        assert "(previous files restored: %s; never written: %s)" % (dest / "small.pem", dest / "big.bin") in exc.msg
        assert {p.name: p.read_bytes() for p in dest.iterdir()} == before
        assert not [p for p in dest.iterdir() if p.name.endswith(".tmp")]
