"""Fixtures for the phigate CLI tests.

The binary is $PHIGATE_BIN (set by ctest), or build/phigate of this checkout.
Every run gets a clean environment: PHI_MASTER_KEY / PHI_MASTER_KEY_FILE are
removed from the inherited one and only set when a test asks for them.
"""
import json
import base64
import os
import stat
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import phiref  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_BIN = os.path.normpath(os.path.join(HERE, "..", "..", "build", "phigate"))

# Public test values from docs/formats.md (appendix).
DOC_MASTER_KEY = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
DOC_MASTER_KEY_2 = "YGFiY2RlZmdoaWprbG1ub3BxcnN0dXZ3eHl6e3x9fn8="


def phigate_bin():
    path = os.environ.get("PHIGATE_BIN") or DEFAULT_BIN
    return path


@pytest.fixture(scope="session")
def bin_path():
    path = phigate_bin()
    # Not a skip: a missing binary is a failure of the suite.
    assert os.path.isfile(path) and os.access(path, os.X_OK), \
        "phigate binary not found at %s (set PHIGATE_BIN)" % path
    return path


class Result:
    def __init__(self, proc):
        self.rc = proc.returncode
        self.out = proc.stdout
        self.err = proc.stderr

    @property
    def stdout(self):
        return self.out.decode("utf-8")

    @property
    def stderr(self):
        return self.err.decode("utf-8", "replace")

    def json(self):
        return json.loads(self.out.decode("utf-8"))

    def __repr__(self):
        return "Result(rc=%r, stdout=%r, stderr=%r)" % (self.rc, self.out[:400], self.err[:800])


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items()
           if k not in ("PHI_MASTER_KEY", "PHI_MASTER_KEY_FILE")}
    for k, v in extra.items():
        if v is not None:
            env[k] = v
    return env


# Administrative key commands sign their audit record with the master key, so
# they get this one unless a test passes mk= (or mk=NO_MASTER_KEY for none).
ADMIN_MASTER_KEY = base64.urlsafe_b64encode(os.urandom(32)).decode()
NO_MASTER_KEY = object()
ADMIN_COMMANDS = {("keys", "create"), ("keys", "revoke"), ("keys", "rotate"), ("keys", "set-limit")}


class Phigate:
    """Runs the binary. mk= sets PHI_MASTER_KEY; env= adds other variables."""

    def __init__(self, path):
        self.path = path

    def __call__(self, *args, input=b"", mk=None, env=None, timeout=120, cwd=None):
        if isinstance(input, str):
            input = input.encode("utf-8")
        extra = dict(env or {})
        if mk is None and tuple(str(a) for a in args[:2]) in ADMIN_COMMANDS:
            mk = ADMIN_MASTER_KEY
        if mk is NO_MASTER_KEY:
            mk = None
        if mk is not None:
            extra["PHI_MASTER_KEY"] = mk
        proc = subprocess.run([self.path] + [str(a) for a in args], input=input,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env=clean_env(**extra), timeout=timeout, cwd=cwd)
        return Result(proc)


@pytest.fixture(scope="session")
def phigate(bin_path):
    return Phigate(bin_path)


@pytest.fixture
def mk():
    """A fresh random master key (made by Python, so independent of phigate)."""
    return phiref.master_key_text(os.urandom(32))


@pytest.fixture
def keyring(phigate, mk, tmp_path):
    """A keyring made by `phigate phi keyring init` under mk."""
    path = tmp_path / "keyring.json"
    r = phigate("phi", "keyring", "init", "--keyring", path, mk=mk)
    assert r.rc == 0, r
    return path


def file_state(path):
    """Bytes and mode of a file, or None when it does not exist."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    with open(path, "rb") as f:
        return (f.read(), stat.S_IMODE(st.st_mode))


def assert_failed(r, rc=1, contains=None):
    """A clean failure: exit code, 'phigate: ' message on stderr, nothing on stdout."""
    assert r.rc == rc, r
    assert r.out == b"", r
    assert r.err.startswith(b"phigate: "), r
    if contains is not None:
        items = [contains] if isinstance(contains, str) else contains
        for c in items:
            assert c in r.stderr, (c, r)


# ---- stores (sqlite and PostgreSQL) for the migrate / keys / keyring-in-store tests ----
#
# `store` is parametrized over both engines: a sqlite:<tmp>/p.db URL and a fresh
# PostgreSQL database made for the test (and dropped after it) on the throwaway
# server of $PHG_TEST_PG_DIR (tests/pg_server.sh). Without that server the
# PostgreSQL tests FAIL: they never skip.

PSQL = "/usr/bin/psql"


def _psql(url, sql, timeout=60):
    proc = subprocess.run([PSQL, "-X", "-q", "-A", "-t", "-F", "\t", "-v", "ON_ERROR_STOP=1",
                           "-d", url, "-c", sql],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout,
                          env=clean_env(PGCONNECT_TIMEOUT="10"))
    assert proc.returncode == 0, "psql %r failed: %s" % (sql, proc.stderr.decode("utf-8", "replace"))
    return proc.stdout.decode("utf-8")


@pytest.fixture(scope="session")
def pg_base_url():
    """The URL of the test server's database (PHG_TEST_PG_DIR/url). Fails, never skips."""
    d = os.environ.get("PHG_TEST_PG_DIR")
    if not d:
        pytest.fail("PHG_TEST_PG_DIR is not set: the PostgreSQL tests need a server "
                    "(tests/pg_server.sh start DIR, then PHG_TEST_PG_DIR=DIR)", pytrace=False)
    path = os.path.join(d, "url")
    try:
        with open(path) as f:
            url = f.read().strip()
    except OSError as e:
        pytest.fail("%s: %s: no PostgreSQL test server; start one with tests/pg_server.sh "
                    "start %s" % (path, e.strerror, d), pytrace=False)
    if not url.startswith("postgres://"):
        pytest.fail("%s does not hold a postgres:// URL" % path, pytrace=False)
    _psql(url, "SELECT 1")
    return url


