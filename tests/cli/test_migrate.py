"""`phigate migrate`, store URLs, and the PHI keyring kept in the store.

Every test that touches a store runs on both engines (the `store` fixture of
conftest.py: sqlite:<tmp>/p.db and a fresh PostgreSQL database).
"""
import json
import os
import stat
import subprocess
import time

import pytest

import phiref
from conftest import PgStore, assert_failed, clean_env, file_state

HERE = os.path.dirname(os.path.abspath(__file__))
MIGRATIONS = os.path.normpath(os.path.join(HERE, "..", "..", "migrations"))


def latest_version(engine):
    """The highest migration number shipped for the engine (docs/formats.md 11)."""
    names = [n for n in os.listdir(os.path.join(MIGRATIONS, engine)) if n.endswith(".sql")]
    assert names, engine
    return max(int(n.split("_", 1)[0]) for n in names)


def schema_rows(store):
    if "phigate_schema" not in store.tables():
        return []
    return [int(r[0]) for r in store.rows("SELECT version FROM phigate_schema ORDER BY version")]


def status(phigate, store):
    r = phigate("migrate", "--status", "--store", store.url, "--json")
    assert r.rc == 0, r
    return r.json()


# ---- migrate ------------------------------------------------------------------------------


def test_migrate_fresh_database(phigate, store):
    latest = latest_version(store.engine)
    r = phigate("migrate", "--store", store.url)
    assert r.rc == 0, r
    assert r.stdout == "%s: migrated from version 0 to %d\n" % (store.url, latest)
    assert schema_rows(store) == list(range(1, latest + 1))
    assert {"phigate_schema", "api_keys", "phi_keyring", "phigate_changes"} <= store.tables()
    # the change counter starts with its one row
    assert store.rows("SELECT id, counter FROM phigate_changes") == [["1", "0"]]


def test_migrate_fresh_database_json(phigate, store):
    latest = latest_version(store.engine)
    r = phigate("migrate", "--store", store.url, "--json")
    assert r.rc == 0, r
    out = r.json()
    assert out["from"] == 0 and out["to"] == latest
    assert out["store"] == store.url


def test_migrate_again_is_nothing_to_do(phigate, migrated):
    latest = latest_version(migrated.engine)
    before = migrated.rows("SELECT version, applied_at FROM phigate_schema ORDER BY version")
    r = phigate("migrate", "--store", migrated.url)
    assert r.rc == 0, r
    assert "nothing to do" in r.stdout and ("version %d" % latest) in r.stdout, r
    r = phigate("migrate", "--store", migrated.url, "--json")
    assert r.rc == 0, r
    assert r.json()["from"] == latest and r.json()["to"] == latest
    # not re-applied: the rows (and their times) are the same
    assert migrated.rows("SELECT version, applied_at FROM phigate_schema ORDER BY version") == before


def test_migrate_status(phigate, store):
    latest = latest_version(store.engine)
    out = status(phigate, store)
    assert out["version"] == 0 and out["latest"] == latest and out["state"] == "behind", out
    assert out["engine"] == store.engine
    r = phigate("migrate", "--status", "--store", store.url)
    assert r.rc == 0 and "phigate migrate" in r.stdout, r
    # --status changes nothing
    assert schema_rows(store) == []
    assert phigate("migrate", "--store", store.url).rc == 0
    out = status(phigate, store)
    assert out == {"store": store.url, "engine": store.engine, "version": latest,
                   "latest": latest, "state": "current"}
    r = phigate("migrate", "--status", "--store", store.url)
    assert r.rc == 0 and "up to date" in r.stdout, r


def test_newer_database_is_refused(phigate, migrated):
    latest = latest_version(migrated.engine)
    # a key made before, to see that nothing is touched
    r = phigate("keys", "create", "--role", "user", "--user", "u1", "--store", migrated.url)
    assert r.rc == 0, r
    migrated.execute("INSERT INTO phigate_schema (version, applied_at) VALUES (99, 0)")
    tables = migrated.tables()
    keys_before = migrated.rows("SELECT id, version FROM api_keys ORDER BY id")

    r = phigate("migrate", "--store", migrated.url)
    assert_failed(r, 1, "newer")
    r = phigate("migrate", "--store", migrated.url, "--json")
    assert r.rc == 1 and "newer" in r.stderr, r
    assert schema_rows(migrated) == list(range(1, latest + 1)) + [99]
    assert migrated.tables() == tables
    assert migrated.rows("SELECT id, version FROM api_keys ORDER BY id") == keys_before

    out = status(phigate, migrated)
    assert out["version"] == 99 and out["latest"] == latest and out["state"] == "newer"

    for args in (["keys", "list"], ["keys", "create", "--role", "user", "--user", "u2"]):
        r = phigate(*args, "--store", migrated.url)
        assert_failed(r, 1, "newer")
    r = phigate("keys", "verify", "--store", migrated.url, input="phg_x\n")
    assert_failed(r, 1, "newer")
    assert migrated.rows("SELECT id, version FROM api_keys ORDER BY id") == keys_before


