#!/usr/bin/python
# Copyright: (c) 2026, DGTIC Operaciones
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

DOCUMENTATION = r"""
---
module: cert_deploy
short_description: Back up, atomically install, config-test and reload certificate files on a host, or restore a backup
description:
  - One call per host does the whole host-side step of a certificate rollout, so round trips stay low.
  - C(install) compares the wanted files with what is there; when anything differs it copies the current files byte for
    byte into a timestamped backup with a checksum manifest, replaces each file atomically (temp file, fsync, rename),
    runs the config test and the reload, and prunes old backups. A failed config test or reload puts the previous
    files back byte for byte (and reloads again) before the module fails naming the step.
  - C(restore) puts back a named, the latest or the previous backup after verifying its manifest's HMAC (per-fleet
    I(backup_key)), that it was taken for the expected I(service), that it names only I(managed_paths), and every
    copy against the manifest; then runs the config test and the reload the same way.
  - C(list) returns the complete backups.
  - Runs with the host's standard library only. Secret files (keys, keystores) never show their content, not even in
    the diff; only C(<secret file changed>).
version_added: "0.1.0"
author: DGTIC Operaciones (@dgtic-operaciones)
extends_documentation_fragment: [attributes.diff]
options:
  action:
    description: What to do.
    type: str
    choices: [install, restore, list]
    default: install
  files:
    description: The files to install (required for I(action=install)).
    type: list
    elements: dict
    suboptions:
      path:
        description:
          - Absolute path of the file on the host; its directory must exist.
          - A symbolic link at the path is refused (never followed), naming it; so is one in I(backup_dir).
        type: path
        required: true
      content:
        description: The wanted bytes, base64-encoded. Never logged.
        type: str
        required: true
      mode:
        description:
          - Quoted octal mode, for example C("0644").
          - Default keeps the current mode; a new file gets 0644, or 0600 when I(secret=true).
        type: str
      owner:
        description: Owner name or uid. Default keeps the current owner.
        type: str
      group:
        description: Group name or gid. Default keeps the current group.
        type: str
      secret:
        description:
          - The file is a key or keystore; its content and diff are never shown.
          - Its mode is never more open than 0600, or 0640 when I(group) is given, whatever I(mode) asks (or the file
            has); a wider mode is narrowed with a warning.
        type: bool
        default: false
      merge:
        description:
          - Treat I(content) as PEM certificates to add to the PEM bundle already at I(path) (existing entries first,
            duplicates by SHA-256 fingerprint removed, expired ones dropped) instead of replacing it.
          - The merge is computed under the lock of I(backup_dir), against the file as it is then, so two concurrent
            merges into one file both land.
        type: bool
        default: false
      removal_note:
        description:
          - Why certificates the file holds now and I(content) does not are removed, shown on their C(-) line of the
            diff and in RV(files[].removed), for example C(not in the trust-anchor registry). Expired ones always say
            C(expired).
          - Default C(not in the new content).
        type: str
  backup_dir:
    description: Directory holding one sub-directory per backup (created mode 0700).
    type: path
    required: true
  backup_key:
    description:
      - Per-fleet secret key; each backup manifest is signed with HMAC-SHA256 under it, and a restore refuses a
        backup whose HMAC does not verify (a copy altered together with its checksum, a manifest rewritten).
      - Required for I(action=restore) and I(action=install) (not in check mode, which writes no backup).
      - Delivered like other secrets (ansible-vault or an AWX credential); never logged, never written to the host.
    type: str
  service:
    description:
      - For I(action=install), the service the files are for (for example C(renapo) or C(sat)), recorded in the
        backup's signed manifest. Required for I(action=install) except in check mode.
      - For I(action=restore), the service the backup must have been taken for; a backup of another service is
        refused. Default accept the backup's own service, returned in RV(backup.service).
    type: str
  managed_paths:
    description:
      - For I(action=restore), every path the caller manages on this host. A manifest entry naming any other path
        refuses the whole restore before anything is written or deleted. Required for I(action=restore).
    type: list
    elements: path
  allow_unsigned_backup:
    description:
      - Accept a backup made before manifests were signed (no HMAC) for I(action=restore). Only for the transition
        after the upgrade; such a backup is checked against its own checksums only.
    type: bool
    default: false
  backup_keep:
    description: How many complete backups to keep, the new one included.
    type: int
    default: 5
  backup_label:
    description: Name of the backup to create. Default a UTC timestamp C(YYYYmmddTHHMMSSZ) plus a random suffix.
    type: str
  backup:
    description:
      - For I(action=restore), the backup to restore, by label, or C(latest) (the newest, holding the files as they
        were before the last change) or C(previous) (the one before it).
    type: str
  validate_command:
    description: Config test run after the files are written, for example C(nginx -t). A list or a string.
    type: raw
  reload_command:
    description: Reload run after a passing config test, for example C(nginx -s reload). A list or a string.
    type: raw
notes:
  - "A failure while taking the backup (a full disk) removes the partial backup and nothing is installed; a
    failure while installing puts back the files already written. The message lists what was written, put back
    and never touched."
  - Check mode reports what would change, with the diff, and touches nothing (no backup, no write, no command).
  - "Diff mode shows, per changed file, each certificate as serial, SHA-256 fingerprint, subject CN and notAfter,
    other files as their SHA-256, secret files only as changed. A certificate removed says why on its line
    (C(· removed: expired) or C(· removed: <removal_note>))."
"""

