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
