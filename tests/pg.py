"""A real, throw-away PostgreSQL server for the tests and the benchmark, and the fixtures that hand out databases.

The server is Debian's `postgresql` package run by hand: a private data directory under a fresh temporary
directory, `initdb` as the `postgres` user when we are root (initdb refuses root), TCP on 127.0.0.1 only at a free
port with trust authentication for 127.0.0.1 only, its unix socket inside the temporary directory. One server per
pytest session (`pg_server`), stopped with `pg_ctl stop -m fast` at the end. Each test gets its own schema in the
database `tickets` (a DSN whose `options` set `search_path`): 1 ms to create where CREATE DATABASE takes 50 ms.
A test module loads the fixtures with `pytest_plugins = ["tests.pg"]`.
"""
import atexit
import glob
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

BACKENDS = ("sqlite", "postgresql")
# Test-only settings: durability off makes CREATE DATABASE and commits cheap; the benchmark keeps the defaults.
FAST = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off", "autovacuum": "off"}


def find_bindir():
    """The newest installed PostgreSQL server's bin directory (initdb, pg_ctl, postgres), or None."""
    for bindir in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name),
                         reverse=True):
        if all(os.access(Path(bindir) / tool, os.X_OK) for tool in ("initdb", "pg_ctl", "postgres")):
            return Path(bindir)
    return None


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """One postgres cluster on 127.0.0.1; `start()` / `stop()`; `create_schema()` returns a DSN."""

    def __init__(self, bindir, durable=False):
        self.bindir = Path(bindir)
        self.settings = {} if durable else FAST
        self.base = Path(tempfile.mkdtemp(prefix="ticket-pg-"))
        self.data = self.base / "data"
        self.port = None
        # initdb refuses to run as root: the cluster belongs to the postgres user then.
        self._as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self._as:
            shutil.chown(self.base, "postgres", "postgres")

    def _run(self, tool, *args):
        proc = subprocess.run([*self._as, str(self.bindir / tool), *args], capture_output=True, text=True,
                              timeout=120, cwd=self.base)
        if proc.returncode:
            raise RuntimeError(f"{tool} failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}")

    def start(self):
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8",
                  "--locale=C.UTF-8", "--no-sync", "--no-instructions")
        (self.data / "pg_hba.conf").write_text("host all all 127.0.0.1/32 trust\n")
        for attempt in range(3):  # a free port can be taken between the probe and the bind
            self.port = _free_port()
            settings = {"listen_addresses": "127.0.0.1", "port": self.port, "unix_socket_directories": str(self.base),
                        "max_connections": 100, **self.settings}
            (self.data / "postgresql.auto.conf").write_text(
                "".join(f"{name} = '{value}'\n" for name, value in settings.items()))
            try:
                self._run("pg_ctl", "start", "-D", str(self.data), "-w", "-t", "60", "-l", str(self.base / "log"))
                break
            except RuntimeError:
                if attempt == 2:
                    log = (self.base / "log").read_text()[-2000:]
                    self.stop()
                    raise RuntimeError(f"postgres did not start: {log}") from None
        self.admin("CREATE DATABASE tickets", dbname="postgres")
        atexit.register(self.stop)  # also when the session dies before its finalizers
        return self

    def stop(self):
        if self.data.exists():
            subprocess.run([*self._as, str(self.bindir / "pg_ctl"), "stop", "-D", str(self.data), "-m", "fast",
                            "-w"], capture_output=True, timeout=60, cwd=self.base)
        shutil.rmtree(self.base, ignore_errors=True)

    def dsn(self, dbname="tickets", schema=None, password=None):
        user = "postgres" + (f":{password}" if password else "")
        return f"postgresql://{user}@127.0.0.1:{self.port}/{dbname}" + (
            f"?options=-csearch_path%3D{schema}" if schema else "")

    def admin(self, sql, dbname="tickets"):
        import psycopg
        with psycopg.connect(self.dsn(dbname), autocommit=True) as conn:
            conn.execute(sql)

    def create_schema(self, name=None, password=None):
        """A fresh, empty schema (no migration applied) in the database `tickets`; returns the DSN that uses it."""
        name = name or new_schema_name()
        self.admin(f'CREATE SCHEMA "{name}"')
        return self.dsn(schema=name, password=password)

    def drop_schema(self, name):
        self.admin(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


_server = None
_names = itertools.count(1)


@pytest.fixture(scope="session")
def pg_server():
    """The session's PostgreSQL server, started on first use."""
    global _server
    pytest.importorskip("psycopg", reason="psycopg (requirements.txt) is needed for the PostgreSQL store")
    bindir = find_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries not found in /usr/lib/postgresql/*/bin "
                    "(Debian package `postgresql`, installed by scripts/bootstrap.sh)")
    if _server is None:
        _server = PostgresServer(bindir).start()
    yield _server
    if _server is not None:
        _server.stop()
        _server = None


def new_schema_name():
    return f"t{os.getpid()}_{next(_names)}"


@pytest.fixture
def pg_schema(pg_server):
    """A fresh, empty schema on the session's server, dropped afterwards; yields the DSN that uses it."""
    name = new_schema_name()
    yield pg_server.create_schema(name)
    pg_server.drop_schema(name)


@pytest.fixture(params=BACKENDS)
def store_dsn(request, tmp_path):
    """What `open_store()` takes, once per backend: a SQLite file path, or a PostgreSQL URL of a fresh schema."""
    if request.param == "sqlite":
        yield str(tmp_path / "tickets.db")
    else:
        yield request.getfixturevalue("pg_schema")


@pytest.fixture(scope="module", params=BACKENDS)
def module_store_dsn(request, tmp_path_factory):
    """As `store_dsn`, shared by a module's tests (a SQLite file, or a schema that lives as long as the server)."""
    if request.param == "sqlite":
        return str(tmp_path_factory.mktemp("store") / "tickets.db")
    return request.getfixturevalue("pg_server").create_schema()