EXAMPLES = r"""
- name: Add the renewed RENAPO anchor to the trust bundle, test nginx and reload it
  cert_deploy:
    files:
      - path: /etc/consulta/renapo-trust.pem
        content: "{{ lookup('ansible.builtin.file', 'staged/anchor.pem') | b64encode }}"
        mode: "0644"
        merge: true
    backup_dir: /var/backups/consulta
    backup_key: "{{ consulta_cert_backup_key }}"
    service: renapo
    backup_keep: 5
    validate_command: [nginx, -t]
    reload_command: [nginx, -s, reload]
  register: deployed

- name: The bundle holds what was asked
  ansible.builtin.assert:
    that: deployed.files[0].sha256_after is string

- name: Replace the SAT client identity (certificate and key)
  cert_deploy:
    files:
      - path: /etc/consulta/sat-client.pem
        content: "{{ sat_cert_pem | b64encode }}"
        mode: "0644"
      - path: /etc/consulta/sat-client.key
        content: "{{ sat_key_pem | b64encode }}"
        mode: "0600"
        owner: root
        group: root
        secret: true
    backup_dir: /var/backups/consulta
    backup_key: "{{ consulta_cert_backup_key }}"
    service: sat
    validate_command: nginx -t
    reload_command: nginx -s reload
  no_log: true

- name: Return the host to the files it had before the last change
  cert_deploy:
    action: restore
    backup: latest
    backup_dir: /var/backups/consulta
    backup_key: "{{ consulta_cert_backup_key }}"
    managed_paths: [/etc/consulta/renapo-trust.pem, /etc/consulta/sat-client.pem, /etc/consulta/sat-client.key]
    validate_command: nginx -t
    reload_command: nginx -s reload
  register: restored

- name: The restore was applied or already in place
  ansible.builtin.assert:
    that: restored.backup.label is string

- name: Consult with the service the verified backup was taken for
  ansible.builtin.debug:
    msg: "restored a {{ restored.backup.service }} backup"
"""

RETURN = r"""
changed:
  description: Whether any file was (or in check mode would be) written.
  returned: always
  type: bool
  sample: true
files:
  description:
    - One entry per file, in the order given (for restore, the order of the manifest).
    - C(added) and C(removed) list the certificates that appear and go (fingerprint, subject_cn, not_after; a
      removal also its reason); both empty for a secret file or one that is not certificates.
  returned: install and restore
  type: list
  elements: dict
  sample:
    - path: /etc/consulta/renapo-trust.pem
      sha256_before: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
      sha256_after: 60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752
      changed: true
      secret: false
      description_before: ["serial 01A2 · sha256 AB:..:09 · CN=RENAPO lab anchor 1 · not_after 2027-01-01T00:00:00Z"]
      description: ["serial 01A2 · sha256 AB:..:09 · CN=RENAPO lab anchor 1 · not_after 2027-01-01T00:00:00Z",
                    "serial 7F31 · sha256 4C:..:E2 · CN=RENAPO lab anchor 2 · not_after 2031-01-01T00:00:00Z"]
      added: [{fingerprint: "4C:..:E2", subject_cn: RENAPO lab anchor 2, not_after: "2031-01-01T00:00:00Z"}]
      removed: [{fingerprint: "9D:..:11", subject_cn: Rogue CA, not_after: "2030-01-01T00:00:00Z",
                 reason: not in the trust-anchor registry}]
  contains:
    added:
      description: The certificates the file holds after and not before (fingerprint, subject_cn, not_after).
      type: list
      elements: dict
      returned: always
    removed:
      description: The certificates the file held before and not after, each with the C(reason) it was removed.
      type: list
      elements: dict
      returned: always
backup:
  description:
    - The backup made (install) or used (restore), or null when nothing changed (or nothing was written) on install.
    - C(service) is the service it was taken for (from the verified manifest on restore); C(signed) whether its
      manifest carries a verified HMAC (false only for an unsigned backup accepted by I(allow_unsigned_backup)).
  returned: install and restore
  type: dict
  sample: {label: 20260115T101500Z-a1b2c3, path: /var/backups/consulta/20260115T101500Z-a1b2c3, service: renapo,
           signed: true}
  contains:
    service:
      description: The service the backup was taken for.
      type: str
      returned: always
restored:
  description: Whether a failed config test or reload made the module put the previous files back.
  returned: install and restore
  type: bool
  sample: false
step:
  description: The step that failed (input, backup, install, validate, reload, restore, io).
  returned: failure
  type: str
  sample: validate
pruned:
  description: Labels of the old backups removed.
  returned: when a backup was made
  type: list
  elements: str
  sample: [20250101T000000Z-0f0f0f]
backups:
  description: Complete backups, oldest first, each with label, time, service, hmac, path and files (path, secret,
    existed, sha256_before, sha256_after, mode, owner, group). Listed as found, not verified.
  returned: list
  type: list
  elements: dict
  sample:
    - label: 20260115T101500Z-a1b2c3
      time: "2026-01-15T10:15:00.123456Z"
      path: /var/backups/consulta/20260115T101500Z-a1b2c3
      files: [{path: /etc/consulta/renapo-trust.pem, existed: true, sha256_before: 9f86..., sha256_after: 6030...}]
"""

