"""cert_files: stdlib DER facts, bundle merge, backup, atomic install, config test, reload, restore (real files)."""
import base64
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


def do_install(host, tg, **kw):
    kw.setdefault("validate_command", recorder(host, "validate"))
    kw.setdefault("reload_command", recorder(host, "reload"))
    return cf.install(tg, str(host["backups"]), run, now=kw.pop("now", NOW), **kw)


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

    res = cf.restore(str(host["backups"]), "latest", run, reload_command=recorder(host, "reload"))
    assert res["changed"] and trust.read_bytes() == a2 and calls(host)[-1] == "reload"
    res = cf.restore(str(host["backups"]), "latest", run)
    assert res["changed"] is False  # already equal to the backup
    res = cf.restore(str(host["backups"]), "previous", run)
    assert res["changed"] and res["backup"]["label"] == first and trust.read_bytes() == original
    trust.write_bytes(a3)
    assert cf.restore(str(host["backups"]), first, run)["changed"] and trust.read_bytes() == original
    with pytest.raises(cf.CertFilesError, match="not found"):
        cf.restore(str(host["backups"]), "nope", run)


def test_restore_refuses_a_tampered_copy_naming_the_file(host):
    a2, _ = make_cert("anchor 2", serial=2)
    res = do_install(host, targets(host, a2))
    copy = Path(res["backup"]["path"]) / "files" / str(host["etc"] / "trust.pem").lstrip("/")
    copy.write_bytes(copy.read_bytes() + b"\n")
    with pytest.raises(cf.CertFilesError, match="copy of %s does not match" % (host["etc"] / "trust.pem")) as err:
        cf.restore(str(host["backups"]), "latest", run)
    assert err.value.step == "restore" and (host["etc"] / "trust.pem").read_bytes() == a2


def test_restore_validate_failure_puts_back_what_was_there(host):
    a2, _ = make_cert("anchor 2", serial=2)
    do_install(host, targets(host, a2))
    with pytest.raises(cf.CertFilesError, match="config test failed") as err:
        cf.restore(str(host["backups"]), "latest", run, validate_command="/bin/false")
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


def test_stdlib_only_under_system_python():
    """Hosts run /usr/bin/python3 with no third-party package: import and use the module_utils there."""
    pem, cert = make_cert("stdlib", serial=0x42)
    code = (
        "import sys, base64\n"
        "sys.path.insert(0, %r)\n"
        "import cert_files\n"
        "print(cert_files.describe_content(base64.b64decode(sys.argv[1]))[0])\n"
        "assert not [n for n in sys.modules if n.split('.')[0] in ('cryptography', 'ansible', 'yaml')]\n"
    ) % str(ROOT / "module_utils")
    out = subprocess.run(["/usr/bin/python3", "-I", "-S", "-c", code, base64.b64encode(pem).decode()],
                         capture_output=True, text=True, check=True, env={"PATH": "/usr/bin:/bin"}).stdout
    assert out.startswith("serial 42 · sha256 " + fingerprint(cert))
