# Copyright: (c) 2026, DGTIC Operaciones
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The `store` option of every module that reads or writes the ticket store (module_utils/ticket_store.py).

One text for all of them, so what a DSN may be and how its password is kept out of results cannot drift apart.
The masking itself is ticket_store.dsn_secrets (the values a module adds to no_log_values) and ticket_store.redact
(the DSN as messages show it).
"""


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  store:
    description:
      - The ticket store. A SQLite file path, or C(sqlite:///relative.db) / C(sqlite:////absolute.db) (one
        controller); or a PostgreSQL URL C(postgresql://user@host:5432/dbname) (one store shared by several
        controllers or AWX execution nodes; needs psycopg 3 on the controller).
      - Give a PostgreSQL password through the environment (E(PGPASSWORD), E(PGPASSFILE)) rather than in the URL; a
        password written in the URL (C(user:password@) or C(?password=)) is masked (C(********)) in every result
        and message.
    type: str
    required: true
"""

    # For a module that works without a ticket store and reads it when given one.
    OPTIONAL = r"""
options:
  store:
    description:
      - The ticket store, when the module should read it. A SQLite file path, or C(sqlite:///relative.db) /
        C(sqlite:////absolute.db); or a PostgreSQL URL C(postgresql://user@host:5432/dbname) (needs psycopg 3 on the
        controller).
      - Give a PostgreSQL password through the environment (E(PGPASSWORD), E(PGPASSFILE)) rather than in the URL; a
        password written in the URL (C(user:password@) or C(?password=)) is masked (C(********)) in every result
        and message.
    type: str
"""
