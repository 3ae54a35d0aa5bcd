#!/usr/bin/env bash
# Installs what the project needs on a fresh machine: Debian packages for the lab, and the Python venv.
# Safe to rerun: each part is skipped when its stamp is newer than its inputs.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
# lab hosts (sshd, nginx), the PostgreSQL ticket store's tests, the report's browser test, the oficio PDF's pages
# as images (poppler-utils: pdftoppm), the load generator,
# the lab's mail host (Postfix, OpenDKIM, Dovecot IMAP + LMTP, dnsmasq for the lab domains' DKIM/SPF/MX, dig).
APT_PACKAGES=(openssh-server nginx-light netcat-openbsd python3-venv util-linux procps iproute2
              postgresql chromium fonts-dejavu-core wrk poppler-utils
              postfix opendkim opendkim-tools dovecot-imapd dovecot-lmtpd dnsmasq-base bind9-dnsutils)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "bootstrap: installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # Postfix's postinst must not write a system mail setup: the lab runs its own instances from its state dir.
  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
  # policy-rc.d keeps the packages' own services from starting: the lab starts its own.
  had_policy=0
  [ -e /usr/sbin/policy-rc.d ] && had_policy=1
  [ $had_policy = 1 ] || { printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d; }
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  [ $had_policy = 1 ] || rm -f /usr/sbin/policy-rc.d
fi

PY=${PYTHON:-/usr/bin/python3.11}
if [ ! -x .venv/bin/python ]; then
  echo "bootstrap: creating .venv with $PY"
  "$PY" -m venv .venv
fi
if [ ! -f .venv/.stamp ] || [ requirements.txt -nt .venv/.stamp ] || [ constraints.txt -nt .venv/.stamp ]; then
  echo "bootstrap: installing Python packages (requirements.txt + constraints.txt)"
  .venv/bin/pip install -q --disable-pip-version-check -r requirements.txt -c constraints.txt 2>&1 \
    | grep -v "is ignored: it is neither a file nor a directory" || true
  .venv/bin/python -c "import ansible, cryptography, aiosmtpd, zeep, stdnum, holidays, dkim, authres, dns"
  touch .venv/.stamp
fi

# The awx.awx collection, for awx/configure.yml and its lint/syntax check only (the renewal itself needs no
# collection). Galaxy cannot be reached from these machines; the `ansible` package on PyPI bundles the collection
# (12.x is the line for ansible-core 2.19 and still ships awx.awx). Only that one collection is copied into the
# project-local collections path (ansible.cfg collections_path), so the venv does not grow by the ~470 MB of the
# whole package. The version requirements.yml pins must be the one the package ships.
ANSIBLE_PKG=ansible==12.3.0
ANSIBLE_PKG_SHA256=cd156f82fa87f7a899212b0efa9f7ca3a24d609212de9f78428a572eb01e5414
awx_version=$(.venv/bin/python -c 'import yaml
[c] = [c for c in yaml.safe_load(open("requirements.yml"))["collections"] if c["name"] == "awx.awx"]
print(c["version"])')
awx_dir=.collections/ansible_collections/awx/awx
awx_stamp=.collections/.stamp-awx.awx-$awx_version
if [ ! -f "$awx_stamp" ] || [ ! -f "$awx_dir/MANIFEST.json" ]; then
  echo "bootstrap: installing the awx.awx $awx_version collection from PyPI's $ANSIBLE_PKG"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  .venv/bin/pip download -q --disable-pip-version-check --no-deps --only-binary=:all: -d "$tmp" "$ANSIBLE_PKG" 2>&1 \
    | grep -v "is ignored: it is neither a file nor a directory" || true
  .venv/bin/python - "$tmp" "$ANSIBLE_PKG_SHA256" "$awx_version" <<'PY'
import glob, hashlib, json, shutil, sys, zipfile
from pathlib import Path
tmp, sha, want = sys.argv[1:]
[wheel] = glob.glob(f"{tmp}/ansible-*.whl")
got = hashlib.sha256(Path(wheel).read_bytes()).hexdigest()
if got != sha:
    sys.exit(f"bootstrap: {wheel} has sha256 {got}, expected {sha}")
prefix = "ansible_collections/awx/awx/"
dest = Path(".collections")
shutil.rmtree(dest / prefix, ignore_errors=True)
with zipfile.ZipFile(wheel) as z:
    members = [m for m in z.namelist() if m.startswith(prefix)]
    version = json.loads(z.read(prefix + "MANIFEST.json"))["collection_info"]["version"]
    if version != want:
        sys.exit(f"bootstrap: {wheel} ships awx.awx {version}, requirements.yml pins {want}")
    z.extractall(dest, members)
PY
  rm -f .collections/.stamp-awx.awx-*
  touch "$awx_stamp"
fi
