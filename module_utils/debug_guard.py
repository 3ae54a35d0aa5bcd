"""Refuse to handle a key or a passphrase while ANSIBLE_DEBUG is on.

With ANSIBLE_DEBUG, ansible-core writes module arguments (also `no_log` ones) and results to its debug output in
clear, so a play that hands a module a private key, a PKCS#12 or a passphrase would leak it. Modules that take such
options call `refuse_debug(module, handles_secret)` right after building their AnsibleModule. Stdlib only (it runs
on the hosts under their own Python).
"""
import os

_TRUE = ("1", "true", "yes", "on", "y", "t")


def debug_on(module=None):
    """True when ANSIBLE_DEBUG is on: the controller says so (`_ansible_debug`, set from ANSIBLE_DEBUG) or the
    module's environment has it (local runs inherit the controller's)."""
    if module is not None and getattr(module, "_debug", False):
        return True
    return os.environ.get("ANSIBLE_DEBUG", "").strip().lower() in _TRUE


def refuse_debug(module, handles_secret=True):
    """Fail the task (nothing done) when it handles a secret and ANSIBLE_DEBUG is on."""
    if handles_secret and debug_on(module):
        module.fail_json(msg="refusing to handle a private key or passphrase with ANSIBLE_DEBUG on: ansible-core "
                             "logs module arguments in clear in debug mode, no_log included. Run again without "
                             "ANSIBLE_DEBUG (unset it or set ANSIBLE_DEBUG=0).", step="input")