@pytest.mark.parametrize("args", [
    ["keys", "list"],
    ["keys", "create", "--role", "admin", "--user", "root"],
    ["keys", "show", "ak_aaaaaaaaaaaaaaaa"],
    ["keys", "revoke", "ak_aaaaaaaaaaaaaaaa"],
    ["keys", "rotate", "ak_aaaaaaaaaaaaaaaa"],
    ["keys", "verify"],
], ids=["list", "create", "show", "revoke", "rotate", "verify"])
def test_keys_on_unmigrated_database(phigate, store, args):
    r = phigate(*args, "--store", store.url, input="phg_x\n")
    assert_failed(r, 1, "phigate migrate")
    # the command did not create the schema behind the user's back
    assert "api_keys" not in store.tables()
    assert status(phigate, store)["version"] == 0


def test_store_from_environment(phigate, store):
    r = phigate("migrate", "--json", env={"PHIGATE_STORE": store.url})
    assert r.rc == 0, r
    assert r.json()["store"] == store.url and r.json()["to"] >= 1
    # --store wins over the environment
    r = phigate("migrate", "--status", "--json", "--store", store.url,
                env={"PHIGATE_STORE": "mysql://elsewhere"})
    assert r.rc == 0 and r.json()["state"] == "current", r


# ---- bad store URLs -------------------------------------------------------------------------

BAD_URLS = [
    ("mysql://x", "unknown scheme"),
    ("sqlite:", "file path"),
    ("sqlite://x", "sqlite://"),
    ("postgres://postgres@127.0.0.1:1/nope", "127.0.0.1:1"),
    ("postgres://postgres@127.0.0.1:5432/phigate test", "space"),
    ("", "empty"),
]

COMMANDS = [
    ["migrate"],
    ["migrate", "--status"],
    ["keys", "list"],
    ["keys", "create", "--role", "user", "--user", "u"],
    ["phi", "keyring", "init"],
]


@pytest.mark.parametrize("url,why", BAD_URLS, ids=[u or "empty" for u, _ in BAD_URLS])
@pytest.mark.parametrize("args", COMMANDS,
                         ids=["migrate", "status", "list", "create", "keyring-init"])
def test_bad_store_url(phigate, tmp_path, mk, url, why, args):
    t0 = time.monotonic()
    r = phigate(*args, "--store", url, cwd=tmp_path, mk=mk, timeout=30)
    elapsed = time.monotonic() - t0
    assert r.rc != 0, r
    assert r.rc == 1, r
    assert r.out == b"" and r.err.startswith(b"phigate: "), r
    assert "store" in r.stderr and why in r.stderr, r
    assert elapsed < 12, "took %.1fs to fail on %r" % (elapsed, url)
    # nothing was made: not in the working folder, not at //x or x
    assert os.listdir(tmp_path) == [], os.listdir(tmp_path)
    assert not os.path.exists("/x") and not os.path.exists("//x")


def test_unreachable_postgres_fails_fast(phigate, tmp_path):
    t0 = time.monotonic()
    r = phigate("keys", "list", "--store", "postgres://postgres@127.0.0.1:1/nope", cwd=tmp_path,
                timeout=30)
    assert time.monotonic() - t0 < 10
    assert_failed(r, 1, "cannot connect")


@pytest.mark.parametrize("args", COMMANDS[:4], ids=["migrate", "status", "list", "create"])
def test_postgres_password_never_shown(phigate, tmp_path, mk, args):
    r = phigate(*args, "--store", "postgres://u:SECRETPW@127.0.0.1:1/x", cwd=tmp_path, mk=mk,
                timeout=30)
    assert r.rc == 1, r
    assert b"SECRETPW" not in r.err and b"SECRETPW" not in r.out, r
    assert r.err.startswith(b"phigate: store"), r


@pytest.mark.parametrize("form", ["userinfo", "query"])
def test_postgres_password_redacted_on_a_live_server(phigate, pg_base_url, form):
    """PostgreSQL only: the test server trusts every connection, so a password in the
    URL is accepted. It must never be shown: not in messages that name the store,
    not in output. libpq takes it in both forms: user:PW@host and ?password=PW."""
    db = PgStore(pg_base_url)
    try:
        if form == "userinfo":
            url = db.url.replace("postgres://postgres@", "postgres://postgres:SECRETPW@")
        else:
            url = db.url + "?sslmode=disable&password=SECRETPW"
        assert url != db.url
        r = phigate("keys", "list", "--store", url)  # unmigrated: an error naming the store
        assert_failed(r, 1, "phigate migrate")
        assert "SECRETPW" not in r.stderr, r
        for args in (["migrate"], ["migrate", "--json"], ["migrate", "--status"],
                     ["migrate", "--status", "--json"]):
            r = phigate(*args, "--store", url)
            assert r.rc == 0, r
            assert b"SECRETPW" not in r.out + r.err, r
            if form == "userinfo":
                assert b"***" in r.out, r
        r = phigate("keys", "create", "--role", "user", "--user", "u", "--store", url, "--json")
        assert r.rc == 0 and b"SECRETPW" not in r.out + r.err, r
        db.execute("INSERT INTO phigate_schema (version, applied_at) VALUES (99, 0)")
        r = phigate("migrate", "--store", url)
        assert_failed(r, 1, "newer")
        assert "SECRETPW" not in r.stderr, r
    finally:
        db.drop()