import base64
import binascii

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.cert_files import CertFilesError, install, list_backups, make_target, restore
from ansible.module_utils.debug_guard import refuse_debug


def main():
    module = AnsibleModule(
        argument_spec=dict(
            action=dict(type="str", default="install", choices=["install", "restore", "list"]),
            files=dict(type="list", elements="dict", options=dict(
                path=dict(type="path", required=True),
                content=dict(type="str", required=True, no_log=True),
                mode=dict(type="str"),
                owner=dict(type="str"),
                group=dict(type="str"),
                secret=dict(type="bool", default=False),
                merge=dict(type="bool", default=False),
                removal_note=dict(type="str"),
            )),
            backup_dir=dict(type="path", required=True),
            backup_key=dict(type="str", no_log=True),
            service=dict(type="str"),
            managed_paths=dict(type="list", elements="path"),
            allow_unsigned_backup=dict(type="bool", default=False),
            backup_keep=dict(type="int", default=5),
            backup_label=dict(type="str"),
            backup=dict(type="str"),
            validate_command=dict(type="raw"),
            reload_command=dict(type="raw"),
        ),
        required_if=[("action", "install", ["files"]),
                     ("action", "restore", ["backup", "backup_key", "managed_paths"])],
        supports_check_mode=True,
    )
    p = module.params
    refuse_debug(module, any(f["secret"] for f in p["files"] or ()))
    if p["backup_keep"] < 1:
        module.fail_json(msg="backup_keep must be at least 1", step="input")
    # A check-mode install (plan, drift) writes no backup, so it needs neither the key nor the service.
    writes = p["action"] == "restore" or (p["action"] == "install" and not module.check_mode)
    if writes and not p["backup_key"]:
        module.fail_json(msg="backup_key is empty: backups are signed with it and a restore verifies them",
                         step="input")
    if p["action"] == "install" and not module.check_mode and not p["service"]:
        module.fail_json(msg="service is required to install: the backup records the service it was taken for",
                         step="input")

    def run(cmd):
        return module.run_command(cmd)

    commands = dict(run=run, validate_command=p["validate_command"], reload_command=p["reload_command"],
                    check_mode=module.check_mode, diff=module._diff)
    try:
        if p["action"] == "list":
            module.exit_json(changed=False, backups=list_backups(p["backup_dir"]))
        if p["action"] == "restore":
            result = restore(p["backup_dir"], p["backup"], key=p["backup_key"], managed_paths=p["managed_paths"],
                             service=p["service"], allow_unsigned=p["allow_unsigned_backup"], **commands)
        else:
            targets = []
            for f in p["files"]:
                try:
                    content = base64.b64decode(f["content"], validate=True)
                except (binascii.Error, ValueError):
                    module.fail_json(msg="content of %s is not valid base64" % f["path"], step="input")
                targets.append(make_target(f["path"], content, f["mode"], f["owner"], f["group"], f["secret"],
                                           f["merge"], removal_note=f["removal_note"]))
            for t in targets:
                if t.warning:
                    module.warn(t.warning)
            result = install(targets, p["backup_dir"], keep=p["backup_keep"], label=p["backup_label"],
                             key=p["backup_key"], service=p["service"], **commands)
    except CertFilesError as exc:
        module.fail_json(**dict(exc.result, msg=exc.msg, step=exc.step, restored=exc.restored))
    except OSError as exc:
        module.fail_json(msg="%s: %s" % (exc.filename or "file operation", exc.strerror or exc), step="io")
    module.exit_json(**result)


if __name__ == "__main__":
    main()
