"""Host-side certificate files: PEM/DER description, bundle merging, backup, atomic install and restore.

Runs on the managed hosts under Debian's /usr/bin/python3, so it uses the standard library only.
Commands (config test, reload) are run through a `run(cmd) -> (rc, stdout, stderr)` callable the caller supplies.

What an insider or a crash can reach is checked here, not trusted: each backup manifest carries an HMAC-SHA256 under a
per-fleet key and the service it was taken for; a restore verifies it, writes only the managed paths the caller lists
and only for the service the caller expects; symbolic links at a destination or inside the backup dir are refused;
secret files are never more open than 0600 (0640 with a configured group); a failed backup leaves no partial copy.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import grp
import hashlib
import hmac
import json
import os
import pwd
import re
import secrets
import shutil
import stat
import tempfile
from dataclasses import dataclass, field, replace

from ansible.module_utils.pki_format import der_children, der_tlv, pem_matches, serial_text, sha256_fingerprint

MANIFEST = "manifest.json"
HMAC_FIELD = "hmac"
SECRET_MODE = 0o600
SECRET_MODE_GROUP = 0o640
LOCK = ".lock"
HIDDEN_CHANGED = "<secret file changed>"
HIDDEN = "<secret file>"
# Why a certificate of the current file is missing from the wanted content, unless the caller says (removal_note).
REMOVED_DEFAULT = "not in the new content"
_LABEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_CERT_LABELS = ("CERTIFICATE", "X509 CERTIFICATE")
_OID_CN = b"\x55\x04\x03"


class CertFilesError(Exception):
    """A defect, with the step of the procedure where it happened."""

    def __init__(self, step, msg, restored=False, result=None):
        super().__init__(msg)
        self.step = step
        self.msg = msg
        self.restored = restored
        self.result = result or {}


# ---------------------------------------------------------------- X.509 facts (pki_format parses the DER)

def _der_time(tag, raw):
    text = raw.decode("ascii")
    if tag == 0x17:  # UTCTime: RFC 5280 maps YY < 50 to 20YY
        fmt = "%y%m%d%H%M%SZ"
    elif tag == 0x18:
        fmt = "%Y%m%d%H%M%SZ"
    else:
        raise ValueError("bad time tag 0x%02x" % tag)
    return dt.datetime.strptime(text, fmt).replace(tzinfo=dt.UTC)


def _der_string(tag, raw):
    if tag == 0x1E:
        return raw.decode("utf-16-be")
    if tag == 0x14:
        return raw.decode("latin-1")
    return raw.decode("utf-8", "replace")


def _common_name(data, start, end):
    for _set_tag, ss, se in der_children(data, start, end):
        for _seq_tag, as_, ae in der_children(data, ss, se):
            parts = list(der_children(data, as_, ae))
            if len(parts) == 2 and parts[0][0] == 0x06 and data[parts[0][1]:parts[0][2]] == _OID_CN:
                tag, vs, ve = parts[1]
                return _der_string(tag, data[vs:ve])
    return ""


@dataclass(frozen=True)
class CertInfo:
    serial_hex: str
    fingerprint: str  # SHA-256 of the DER, colon-separated upper-case hex (openssl's form)
    subject_cn: str
    issuer_cn: str
    not_before: dt.datetime
    not_after: dt.datetime
    der: bytes = field(repr=False)

    def describe(self):
        return "serial %s · sha256 %s · CN=%s · not_after %s" % (
            self.serial_hex, self.fingerprint, self.subject_cn, self.not_after.strftime("%Y-%m-%dT%H:%M:%SZ"))


def parse_certificate(der):
    """Parse serial, subject/issuer CN and validity out of one DER X.509 certificate."""
    der = bytes(der)
    try:
        tag, s, e = der_tlv(der, 0)
        if tag != 0x30 or e != len(der):
            raise ValueError("not a DER SEQUENCE")
        tag, ts, te = next(der_children(der, s, e))
        if tag != 0x30:
            raise ValueError("no tbsCertificate")
        items = list(der_children(der, ts, te))
        if items and items[0][0] == 0xA0:  # explicit version
            items = items[1:]
        (serial_tag, ss, se), _alg, issuer, validity, subject = items[:5]
        if serial_tag != 0x02 or validity[0] != 0x30:
            raise ValueError("unexpected tbsCertificate layout")
        not_before, not_after = [_der_time(t, der[a:b]) for t, a, b in der_children(der, validity[1], validity[2])]
    except (StopIteration, ValueError, UnicodeDecodeError) as exc:
        raise ValueError("not an X.509 certificate: %s" % exc) from None
    return CertInfo(
        serial_hex=serial_text(int.from_bytes(der[ss:se], "big", signed=True)),
        fingerprint=sha256_fingerprint(der),
        subject_cn=_common_name(der, subject[1], subject[2]),
        issuer_cn=_common_name(der, issuer[1], issuer[2]),
        not_before=not_before, not_after=not_after, der=der)


def pem_certificates(data):
    """Return [(pem_block_bytes, CertInfo)] for each certificate block in a PEM text (other blocks skipped)."""
    out = []
    for label, der, block in pem_matches(data):
        if label not in _CERT_LABELS:
            continue
        try:
            out.append((block, parse_certificate(der)))
        except ValueError as exc:
            raise ValueError("certificate %d: %s" % (len(out) + 1, exc)) from None
    return out


def describe_content(content, secret=False):
    """Human description of file content, never its bytes: certificates, else a sha256; secrets only as such."""
    if content is None:
        return ["absent"]
    if secret:
        return ["secret file"]
    try:
        certs = [c for _b, c in pem_certificates(content)] or [parse_certificate(content)]
        return [c.describe() for c in certs]
    except ValueError:
        return ["sha256 %s (%d bytes)" % (hashlib.sha256(content).hexdigest(), len(content))]


def _certificates_or_none(content):
    """CertInfo of each certificate of a PEM file (or a lone DER one), or None when content is not certificates."""
    if content is None:
        return []
    try:
        return [c for _b, c in pem_certificates(content)] or [parse_certificate(content)]
    except ValueError:
        return None


def certificate_changes(before, after, now, removal_note=None):
    """(added, removed) certificates between two contents, by SHA-256; each removal says why (expired, or the note).

    Both are [] unless both contents are certificates."""
    old, new = _certificates_or_none(before), _certificates_or_none(after)
    if old is None or new is None:
        return [], []
    old_fps, new_fps = {c.fingerprint for c in old}, {c.fingerprint for c in new}

    def entry(c, **extra):
        return dict({"fingerprint": c.fingerprint, "subject_cn": c.subject_cn,
                     "not_after": c.not_after.strftime("%Y-%m-%dT%H:%M:%SZ")}, **extra)

    added = [entry(c) for c in new if c.fingerprint not in old_fps]
    removed = [entry(c, reason="expired" if c.not_after < now else (removal_note or REMOVED_DEFAULT))
               for c in old if c.fingerprint not in new_fps]
    return added, removed


def merge_pem_bundles(current, new, now):
    """Merge PEM certificate bundles: existing first, new last, deduplicated by SHA-256 of the DER, expired dropped.

    Returns bytes; when nothing is added or dropped the current bytes come back untouched (idempotent rewrites).
    """
    as_bytes = [x.encode("ascii") if isinstance(x, str) else bytes(x or b"") for x in (current, new)]
    cur = pem_certificates(as_bytes[0])
    seen, kept = set(), []
    for block, info in cur + pem_certificates(as_bytes[1]):
        if info.fingerprint in seen or info.not_after < now:
            continue
        seen.add(info.fingerprint)
        kept.append(block)
    if kept == [b for b, _i in cur]:
        return as_bytes[0]
    return b"".join(b.strip() + b"\n" for b in kept)


# ---------------------------------------------------------------- file state and atomic writes

@dataclass
class FileState:
    path: str
    content: bytes | None  # None: the file does not exist
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None

    @property
    def sha256(self):
        return None if self.content is None else hashlib.sha256(self.content).hexdigest()


@dataclass
class Target:
    """What one file must become; content None means absent.

    merge_content: PEM certificates to merge into whatever the file holds when the plan is made (under the backup
    dir's lock in install), so two concurrent merges both land; content is then recomputed by `plan`."""
    path: str
    content: bytes | None
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    secret: bool = False
    merge_content: bytes | None = None
    now: dt.datetime | None = None
    removal_note: str | None = None
    warning: str | None = None  # said to the operator (a secret's mode tightened)


def _symlink_refused(step, path, what="destination"):
    try:
        points_to = os.readlink(path)
    except OSError:
        points_to = "?"
    return CertFilesError(step, "%s %s is a symbolic link (to %s): refused, nothing was written there nor to its "
                          "target" % (what, path, points_to))


def read_state(path):
    """The file as it is, never through a symbolic link: root writing through one would overwrite its target."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return FileState(path, None)
    if stat.S_ISLNK(st.st_mode):
        raise _symlink_refused("input", path)
    if not stat.S_ISREG(st.st_mode):
        raise CertFilesError("input", "%s is not a regular file" % path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return FileState(path, None)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # replaced by a link since the lstat
            raise _symlink_refused("input", path) from None
        raise
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise CertFilesError("input", "%s is not a regular file" % path)
        return FileState(path, fh.read(), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)


def _read_under(root, rel):
    """Bytes of root/rel, opened component by component with O_NOFOLLOW: a link anywhere inside a backup is refused."""
    parts = [x for x in rel.split("/") if x]
    if not parts or any(x in (".", "..") for x in parts):
        raise CertFilesError("restore", "backup entry %r is not a plain relative path" % rel)
    fds = []
    try:
        fds.append(os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW))
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            flags = os.O_RDONLY | os.O_NOFOLLOW | (os.O_NONBLOCK if last else os.O_DIRECTORY)
            try:
                fds.append(os.open(part, flags, dir_fd=fds[-1]))
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    bad = os.path.join(root, *parts[:i + 1])
                    if os.path.islink(bad):
                        raise _symlink_refused("restore", bad, "backup entry") from None
                raise
        st = os.fstat(fds[-1])
        if not stat.S_ISREG(st.st_mode):
            raise CertFilesError("restore", "backup entry %s is not a regular file" % os.path.join(root, rel))
        chunks = []
        while True:
            chunk = os.read(fds[-1], 1 << 16)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
    finally:
        for fd in fds:
            os.close(fd)


def resolve_uid(owner):
    if owner is None or str(owner).isdigit():
        return None if owner is None else int(owner)
    try:
        return pwd.getpwnam(owner).pw_uid
    except KeyError:
        raise CertFilesError("input", "unknown owner %r" % owner) from None


def resolve_gid(group):
    if group is None or str(group).isdigit():
        return None if group is None else int(group)
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise CertFilesError("input", "unknown group %r" % group) from None


def parse_mode(mode):
    if mode is None:
        return None
    if not re.fullmatch(r"0?[0-7]{3,4}", str(mode)):
        raise CertFilesError("input", "mode %r is not an octal string such as '0644'" % mode)
    return int(str(mode), 8)


def fsync_dir(path):
    """fsync a directory so a rename into it survives a crash (the second half of every atomic write)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path, content, mode, uid=-1, gid=-1):
    """Temp file in the same directory, write, fsync, chmod/chown, rename over, fsync the directory."""
    path = os.path.abspath(path)
    directory = os.path.dirname(path)
    if os.path.islink(path):  # checked again here: the plan's check may be minutes old
        raise OSError(errno.ELOOP, "is a symbolic link; refused, nothing written there nor to its target", path)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".%s." % os.path.basename(path), suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:  # mkstemp's 0600 means a key is never briefly world-readable
            fh.write(content)
            fh.flush()
            os.fsync(fh.fileno())
            os.fchown(fh.fileno(), -1 if uid is None else uid, -1 if gid is None else gid)
            os.fchmod(fh.fileno(), mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(directory)


def _differs(target, state):
    if target.content is None or state.content is None:
        return (target.content is None) != (state.content is None)
    return (target.content != state.content or target.mode != state.mode
            or target.uid != state.uid or target.gid != state.gid)


def apply_targets(targets):
    for t in targets:
        if t.content is None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(t.path)
                fsync_dir(os.path.dirname(os.path.abspath(t.path)))
        else:
            write_atomic(t.path, t.content, t.mode, t.uid, t.gid)


# ---------------------------------------------------------------- planning

@dataclass
class Plan:
    target: Target
    before: FileState

    @property
    def changed(self):
        return _differs(self.target, self.before)

    def changes(self):
        """(added, removed) certificates; never for a secret file."""
        t = self.target
        if t.secret:
            return [], []
        return certificate_changes(self.before.content, t.content, t.now or dt.datetime.now(dt.UTC), t.removal_note)

    def report(self):
        t, b = self.target, self.before
        added, removed = self.changes()
        return {"path": t.path, "sha256_before": b.sha256,
                "sha256_after": None if t.content is None else hashlib.sha256(t.content).hexdigest(),
                "changed": self.changed, "secret": t.secret,
                "description_before": describe_content(b.content, t.secret),
                "description": describe_content(t.content, t.secret),
                "added": added, "removed": removed}

    def diff(self):
        t, b = self.target, self.before
        if t.secret:  # only whether it changed, not even a checksum
            before = "absent" if b.content is None else HIDDEN
            after = "absent" if t.content is None else HIDDEN_CHANGED
        else:
            # Each certificate that goes says why on its own '-' line: a reader sees drift removed, not just a change.
            why = {r["fingerprint"]: r["reason"] for r in self.changes()[1]}
            old = _certificates_or_none(b.content)
            lines = describe_content(b.content, False)
            if old and len(old) == len(lines):
                lines = [line + (" · removed: %s" % why[c.fingerprint] if c.fingerprint in why else "")
                         for line, c in zip(lines, old, strict=True)]
            before, after = "\n".join(lines), "\n".join(describe_content(t.content, False))
        return {"before_header": t.path, "after_header": t.path, "before": before + "\n", "after": after + "\n"}


def _merged(path, current, add, now):
    try:
        content = merge_pem_bundles(current, add, now or dt.datetime.now(dt.UTC))
    except ValueError as exc:
        raise CertFilesError("input", "cannot merge into %s: %s" % (path, exc)) from None
    if not pem_certificates(content):
        raise CertFilesError("input", "merged bundle %s would hold no valid certificate" % path)
    return content


def make_target(path, content, mode=None, owner=None, group=None, secret=False, merge=False, now=None,
                removal_note=None):
    """Resolve a requested file into a Target: default mode/owner from what exists; a merge is only recorded here
    (checked against today's file) and computed again by `plan`, under the lock, against the file as it is then."""
    if not os.path.isabs(path):
        raise CertFilesError("input", "path %r must be absolute" % path)
    state = read_state(path)
    add = None
    if merge:
        add = bytes(content)
        content = _merged(path, state.content, add, now)
    asked, uid, gid = parse_mode(mode), resolve_uid(owner), resolve_gid(group)
    exists = state.content is not None
    mode = asked if asked is not None else (state.mode if exists else (0o600 if secret else 0o644))
    warning = None
    if secret:
        # A key is never readable by others (nor by a group unless one is configured), whatever mode is asked.
        ceiling = SECRET_MODE_GROUP if group is not None else SECRET_MODE
        if mode & ~ceiling:
            warning = ("%s is a secret file: mode %04o %s, written %04o (a secret is never more open than %04o%s)"
                       % (path, mode, "asked" if asked is not None else "found", mode & ceiling, ceiling,
                          " with a configured group" if group is not None else ""))
            mode &= ceiling
    return Target(path, content, mode,
                  uid if uid is not None else (state.uid if exists else os.geteuid()),
                  gid if gid is not None else (state.gid if exists else os.getegid()),
                  secret, merge_content=add, now=now, removal_note=removal_note, warning=warning)


def plan(targets):
    """Each target against the file as it is now; a merge target is merged into that very content."""
    paths = [t.path for t in targets]
    if len(set(paths)) != len(paths):
        raise CertFilesError("input", "a path is listed twice")
    for t in targets:
        if t.content is not None and not os.path.isdir(os.path.dirname(t.path)):
            raise CertFilesError("input", "directory of %s does not exist" % t.path)
    plans = []
    for t in targets:
        before = read_state(t.path)
        if t.merge_content is not None:
            t = replace(t, content=_merged(t.path, before.content, t.merge_content, t.now))
        plans.append(Plan(t, before))
    return plans


# ---------------------------------------------------------------- backups

def new_label(now):
    return now.strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


def _copy_name(path):
    return os.path.join("files", path.lstrip("/"))


def _owner_name(uid):
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _group_name(gid):
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


@contextlib.contextmanager
def locked(backup_dir):
    """Serialise concurrent runs on one host (two playbooks, or a rollout and a rollback)."""
    backup_dir = os.path.abspath(backup_dir)
    if os.path.islink(backup_dir):
        raise _symlink_refused("backup", backup_dir, "backup dir")
    os.makedirs(backup_dir, mode=0o700, exist_ok=True)
    lock = os.path.join(backup_dir, LOCK)
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _symlink_refused("backup", lock, "backup lock file") from None
        raise
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def manifest_mac(manifest, key):
    """HMAC-SHA256 of a manifest (every field but the HMAC itself and the local path), canonical JSON."""
    body = {k: v for k, v in manifest.items() if k not in (HMAC_FIELD, "path")}
    data = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")
    return hmac.new(key.encode("utf-8") if isinstance(key, str) else bytes(key), data, hashlib.sha256).hexdigest()


def verify_manifest(manifest, key, allow_unsigned=False):
    """True when the manifest's HMAC verifies under key; False for an unsigned one explicitly allowed; else refuse."""
    label = manifest.get("label")
    mac = manifest.get(HMAC_FIELD)
    if mac is None:
        if allow_unsigned:
            return False
        raise CertFilesError("restore", "backup %s has no HMAC (made before backups were signed): refused, nothing "
                             "was written; allow_unsigned_backup=true accepts it during the transition" % label)
    if not key:
        raise CertFilesError("restore", "no backup key given: backup %s cannot be verified, nothing was written"
                             % label)
    if not isinstance(mac, str) or not hmac.compare_digest(mac, manifest_mac(manifest, key)):
        raise CertFilesError("restore", "backup %s: the manifest HMAC does not verify (altered, or signed with "
                             "another fleet key): refused, nothing was written" % label)
    return True


def write_backup(backup_dir, label, plans, now, key=None, service=None):
    """Copy every current file byte for byte (mode/owner kept) and write manifest.json last, atomically.

    The manifest records the service and is signed with key (HMAC-SHA256). On any failure the partial backup dir
    is removed and CertFilesError says what was copied and what was not."""
    if not _LABEL_RE.match(label) or label in ("latest", "previous"):
        raise CertFilesError("backup", "backup label %r is not a plain name" % label)
    root = os.path.join(backup_dir, label)
    try:
        os.mkdir(root, 0o700)
    except FileExistsError:
        raise CertFilesError("backup", "backup %s already exists" % root) from None
    except OSError as exc:
        raise CertFilesError("backup", "backup failed: cannot create %s: %s; no backup was written" % (
            root, exc.strerror or exc)) from None
    entries, copied, current = [], [], MANIFEST
    try:
        for p in plans:
            b = p.before
            entry = {"path": b.path, "secret": p.target.secret, "existed": b.content is not None,
                     "sha256_before": b.sha256,
                     "sha256_after": None if p.target.content is None else hashlib.sha256(p.target.content).hexdigest()}
            if b.content is not None:
                current = b.path
                copy = os.path.join(root, _copy_name(b.path))
                os.makedirs(os.path.dirname(copy), mode=0o700, exist_ok=True)
                write_atomic(copy, b.content, b.mode, b.uid, b.gid)
                copied.append(b.path)
                entry.update(copy=_copy_name(b.path), mode="%04o" % b.mode, uid=b.uid, gid=b.gid,
                             owner=_owner_name(b.uid), group=_group_name(b.gid))
            entries.append(entry)
        current = MANIFEST
        manifest = {"label": label, "time": now.strftime("%Y-%m-%dT%H:%M:%S.%fZ"), "service": service,
                    "files": entries}
        if key:
            manifest[HMAC_FIELD] = manifest_mac(manifest, key)
        write_atomic(os.path.join(root, MANIFEST), json.dumps(manifest, indent=1).encode() + b"\n", 0o600)
    except OSError as exc:
        what = "the manifest" if current == MANIFEST else "the copy of %s" % current
        try:
            shutil.rmtree(root)
            cleaned = "the partial backup %s was removed" % root
        except OSError as rm_exc:
            cleaned = "the partial backup %s could NOT be removed (%s): delete it by hand" % (
                root, rm_exc.strerror or rm_exc)
        raise CertFilesError("backup", "backup failed writing %s: %s; %s; no file was installed or changed (%s are "
                             "as they were)" % (what, exc.strerror or exc, cleaned,
                                                ", ".join(p.target.path for p in plans))) from None
    return {"label": label, "path": root, "service": service, "signed": bool(key)}


def list_backups(backup_dir):
    """Complete backups (with a readable manifest), oldest first; an interrupted one has no manifest and is skipped."""
    out = []
    try:
        names = os.listdir(backup_dir)
    except FileNotFoundError:
        return out
    for name in names:
        if name.startswith(".") or not _LABEL_RE.match(name):
            continue
        root = os.path.join(backup_dir, name)
        try:
            if not stat.S_ISDIR(os.lstat(root).st_mode):  # a symbolic link is never a backup
                continue
        except OSError:  # pruned meanwhile
            continue
        try:
            manifest = json.loads(_read_under(root, MANIFEST))
        except (OSError, ValueError, CertFilesError):
            continue
        if isinstance(manifest, dict) and manifest.get("label") == name:
            manifest["path"] = os.path.join(backup_dir, name)
            out.append(manifest)
    return sorted(out, key=lambda m: (m.get("time", ""), m["label"]))


def find_backup(backup_dir, name):
    if os.path.islink(backup_dir):
        raise _symlink_refused("restore", backup_dir, "backup dir")
    if _LABEL_RE.match(name) and os.path.islink(os.path.join(backup_dir, name)):
        raise _symlink_refused("restore", os.path.join(backup_dir, name), "backup")
    backups = list_backups(backup_dir)
    if name in ("latest", "previous"):
        need = 1 if name == "latest" else 2
        if len(backups) < need:
            raise CertFilesError("restore", "no %s backup in %s (%d complete)" % (name, backup_dir, len(backups)))
        return backups[-need]
    for m in backups:
        if m["label"] == name:
            return m
    raise CertFilesError("restore", "backup %r not found in %s" % (name, backup_dir))


def backup_targets(manifest, managed_paths):
    """Targets that put back what a backup recorded, after checking every entry: a path the caller manages, the
    copy where it must be, its checksum. Any bad entry refuses the whole backup before anything is written."""
    label = manifest.get("label")
    managed = {os.path.normpath(p) for p in managed_paths if p}
    files = manifest.get("files")
    if not isinstance(files, list) or not all(isinstance(e, dict) for e in files):
        raise CertFilesError("restore", "backup %s: the manifest has no list of files" % label)
    seen, targets = set(), []
    for entry in files:
        path = entry.get("path")
        if not isinstance(path, str) or not os.path.isabs(path) or os.path.normpath(path) != path:
            raise CertFilesError("restore", "backup %s names %r, not a plain absolute path: refused, nothing was "
                                 "written or deleted" % (label, path))
        if path not in managed:
            raise CertFilesError("restore", "backup %s names %s, which is not a path this role manages (%s): "
                                 "refused, nothing was written or deleted" % (label, path, ", ".join(sorted(managed))))
        if path in seen:
            raise CertFilesError("restore", "backup %s names %s twice: refused" % (label, path))
        seen.add(path)
    for entry in files:
        path, secret = entry["path"], bool(entry.get("secret"))
        if entry.get("existed") is False:
            targets.append(Target(path, None, secret=secret))
            continue
        if entry.get("existed") is not True or entry.get("copy") != _copy_name(path):
            raise CertFilesError("restore", "backup %s: the entry of %s is malformed" % (label, path))
        try:
            content = _read_under(manifest["path"], entry["copy"])
        except OSError:
            raise CertFilesError("restore", "backup %s: copy of %s is missing" % (label, path)) from None
        if hashlib.sha256(content).hexdigest() != entry.get("sha256_before"):
            raise CertFilesError("restore", "backup %s: copy of %s does not match its manifest checksum"
                                 % (label, path))
        try:
            mode, uid, gid = int(entry["mode"], 8), int(entry["uid"]), int(entry["gid"])
        except (KeyError, TypeError, ValueError):
            raise CertFilesError("restore", "backup %s: mode/owner of %s are malformed" % (label, path)) from None
        if secret:
            mode &= SECRET_MODE_GROUP
        targets.append(Target(path, content, mode & 0o7777, uid, gid, secret))
    return targets


def prune_backups(backup_dir, keep, protect=None):
    """Remove the oldest complete backups beyond `keep`, never `protect` (the one just made)."""
    backups = [m for m in list_backups(backup_dir) if m["label"] != protect]
    excess = len(backups) - max(keep - (1 if protect else 0), 0)
    removed = []
    for m in backups[:max(excess, 0)]:
        shutil.rmtree(m["path"])
        removed.append(m["label"])
    return removed


# ---------------------------------------------------------------- the procedure: install / restore

def _tail(rc, out, err, lines=5):
    text = (err or "").strip() or (out or "").strip() or "rc=%s" % rc
    return "\n".join(text.splitlines()[-lines:])[-800:]


def _result(plans, diff):
    res = {"changed": any(p.changed for p in plans), "files": [p.report() for p in plans],
           "backup": None, "restored": False}
    if diff:
        res["diff"] = [p.diff() for p in plans if p.changed]
    return res


def _apply_tracked(targets, done):
    """apply_targets, appending each target to done once its file is written (or removed)."""
    for t in targets:
        apply_targets([t])
        done.append(t)


def _commit(plans, run, validate_command, reload_command, res):
    """Write the targets, test the config, reload; on any failure put back what was written (and reload).

    Every message says which files were written, which were put back, and which were never touched."""
    changed = [p for p in plans if p.changed]
    before = {p.target.path: p.before for p in changed}
    written = []

    def fail(step, msg, reload_again=False):
        paths = [t.path for t in written]
        untouched = [p.target.path for p in changed if p.target.path not in paths]
        if not written:
            res["changed"] = False
            raise CertFilesError(step, "%s; nothing was written: %s are as they were" % (
                msg, ", ".join(untouched)), False, res)
        put_back = []
        try:
            _apply_tracked([Target(b.path, b.content, b.mode, b.uid, b.gid) for b in (before[x] for x in paths)],
                           put_back)
        except OSError as exc:
            done = [t.path for t in put_back]
            raise CertFilesError(step, "%s; written: %s; putting the previous files back FAILED (%s): put back: %s;"
                                 " NOT put back: %s" % (msg, ", ".join(paths), exc.strerror or exc,
                                                        ", ".join(done) or "none",
                                                        ", ".join(x for x in paths if x not in done)), False, res) \
                from None
        res["restored"] = True
        if reload_again and reload_command:
            rc, out, err = run(reload_command)
            if rc != 0:
                msg += "; reload after restore failed too: %s" % _tail(rc, out, err)
        raise CertFilesError(step, msg + " (previous files restored: %s%s)" % (
            ", ".join(paths), "; never written: " + ", ".join(untouched) if untouched else ""), True, res)

    try:
        _apply_tracked([p.target for p in changed], written)
    except OSError as exc:
        failed = next(p.target.path for p in changed if p.target.path not in [t.path for t in written])
        fail("install", "install failed writing %s: %s" % (failed, exc.strerror or exc))
    if validate_command:
        rc, out, err = run(validate_command)
        if rc != 0:
            fail("validate", "config test failed: %s" % _tail(rc, out, err))
    if reload_command:
        rc, out, err = run(reload_command)
        if rc != 0:
            fail("reload", "reload failed: %s" % _tail(rc, out, err), reload_again=True)


def install(targets, backup_dir, run, validate_command=None, reload_command=None, keep=5, label=None,
            check_mode=False, diff=False, now=None, key=None, service=None):
    """Back up (manifest signed with key, recording service), install atomically, config test, reload, prune.

    Raises CertFilesError(step, ...) on failure."""
    now = now or dt.datetime.now(dt.UTC)
    res = _result(plan(targets), diff)
    if not res["changed"] or check_mode:
        return res
    with locked(backup_dir):
        plans = plan(targets)  # again under the lock: another run may have just written these files
        res = _result(plans, diff)
        if not res["changed"]:
            return res
        try:
            res["backup"] = write_backup(backup_dir, label or new_label(now), plans, now, key=key, service=service)
        except CertFilesError as exc:
            exc.result = dict(res, changed=False)
            raise
        try:
            _commit(plans, run, validate_command, reload_command, res)
        except CertFilesError as exc:
            if not exc.restored and not res["changed"] and res["backup"]:
                # Nothing was written: this backup holds today's files, and as "latest" it would hide the real
                # previous state from a rollback.
                try:
                    shutil.rmtree(res["backup"]["path"])
                    exc.msg += "; this run's backup %s was removed" % res["backup"]["label"]
                    res["backup"] = None
                except OSError as rm_exc:
                    exc.msg += "; this run's backup %s could not be removed: %s" % (
                        res["backup"]["label"], rm_exc.strerror or rm_exc)
                exc.args = (exc.msg,)
            raise
        res["pruned"] = prune_backups(backup_dir, keep, protect=res["backup"]["label"])
    return res


def restore(backup_dir, name, run, validate_command=None, reload_command=None, check_mode=False, diff=False,
            *, key, managed_paths, service=None, allow_unsigned=False):
    """Put back a named (or latest/previous) backup: its HMAC verified under key (unsigned only if allow_unsigned),
    taken for service (when given), naming only managed_paths, every copy checked; idempotent."""
    manifest = find_backup(backup_dir, name)
    signed = verify_manifest(manifest, key, allow_unsigned)
    taken_for = manifest.get("service")
    if service and taken_for != service:
        raise CertFilesError("restore", "backup %s was taken for service %s, not %s: refused, nothing was written"
                             % (manifest["label"], taken_for or "(not recorded)", service))
    targets = backup_targets(manifest, managed_paths)
    info = {"label": manifest["label"], "path": manifest["path"], "service": taken_for, "signed": signed}
    res = _result(plan(targets), diff)
    res["backup"] = info
    if res["changed"] and not check_mode:
        with locked(backup_dir):
            plans = plan(targets)
            res = _result(plans, diff)
            res["backup"] = info
            if res["changed"]:
                _commit(plans, run, validate_command, reload_command, res)
    return res