class SqliteStore:
    engine = "sqlite"

    def __init__(self, path):
        self.path = str(path)
        self.url = "sqlite:" + self.path

    def _connect(self):
        import sqlite3
        return sqlite3.connect(self.path, timeout=10)

    def rows(self, sql):
        """Rows as lists of text ('' for NULL), like psql -A -t gives."""
        con = self._connect()
        try:
            return [["" if v is None else str(v) for v in row] for row in con.execute(sql)]
        finally:
            con.close()

    def value(self, sql):
        """The first column of the first row, as text (may hold newlines); None if no row."""
        con = self._connect()
        try:
            row = con.execute(sql).fetchone()
        finally:
            con.close()
        return None if row is None else row[0]

    def execute(self, sql):
        con = self._connect()
        try:
            con.executescript(sql)
            con.commit()
        finally:
            con.close()

    def hex(self, column):
        return "lower(hex(%s))" % column

    def tables(self):
        return {r[0] for r in self.rows("SELECT name FROM sqlite_master WHERE type = 'table'")}

    def dump(self):
        """Every byte of the database files and a text dump of it."""
        data = b""
        folder = os.path.dirname(self.path)
        for name in sorted(os.listdir(folder)):
            if name.startswith(os.path.basename(self.path)):
                with open(os.path.join(folder, name), "rb") as f:
                    data += f.read()
        con = self._connect()
        try:
            data += "\n".join(con.iterdump()).encode("utf-8")
        finally:
            con.close()
        return data

    def exists(self):
        return os.path.exists(self.path)


class PgStore:
    engine = "postgres"

    def __init__(self, base_url):
        self.base_url = base_url
        self.name = "phg_t_" + os.urandom(6).hex()
        self.url = base_url.rsplit("/", 1)[0] + "/" + self.name
        _psql(base_url, "CREATE DATABASE %s" % self.name)

    def drop(self):
        _psql(self.base_url, "DROP DATABASE IF EXISTS %s WITH (FORCE)" % self.name)

    def rows(self, sql):
        out = _psql(self.url, sql)
        return [line.split("\t") for line in out.splitlines() if line != ""]

    def value(self, sql):
        """The first column of the first row, as text (may hold newlines); None if no row."""
        out = _psql(self.url, "SELECT count(*) FROM (%s) AS q" % sql).strip()
        if out == "0":
            return None
        out = _psql(self.url, sql)
        return out[:-1] if out.endswith("\n") else out

    def execute(self, sql):
        _psql(self.url, sql)

    def hex(self, column):
        return "encode(%s, 'hex')" % column

    def tables(self):
        return {r[0] for r in self.rows(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}

    def dump(self):
        """pg_dump of the database (data and schema)."""
        pg_dump = os.path.join(os.environ.get("PGBIN", "/usr/lib/postgresql/15/bin"), "pg_dump")
        if not os.access(pg_dump, os.X_OK):
            pg_dump = "/usr/bin/pg_dump"
        proc = subprocess.run([pg_dump, "-d", self.url], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, timeout=60, env=clean_env())
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    def exists(self):
        return True


@pytest.fixture(params=["sqlite", "postgres"])
def store(request, tmp_path):
    """An empty (unmigrated) store on each engine: .url, .rows(sql), .execute(sql), .dump()."""
    if request.param == "sqlite":
        folder = tmp_path / "store"
        folder.mkdir()
        return SqliteStore(folder / "p.db")
    s = PgStore(request.getfixturevalue("pg_base_url"))
    request.addfinalizer(s.drop)
    return s


@pytest.fixture
def migrated(store, phigate):
    """`store`, after `phigate migrate`."""
    r = phigate("migrate", "--store", store.url)
    assert r.rc == 0, r
    return store
