# Copyright: (c) 2026, DGTIC Operaciones
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the project's modules declare under `attributes`: check mode and diff mode support.

Every module supports check mode fully (scripts/check_module_docs.py refuses one that does not set
supports_check_mode); they differ in diff mode. A module adds its own `details` by declaring the attribute itself,
which replaces the fragment's entry.
"""


_TEMPLATE = r"""
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full%s
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: %s
"""


class ModuleDocFragment:
    # A module that changes something and returns no diff.
    DOCUMENTATION = _TEMPLATE % ("", "none")

    # A module that changes something and returns a before/after diff (also in check mode).
    DIFF = _TEMPLATE % ("", "full")

    # A module that only reads (or only computes) and never reports changed.
    INFO = _TEMPLATE % ("\n    details: It changes nothing, so it runs the same in check mode.",
                        "N/A\n    details: It changes nothing.")