# ---- concurrent migrations ------------------------------------------------------------------


def run_concurrently(phigate, store, n):
    procs = [subprocess.Popen([phigate.path, "migrate", "--store", store.url, "--json"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=clean_env())
             for _ in range(n)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=60)
        results.append((p.returncode, out, err))
    return results


def test_concurrent_migrate_applies_once(phigate, store):
    """Instances started together all migrate: every one succeeds, each version is
    applied once."""
    latest = latest_version(store.engine)
    results = run_concurrently(phigate, store, 6)
    for rc, out, err in results:
        assert rc == 0, (rc, out, err)
        assert json.loads(out)["to"] <= latest
    assert schema_rows(store) == list(range(1, latest + 1))
    assert store.rows("SELECT id, counter FROM phigate_changes") == [["1", "0"]]


def test_concurrent_migrate_reports_truthfully(phigate, store):
    """Each process reports the steps it applied itself ({from, to}: steps from+1..to);
    each step is applied by exactly one process, so the reported ranges tile 0..latest
    without overlap, and the others say there was nothing to do (from == to)."""
    latest = latest_version(store.engine)
    results = run_concurrently(phigate, store, 6)
    assert all(rc == 0 for rc, _, _ in results), results
    reports = [json.loads(out) for _, out, _ in results]
    applied = sorted((r["from"], r["to"]) for r in reports if r["from"] != r["to"])
    steps = [s for lo, hi in applied for s in range(lo + 1, hi + 1)]
    assert steps == list(range(1, latest + 1)), reports


# ---- the PHI keyring in the store -------------------------------------------------------------


def keyring_body(store):
    return store.value("SELECT body FROM phi_keyring")


def encrypt(phigate, where, mk, ctx, data):
    r = phigate("phi", "encrypt", *where, "--context", ctx, input=data, mk=mk)
    assert r.rc == 0, r
    return r.stdout.strip()


def decrypt(phigate, where, mk, ctx, text):
    return phigate("phi", "decrypt", *where, "--context", ctx, input=text + "\n", mk=mk)


def test_keyring_init_in_store_then_encrypt_decrypt(phigate, migrated, mk):
    where = ["--store", migrated.url]
    r = phigate("phi", "keyring", "init", *where, "--json", mk=mk)
    assert r.rc == 0, r
    primary = r.json()["primary"]
    body = keyring_body(migrated)
    assert body is not None
    doc = json.loads(body)
    assert doc["primary"] == primary and doc["format"] == "phigate-keyring"
    # the independent implementation opens the stored keyring
    p, deks, _, _ = phiref.load_keyring(body.encode("utf-8"), [mk])
    assert p == primary

    ct = encrypt(phigate, where, mk, "user=1;field=a", b"hello\x00world")
    assert phiref.phi1_kid(ct) == primary
    r = decrypt(phigate, where, mk, "user=1;field=a", ct)
    assert r.rc == 0 and r.out == b"hello\x00world", r
    assert phiref.phi1_decrypt(deks, b"user=1;field=a", ct) == b"hello\x00world"
    # wrong context: one error
    assert_failed(decrypt(phigate, where, mk, "user=2;field=a", ct), 1, "decryption failed")
    # wrong master key cannot open the stored keyring
    other = phiref.master_key_text(os.urandom(32))
    r = decrypt(phigate, where, other, "user=1;field=a", ct)
    assert r.rc == 1 and r.out == b"", r


def test_keyring_init_in_store_twice_refused(phigate, migrated, mk):
    where = ["--store", migrated.url]
    assert phigate("phi", "keyring", "init", *where, mk=mk).rc == 0
    body = keyring_body(migrated)
    r = phigate("phi", "keyring", "init", *where, mk=mk)
    assert_failed(r, 1, "already holds a keyring")
    assert keyring_body(migrated) == body


def test_keyring_init_in_unmigrated_store_refused(phigate, store, mk):
    r = phigate("phi", "keyring", "init", "--store", store.url, mk=mk)
    assert_failed(r, 1, "phigate migrate")
    assert "phi_keyring" not in store.tables()


def test_keyring_export_then_decrypt_with_file(phigate, migrated, mk, tmp_path):
    where = ["--store", migrated.url]
    assert phigate("phi", "keyring", "init", *where, mk=mk).rc == 0
    ct = encrypt(phigate, where, mk, "ctx", b"exported")
    path = tmp_path / "exported.json"
    r = phigate("phi", "keyring", "export", *where, "--keyring", path, mk=mk)
    assert r.rc == 0, r
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert json.loads(path.read_text()) == json.loads(keyring_body(migrated))
    r = decrypt(phigate, ["--keyring", path], mk, "ctx", ct)
    assert r.rc == 0 and r.out == b"exported", r
    # export refuses to overwrite a file
    before = file_state(path)
    r = phigate("phi", "keyring", "export", *where, "--keyring", path, mk=mk)
    assert_failed(r, 1, "already exists")
    assert file_state(path) == before


def test_keyring_export_of_empty_store_fails(phigate, migrated, mk, tmp_path):
    path = tmp_path / "none.json"
    r = phigate("phi", "keyring", "export", "--store", migrated.url, "--keyring", path, mk=mk)
    assert r.rc == 1 and r.err.startswith(b"phigate: "), r
    assert not path.exists()


def test_keyring_import_into_store(phigate, migrated, mk, keyring, tmp_path):
    ct = encrypt(phigate, ["--keyring", keyring], mk, "ctx", b"from file")
    r = phigate("phi", "keyring", "import", "--keyring", keyring, "--store", migrated.url, mk=mk)
    assert r.rc == 0, r
    assert json.loads(keyring_body(migrated)) == json.loads(keyring.read_text())
    r = decrypt(phigate, ["--store", migrated.url], mk, "ctx", ct)
    assert r.rc == 0 and r.out == b"from file", r


def test_keyring_import_refused_when_store_has_one(phigate, migrated, mk, keyring):
    where = ["--store", migrated.url]
    assert phigate("phi", "keyring", "init", *where, mk=mk).rc == 0
    old_ct = encrypt(phigate, where, mk, "ctx", b"old")
    body = keyring_body(migrated)
    r = phigate("phi", "keyring", "import", "--keyring", keyring, *where, mk=mk)
    assert_failed(r, 1, "already holds a keyring")
    assert keyring_body(migrated) == body
    assert decrypt(phigate, where, mk, "ctx", old_ct).out == b"old"

    file_ct = encrypt(phigate, ["--keyring", keyring], mk, "ctx", b"new")
    r = phigate("phi", "keyring", "import", "--keyring", keyring, *where, "--replace", mk=mk)
    assert r.rc == 0, r
    assert json.loads(keyring_body(migrated)) == json.loads(keyring.read_text())
    r = decrypt(phigate, where, mk, "ctx", file_ct)
    assert r.rc == 0 and r.out == b"new", r
    # the replaced keyring is gone (as documented: export it first)
    assert_failed(decrypt(phigate, where, mk, "ctx", old_ct), 1, "decryption failed")


def test_keyring_import_needs_the_master_key(phigate, migrated, mk, keyring):
    other = phiref.master_key_text(os.urandom(32))
    r = phigate("phi", "keyring", "import", "--keyring", keyring, "--store", migrated.url,
                mk=other)
    assert r.rc == 1 and r.out == b"", r
    assert keyring_body(migrated) is None


KEYRING_CMDS = [
    ["phi", "encrypt", "--context", "c"],
    ["phi", "decrypt", "--context", "c"],
    ["phi", "keyring", "init"],
    ["phi", "keyring", "list"],
    ["phi", "keyring", "rotate"],
]


@pytest.mark.parametrize("args", KEYRING_CMDS, ids=[" ".join(a[:3]) for a in KEYRING_CMDS])
def test_keyring_and_store_both_or_neither(phigate, migrated, mk, tmp_path, args):
    path = tmp_path / "kr.json"
    r = phigate(*args, "--keyring", path, "--store", migrated.url, input=b"x", mk=mk)
    assert_failed(r, 2, "exactly one of --keyring FILE and --store URL")
    r = phigate(*args, input=b"x", mk=mk, cwd=tmp_path)
    assert_failed(r, 2, "exactly one of --keyring FILE and --store URL")
    assert not path.exists()
    assert keyring_body(migrated) is None


@pytest.mark.parametrize("cmd", ["export", "import"])
def test_keyring_export_import_need_both(phigate, migrated, mk, tmp_path, cmd):
    path = tmp_path / "kr.json"
    for args in (["--keyring", path], ["--store", migrated.url], []):
        r = phigate("phi", "keyring", cmd, *args, mk=mk, cwd=tmp_path)
        assert_failed(r, 2, "both --keyring FILE and --store URL are required")
    assert not path.exists()
