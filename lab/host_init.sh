#!/usr/bin/env bash
# PID 1 of one lab host: its own hostname, its own file tree over the paths the rollout touches, nginx, then sshd.
# Runs inside `unshare --pid --fork --kill-child --mount-proc --uts --propagation private` (see lab/labctl.py).
set -euo pipefail
name=$1 tree=$2
hostname "$name"
# Each path the rollout or nginx writes gets the host's own directory; anything not listed is shared by all hosts.
mount --bind "$tree/etc-nginx" /etc/nginx
mount --bind "$tree/etc-consulta" /etc/consulta
mount --bind "$tree/backups" /var/backups/consulta
mount --bind "$tree/log-nginx" /var/log/nginx
mount --bind "$tree/lib-nginx" /var/lib/nginx
mount -t tmpfs -o mode=0755 tmpfs /run
mkdir -p /run/sshd
nginx
exec /usr/sbin/sshd -D -e -f "$tree/sshd_config"
