"""`phigate audit query|report|verify|archive|prune`, and the audit records the
administrative CLI commands leave (keys.*, keyring.*, audit.*), on both engines.

Every CLI run writes to a chain of its own ("cli.<ulid>"), so each admin
action is a chain of one record, signed by a checkpoint under a key derived
from the master key. All commands here use conftest.ADMIN_MASTER_KEY, so that
`audit verify` (which needs the same master key) sees every checkpoint as
genuine.

Records with a subject, a request id or an actor key are only written by the
gateway; the CLI never sets them. To test the filters and the report on such
records, a few tests set those index columns of a stored CLI record directly in
the database (the columns are what the store filters on; the record text and
hash are left alone).
"""
import csv
import io
import json
import os
import pwd
import re
import subprocess

import pytest

import conftest
from conftest import ADMIN_MASTER_KEY, NO_MASTER_KEY, assert_failed

ME = "cli:" + pwd.getpwuid(os.geteuid()).pw_name
ULID_RE = re.compile(r"^[0-9A-HJKMNP-TV-Z]{26}$")
WIDE = ("--from", "2000-01-01", "--to", "2100-01-01")
CSV_HEADER = "time,user_id,key_id,role,action,resource,outcome,ip,request_id,record_id"
PHI_DESCRIPTION = "Zebediah Quixote DOB 1961-04-17"
PHI_PIECES = ("Zebediah", "Quixote", "1961-04-17")


# ---- helpers ----------------------------------------------------------------------------


def run(phigate, *args, **kw):
    """Every command under the admin master key unless the test says otherwise."""
    kw.setdefault("mk", ADMIN_MASTER_KEY)
    return phigate(*args, **kw)


def create_key(phigate, store, user="alice", role="user", *extra):
    r = run(phigate, "keys", "create", "--role", role, "--user", user, *extra,
            "--store", store.url, "--json")
    assert r.rc == 0, r
    return r.json()


def query(phigate, store, *args):
    r = run(phigate, "audit", "query", "--store", store.url, "--json", *args)
    assert r.rc == 0, r
    assert r.err == b"", r
    return r.json()


def records(phigate, store, *args):
    return query(phigate, store, *args)["records"]


def audit_table(store, record):
    """Where a record is stored: SQLite's month table of its ts, or PostgreSQL's audit_log."""
    if store.engine == "sqlite":
        return "audit_%s_%s" % (record["ts"][0:4], record["ts"][5:7])
    return "audit_log"


def sql_text(s):
    return "'" + s.replace("'", "''") + "'"


def set_column(store, record, column, value):
    """Set an index column (subject, request_id, key_id) of one stored record."""
    store.execute("UPDATE %s SET %s = %s WHERE id = %s"
                  % (audit_table(store, record), column, sql_text(value), sql_text(record["id"])))


def count_rows(store, table):
    return int(store.rows("SELECT count(*) FROM %s" % table)[0][0])


def audit_row_count(store):
    if store.engine == "sqlite":
        tables = [t for t in store.tables() if re.match(r"^audit_\d{4}_\d{2}$", t)]
        return sum(count_rows(store, t) for t in tables)
    return count_rows(store, "audit_log")


def verify(phigate, store, *args, **kw):
    return run(phigate, "audit", "verify", "--store", store.url, *args, **kw)


def assert_admin_record(rec, action, resource, outcome="success"):
    assert rec["action"] == action, rec
    assert rec["actor"]["user_id"] == ME, rec
    assert rec["actor"]["role"] == "admin", rec
    assert rec["actor"]["key_id"] == "", rec
    assert rec["resource"] == resource, rec
    assert rec["outcome"] == outcome, rec
    assert ULID_RE.match(rec["id"]), rec
    assert rec["chain"].startswith("cli."), rec
    assert rec["seq"] == 1, rec
    assert rec["prev"] == "0" * 64, rec
    assert re.match(r"^[0-9a-f]{64}$", rec["hash"]), rec


@pytest.fixture
def three(phigate, migrated):
    """A store with three admin records: create A, create B, revoke A (newest last)."""
    a = create_key(phigate, migrated, "alice")
    b = create_key(phigate, migrated, "bob")
    r = run(phigate, "keys", "revoke", a["id"], "--store", migrated.url)
    assert r.rc == 0, r
    recs = records(phigate, migrated)
    assert [x["action"] for x in recs] == ["keys.revoke", "keys.create", "keys.create"], recs
    return migrated, a, b, recs


# ---- admin actions leave records ----------------------------------------------------------


def test_keys_create_rotate_revoke_each_leave_one_record(phigate, migrated):
    a = create_key(phigate, migrated, "alice", "admin", "--scopes", "phi:encrypt,audit:read")
    recs = records(phigate, migrated)
    assert len(recs) == 1
    assert_admin_record(recs[0], "keys.create", "key:" + a["id"])
    assert recs[0]["details"] == {"key_id": a["id"], "role": "admin", "user_id": "alice",
                                  "scopes": a["scopes"]}
    assert "phi:encrypt" in a["scopes"] and "audit:read" in a["scopes"]
    assert a["key"] not in json.dumps(recs)

    r = run(phigate, "keys", "rotate", a["id"], "--store", migrated.url, "--json")
    assert r.rc == 0, r
    new = r.json()
    recs = records(phigate, migrated)
    assert len(recs) == 2
    assert_admin_record(recs[0], "keys.rotate", "key:" + a["id"])
    assert recs[0]["details"]["key_id"] == new["id"]
    assert new["key"] not in json.dumps(recs)

    r = run(phigate, "keys", "revoke", new["id"], "--store", migrated.url)
    assert r.rc == 0, r
    recs = records(phigate, migrated)
    assert [x["action"] for x in recs] == ["keys.revoke", "keys.rotate", "keys.create"]
    assert_admin_record(recs[0], "keys.revoke", "key:" + new["id"])
    assert recs[0]["details"] == {"key_id": new["id"]}
    # three runs: three chains of one record each, all intact
    v = verify(phigate, migrated, "--json")
    assert v.rc == 0, v
    assert v.json() == {"ok": True, "records": 3, "chains": 3, "checkpoints": 3}


def test_failing_revoke_leaves_an_error_record(phigate, migrated):
    r = run(phigate, "keys", "revoke", "ak_0000000000000000", "--store", migrated.url)
    assert_failed(r, 1, "no key with that ID")
    recs = records(phigate, migrated)
    assert len(recs) == 1
    assert_admin_record(recs[0], "keys.revoke", "key:ak_0000000000000000", "error")
    assert recs[0]["details"] == {"key_id": "ak_0000000000000000", "error": "not_found"}
    assert verify(phigate, migrated).rc == 0


def test_admin_key_commands_without_master_key_change_nothing(phigate, migrated):
    r = phigate("keys", "create", "--role", "user", "--user", "u", "--store", migrated.url,
                mk=NO_MASTER_KEY)
    assert_failed(r, 1, "master key")
    assert count_rows(migrated, "api_keys") == 0
    assert audit_row_count(migrated) == 0


def test_keyring_in_store_actions_leave_records(phigate, migrated):
    url = migrated.url
    r = run(phigate, "phi", "keyring", "init", "--store", url, "--json")
    assert r.rc == 0, r
    first = r.json()["primary"]
    r = run(phigate, "phi", "keyring", "rotate", "--store", url, "--json")
    assert r.rc == 0, r
    second = r.json()["primary"]
    r = run(phigate, "phi", "keyring", "destroy", "--store", url, "--kid", first, "--json")
    assert r.rc == 0, r
    r = run(phigate, "phi", "keyring", "rewrap", "--store", url, "--json")
    assert r.rc == 0, r

    recs = [x for x in records(phigate, migrated) if x["action"].startswith("keyring.")]
    assert [x["action"] for x in recs] == ["keyring.rewrap", "keyring.destroy", "keyring.rotate"]
    for x in recs:
        assert_admin_record(x, x["action"], "keyring")
    assert recs[2]["details"] == {"primary": second, "previous": first}
    assert recs[1]["details"] == {"kid": first}
    assert recs[0]["details"] == {"rewrapped": 1}
    for action in ("keyring.rotate", "keyring.destroy", "keyring.rewrap"):
        assert len(records(phigate, migrated, "--action", action)) == 1
    v = verify(phigate, migrated, "--json")
    assert v.rc == 0, v
    assert v.json()["ok"] is True


def test_archive_and_prune_leave_records(phigate, migrated, tmp_path):
    r = run(phigate, "audit", "prune", "--store", migrated.url, "--json")
    assert r.rc == 0, r
    assert r.json() == {"dropped": 0}
    r = run(phigate, "audit", "archive", "--store", migrated.url, "--month", "2020-01",
            "--out", tmp_path / "a.jsonl.gz")
    assert r.rc == 1, r
    recs = records(phigate, migrated)
    assert [x["action"] for x in recs] == ["audit.archive", "audit.prune"]
    assert_admin_record(recs[0], "audit.archive", "2020-01", "error")
    assert recs[0]["details"] == {"month": "2020-01"}
    assert_admin_record(recs[1], "audit.prune", "partitions")
    assert recs[1]["details"] == {"dropped": 0}
    assert verify(phigate, migrated).rc == 0


# ---- query --------------------------------------------------------------------------------


def test_query_json_shape_and_newest_first(phigate, three):
    store, a, b, recs = three
    out = query(phigate, store)
    assert set(out) == {"records", "next_before"}
    assert out["next_before"] is None
    ids = [x["id"] for x in recs]
    assert ids == sorted(ids, reverse=True)
    ts = [x["ts"] for x in recs]
    assert ts == sorted(ts, reverse=True)
    assert recs[0]["resource"] == "key:" + a["id"]
    assert recs[1]["resource"] == "key:" + b["id"]
    assert recs[2]["resource"] == "key:" + a["id"]
    for x in recs:
        assert set(x) >= {"id", "ts", "request_id", "actor", "action", "resource", "outcome",
                          "ip", "details", "chain", "seq", "prev", "hash"}, x


def test_query_text_output_is_one_record_per_line(phigate, three):
    store, _, _, recs = three
    r = run(phigate, "audit", "query", "--store", store.url)
    assert r.rc == 0, r
    lines = r.stdout.splitlines()
    assert [json.loads(line) for line in lines] == recs


def test_query_pagination(phigate, three):
    store, _, _, recs = three
    p1 = query(phigate, store, "--limit", "2")
    assert p1["records"] == recs[:2]
    assert p1["next_before"] == recs[1]["id"]
    p2 = query(phigate, store, "--limit", "2", "--before", p1["next_before"])
    assert p2["records"] == recs[2:]
    assert p2["next_before"] is None
    # page by page with --limit 1 walks every record once, newest first
    seen, before = [], None
    for _ in range(5):
        args = ["--limit", "1"] + (["--before", before] if before else [])
        page = query(phigate, store, *args)
        seen += page["records"]
        before = page["next_before"]
        if before is None:
            break
    assert seen == recs
    assert query(phigate, store, "--limit", "1000")["records"] == recs


def test_query_filters(phigate, three):
    store, a, b, recs = three
    revoke, create_b, create_a = recs
    assert records(phigate, store, "--user", ME) == recs
    assert records(phigate, store, "--user", "cli:somebody-else") == []
    assert records(phigate, store, "--action", "keys.create") == [create_b, create_a]
    assert records(phigate, store, "--action", "keys.revoke") == [revoke]
    assert records(phigate, store, "--action", "keys.rotate") == []
    assert records(phigate, store, "--outcome", "success") == recs
    assert records(phigate, store, "--outcome", "error") == []
    assert records(phigate, store, "--outcome", "denied") == []
    assert records(phigate, store, "--action", "keys.create", "--user", ME,
                   "--outcome", "success", "--limit", "1") == [create_b]
    # an error record
    r = run(phigate, "keys", "revoke", "ak_0000000000000000", "--store", store.url)
    assert r.rc == 1, r
    errs = records(phigate, store, "--outcome", "error")
    assert len(errs) == 1 and errs[0]["resource"] == "key:ak_0000000000000000"


def test_query_time_window(phigate, three):
    store, _, _, recs = three
    revoke, create_b, create_a = recs
    assert records(phigate, store, *WIDE) == recs
    # --from inclusive, --to exclusive, at microsecond precision
    assert records(phigate, store, "--from", create_b["ts"]) == [revoke, create_b]
    assert records(phigate, store, "--to", create_b["ts"]) == [create_a]
    assert records(phigate, store, "--from", create_b["ts"], "--to", revoke["ts"]) == [create_b]
    day = create_a["ts"][:10]
    assert records(phigate, store, "--to", day) == []
    assert records(phigate, store, "--from", "2000-01-01", "--to", "2000-01-02") == []
    assert records(phigate, store, "--from", "2099-01-01T00:00:00Z") == []


def test_query_key_subject_request_id_filters(phigate, three):
    """The gateway sets these; here they are set on stored CLI records by SQL."""
    store, _, _, recs = three
    revoke, create_b, create_a = recs
    rid = "01J0000000000000000000000Q"
    set_column(store, create_a, "subject", "patient-42")
    set_column(store, create_b, "request_id", rid)
    set_column(store, revoke, "key_id", "ak_abcdefghijklmnop")
    assert [x["id"] for x in records(phigate, store, "--subject", "patient-42")] == [create_a["id"]]
    assert records(phigate, store, "--subject", "patient-43") == []
    assert [x["id"] for x in records(phigate, store, "--request-id", rid)] == [create_b["id"]]
    assert records(phigate, store, "--request-id", "01J0000000000000000000000R") == []
    assert [x["id"] for x in records(phigate, store, "--key", "ak_abcdefghijklmnop")] \
        == [revoke["id"]]
    assert records(phigate, store, "--key", "ak_0000000000000000") == []


@pytest.mark.parametrize("args,why", [
    (["--limit", "0"], "--limit"),
    (["--limit", "1001"], "--limit"),
    (["--limit", "-1"], "--limit"),
    (["--limit", "ten"], "--limit"),
    (["--outcome", "maybe"], "outcome"),
    (["--before", "not-a-ulid"], "ULID"),
    (["--request-id", "'; DROP TABLE api_keys;--"], "ULID"),
    (["--from", "2026-13-01"], "--from"),
    (["--from", "2026-02-30"], "--from"),
    (["--from", "yesterday"], "--from"),
    (["--to", "2026-11-27 10:00:00"], "--to"),
    (["--from", "2026-06-02", "--to", "2026-06-01"], "time range"),
    (["--from", "2026-06-01", "--to", "2026-06-01"], "time range"),
])
def test_query_bad_filters(phigate, three, args, why):
    store = three[0]
    keys_before = count_rows(store, "api_keys")
    audit_before = audit_row_count(store)
    r = run(phigate, "audit", "query", "--store", store.url, "--json", *args)
    assert_failed(r, 2, why)
    assert count_rows(store, "api_keys") == keys_before
    assert audit_row_count(store) == audit_before


INJECTIONS = ["x' OR '1'='1", "keys.create'; DROP TABLE api_keys;--", "\" OR 1=1 --", "%", "*",
              "keys.create' --", "') OR ('a'='a"]


def test_query_injection_text_is_a_plain_value(phigate, three):
    store = three[0]
    tables = store.tables()
    keys_before = count_rows(store, "api_keys")
    audit_before = audit_row_count(store)
    for option in ("--user", "--action", "--subject", "--key"):
        for payload in INJECTIONS:
            assert records(phigate, store, option, payload) == [], (option, payload)
    assert store.tables() == tables
    assert count_rows(store, "api_keys") == keys_before
    assert audit_row_count(store) == audit_before
    assert verify(phigate, store).rc == 0


def test_query_control_characters_rejected(phigate, three):
    r = run(phigate, "audit", "query", "--store", three[0].url, "--user", "a\tb")
    assert_failed(r, 2, "control")


# ---- report -------------------------------------------------------------------------------


def test_report_unknown_subject_is_empty_and_well_formed(phigate, three):
    store = three[0]
    r = run(phigate, "audit", "report", "--store", store.url, "--subject", "nobody", *WIDE)
    assert r.rc == 0, r
    assert r.stdout == CSV_HEADER + "\n"
    r = run(phigate, "audit", "report", "--store", store.url, "--subject", "nobody", *WIDE,
            "--format", "csv")
    assert r.rc == 0 and r.stdout == CSV_HEADER + "\n", r
    r = run(phigate, "audit", "report", "--store", store.url, "--subject", "nobody", *WIDE,
            "--format", "json")
    assert r.rc == 0, r
    assert r.json() == {"subject": "nobody", "from": "2000-01-01", "to": "2100-01-01",
                        "count": 0, "accesses": []}


def test_report_one_row_per_access(phigate, three):
    """Subjects come from the gateway; here two stored CLI records are given one by SQL."""
    store, _, _, recs = three
    revoke, create_b, create_a = recs
    set_column(store, create_a, "subject", "patient-42")
    set_column(store, revoke, "subject", "patient-42")
    r = run(phigate, "audit", "report", "--store", store.url, "--subject", "patient-42", *WIDE)
    assert r.rc == 0, r
    rows = list(csv.reader(io.StringIO(r.stdout)))
    assert rows[0] == CSV_HEADER.split(",")
    assert len(rows) == 3
    for row, rec in zip(rows[1:], [revoke, create_a]):
        assert dict(zip(rows[0], row)) == {
            "time": rec["ts"], "user_id": ME, "key_id": "", "role": "admin",
            "action": rec["action"], "resource": rec["resource"], "outcome": "success",
            "ip": "", "request_id": "", "record_id": rec["id"]}
    r = run(phigate, "audit", "report", "--store", store.url, "--subject", "patient-42", *WIDE,
            "--format", "json")
    assert r.rc == 0, r
    out = r.json()
    assert out["count"] == 2
    assert out["accesses"] == [revoke, create_a]
    # the window applies
    r = run(phigate, "audit", "report", "--store", store.url, "--subject", "patient-42",
            "--from", "2000-01-01", "--to", revoke["ts"], "--format", "json")
    assert r.rc == 0, r
    assert r.json()["count"] == 1 and r.json()["accesses"] == [create_a]


@pytest.mark.parametrize("args,why", [
    (["--from", "2026-01-01", "--to", "2027-01-01"], "--subject"),
    (["--subject", "u", "--to", "2027-01-01"], "--from"),
    (["--subject", "u", "--from", "2026-01-01"], "--to"),
    (["--subject", "u", "--from", "2026-01-01", "--to", "2027-01-01", "--format", "xml"],
     "--format"),
    (["--subject", "u", "--from", "2026-13-01", "--to", "2027-01-01"], "--from"),
    (["--subject", "u", "--from", "2027-01-01", "--to", "2026-01-01"], "time range"),
], ids=["no-subject", "no-from", "no-to", "format-xml", "bad-from", "from-after-to"])
def test_report_bad_arguments(phigate, migrated, args, why):
    r = run(phigate, "audit", "report", "--store", migrated.url, *args)
    assert_failed(r, 2, why)


# ---- verify -------------------------------------------------------------------------------


def test_verify_intact(phigate, three):
    store = three[0]
    v = verify(phigate, store, "--json")
    assert v.rc == 0, v
    assert v.json() == {"ok": True, "records": 3, "chains": 3, "checkpoints": 3}
    v = verify(phigate, store)
    assert v.rc == 0, v
    assert v.stdout == "audit log intact: 3 records in 3 chains, 3 signed checkpoints\n"


def test_verify_empty_store(phigate, migrated):
    v = verify(phigate, migrated, "--json")
    assert v.rc == 0, v
    assert v.json() == {"ok": True, "records": 0, "chains": 0, "checkpoints": 0}


def assert_broken(phigate, store, problem, rec=None):
    v = verify(phigate, store)
    assert v.rc == 1, v
    assert v.stdout.startswith("BROKEN: chain "), v
    assert problem in v.stdout, v
    v = verify(phigate, store, "--json")
    assert v.rc == 1, v
    out = v.json()
    assert out["ok"] is False
    assert problem in out["broken"]["problem"], out
    if rec is not None:
        assert out["broken"]["chain"] == rec["chain"], out
    return out


def test_verify_detects_an_edited_record(phigate, three):
    store, a, b, recs = three
    create_b = recs[1]
    table = audit_table(store, create_b)
    text = store.value("SELECT record FROM %s WHERE id = %s" % (table, sql_text(create_b["id"])))
    assert '"user_id":"bob"' in text
    edited = text.replace('"user_id":"bob"', '"user_id":"bot"')
    store.execute("UPDATE %s SET record = %s WHERE id = %s"
                  % (table, sql_text(edited), sql_text(create_b["id"])))
    out = assert_broken(phigate, store, "edited", create_b)
    assert out["broken"]["id"] == create_b["id"] and out["broken"]["seq"] == 1


def test_verify_detects_a_deleted_record(phigate, three):
    """Each CLI run is a chain of one; deleting it leaves a head and checkpoint at seq 1."""
    store, a, b, recs = three
    victim = recs[1]
    store.execute("DELETE FROM %s WHERE id = %s" % (audit_table(store, victim),
                                                    sql_text(victim["id"])))
    out = assert_broken(phigate, store, "truncated", victim)
    assert out["broken"]["seq"] == 1


def test_verify_detects_a_deleted_record_without_its_checkpoint(phigate, three):
    store, a, b, recs = three
    victim = recs[0]
    store.execute("DELETE FROM %s WHERE id = %s" % (audit_table(store, victim),
                                                    sql_text(victim["id"])))
    store.execute("DELETE FROM audit_checkpoints WHERE chain = %s" % sql_text(victim["chain"]))
    assert_broken(phigate, store, "truncated", victim)


def test_verify_detects_a_forged_checkpoint(phigate, three):
    store, a, b, recs = three
    victim = recs[2]
    mac = store.value("SELECT mac FROM audit_checkpoints WHERE chain = %s"
                      % sql_text(victim["chain"]))
    assert re.match(r"^[0-9a-f]{64}$", mac), mac
    forged = ("0" if mac[0] != "0" else "1") + mac[1:]
    store.execute("UPDATE audit_checkpoints SET mac = %s WHERE chain = %s"
                  % (sql_text(forged), sql_text(victim["chain"])))
    assert_broken(phigate, store, "checkpoint", victim)


def test_verify_with_another_master_key_fails(phigate, three, mk):
    store = three[0]
    v = verify(phigate, store, mk=mk)
    assert v.rc == 1, v
    assert v.stdout.startswith("BROKEN: chain ") and "checkpoint" in v.stdout, v


def test_verify_after_a_master_key_rotation(phigate, three, mk):
    """Checkpoints signed before a master-key rotation verify while the old key
    is still listed (NEW,OLD: the first signs, all verify)."""
    store = three[0]
    create_key(phigate, store, "bob")  # one more chain, signed under the old key
    rotated = mk + "," + ADMIN_MASTER_KEY
    v = verify(phigate, store, "--json", mk=rotated)
    assert v.rc == 0, v
    assert v.json()["ok"] is True and v.json()["checkpoints"] == 4
    # a record written after the rotation is signed by the new key
    r = run(phigate, "keys", "create", "--role", "user", "--user", "carol",
            "--store", store.url, "--json", mk=rotated)
    assert r.rc == 0, r
    v = verify(phigate, store, "--json", mk=rotated)
    assert v.rc == 0 and v.json()["checkpoints"] == 5, v
    # with only the new key, the old checkpoints no longer verify
    v = verify(phigate, store, mk=mk)
    assert v.rc == 1 and "checkpoint" in v.stdout, v


def test_verify_needs_the_master_key(phigate, three):
    v = verify(phigate, three[0], mk=NO_MASTER_KEY)
    assert_failed(v, 1, "master key")


def test_verify_bad_times(phigate, migrated):
    assert_failed(verify(phigate, migrated, "--from", "yesterday"), 2, "--from")
    assert_failed(verify(phigate, migrated, "--to", "2026-13-01"), 2, "--to")


# ---- archive and prune ----------------------------------------------------------------------


def test_archive_current_month_refused(phigate, three, tmp_path):
    store, _, _, recs = three
    month = recs[0]["ts"][:7]
    out = tmp_path / "cur.jsonl.gz"
    r = run(phigate, "audit", "archive", "--store", store.url, "--month", month, "--out", out)
    assert_failed(r, 1, "current month")
    assert [p for p in os.listdir(tmp_path) if p.startswith("cur.")] == []
    last = records(phigate, store, "--action", "audit.archive")
    assert len(last) == 1
    assert_admin_record(last[0], "audit.archive", month, "error")
    # nothing was marked archived or dropped
    assert store.rows("SELECT month FROM audit_partitions WHERE archived_at <> 0 "
                      "OR dropped_at <> 0") == []


def test_archive_month_without_partition(phigate, migrated, tmp_path):
    out = tmp_path / "old.jsonl.gz"
    r = run(phigate, "audit", "archive", "--store", migrated.url, "--month", "2020-01",
            "--out", out)
    assert_failed(r, 1, ["no partition", "2020-01"])
    assert [p for p in os.listdir(tmp_path) if p.startswith("old.")] == []


@pytest.mark.parametrize("month", ["2026-5", "2026-13", "26-01-01", "abcd-ef"])
def test_archive_bad_month(phigate, migrated, month, tmp_path):
    r = run(phigate, "audit", "archive", "--store", migrated.url, "--month", month,
            cwd=tmp_path)
    assert_failed(r, 2, "month")


def test_archive_and_prune_need_the_master_key(phigate, migrated, tmp_path):
    r = phigate("audit", "archive", "--store", migrated.url, "--month", "2020-01",
                "--out", tmp_path / "x.gz", mk=NO_MASTER_KEY)
    assert_failed(r, 1, "master key")
    r = phigate("audit", "prune", "--store", migrated.url, mk=NO_MASTER_KEY)
    assert_failed(r, 1, "master key")
    assert audit_row_count(migrated) == 0


def test_prune_fresh_store(phigate, migrated):
    r = run(phigate, "audit", "prune", "--store", migrated.url)
    assert r.rc == 0, r
    assert r.stdout == "dropped 0 partition(s)\n"
    r = run(phigate, "audit", "prune", "--store", migrated.url, "--json")
    assert r.rc == 0 and r.json() == {"dropped": 0}, r
    # the current month's partition is still there
    assert store_has_current_partition(migrated)


def store_has_current_partition(store):
    rows = store.rows("SELECT month FROM audit_partitions WHERE dropped_at = 0")
    return len(rows) >= 1


# ---- PHI in admin records -------------------------------------------------------------------


def audit_text(store):
    """Every column of every audit table, as text."""
    if store.engine == "sqlite":
        tables = sorted(t for t in store.tables() if t.startswith("audit_"))
    else:
        tables = ["audit_log", "audit_chains", "audit_checkpoints", "audit_partitions"]
    out = []
    for t in tables:
        out += ["\t".join(row) for row in store.rows("SELECT * FROM %s" % t)]
    return "\n".join(out)


def test_key_description_is_not_in_the_audit_log(phigate, migrated):
    rec = create_key(phigate, migrated, "alice", "user", "--description", PHI_DESCRIPTION)
    assert rec["description"] == PHI_DESCRIPTION
    r = run(phigate, "keys", "rotate", rec["id"], "--store", migrated.url)
    assert r.rc == 0, r
    # it is in api_keys (that is where it belongs) ...
    assert PHI_DESCRIPTION in "\n".join("\t".join(x) for x in
                                        migrated.rows("SELECT * FROM api_keys"))
    # ... and nowhere in the audit tables, nor in what audit query/report print
    text = audit_text(migrated)
    assert "keys.create" in text and "keys.rotate" in text
    for piece in PHI_PIECES:
        assert piece not in text, piece
    r = run(phigate, "audit", "query", "--store", migrated.url, "--json")
    assert r.rc == 0, r
    for piece in PHI_PIECES:
        assert piece not in r.stdout
    for x in r.json()["records"]:
        assert "description" not in x["details"]
    dump = audit_dump(migrated)
    assert "keys.create" in dump
    for piece in PHI_PIECES:
        assert piece not in dump, piece


def audit_dump(store):
    """A dump of the audit tables only: sqlite3 iterdump lines, or pg_dump -t 'audit*'."""
    if store.engine == "sqlite":
        import sqlite3
        con = sqlite3.connect(store.path)
        try:
            return "\n".join(line for line in con.iterdump()
                             if re.match(r'^(INSERT INTO|CREATE TABLE) "?audit_', line))
        finally:
            con.close()
    pg_dump = os.path.join(os.environ.get("PGBIN", "/usr/lib/postgresql/15/bin"), "pg_dump")
    if not os.access(pg_dump, os.X_OK):
        pg_dump = "/usr/bin/pg_dump"
    proc = subprocess.run([pg_dump, "-d", store.url, "-t", "public.audit*"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60,
                          env=conftest.clean_env())
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.decode("utf-8", "replace")


def test_verify_catches_an_edited_filter_column(phigate, migrated):
    """The columns reports filter on are copies of the hashed text: editing one (to hide
    a record from an accounting report) must break verification."""
    r = phigate("keys", "create", "--role", "user", "--user", "victim", "--store", migrated.url)
    assert r.rc == 0, r
    table = "audit_log" if migrated.engine == "postgres" else \
        "audit_" + __import__("time").strftime("%Y_%m", __import__("time").gmtime())
    migrated.execute(f"UPDATE {table} SET action = 'keys.hidden'")
    v = phigate("audit", "verify", "--store", migrated.url, "--json",
                mk=__import__("conftest").ADMIN_MASTER_KEY)
    assert v.rc == 1, v
    assert "column" in v.json()["broken"]["problem"]


# ---- regressions from review ------------------------------------------------------------


def test_a_forged_dropped_partition_does_not_hide_a_deletion(phigate, three):
    """A partition marked dropped is unsigned data: it must not make a full verify trust
    where chains start (that hid deleted records)."""
    store, a, b, recs = three
    victim = recs[1]
    store.execute("DELETE FROM %s WHERE id = %s" % (audit_table(store, victim),
                                                    sql_text(victim["id"])))
    store.execute("INSERT INTO audit_partitions (month, created_at, archived_at, "
                  "archive_sha256, dropped_at) VALUES ('2001-01', 1, 1, '', 1)")
    assert_broken(phigate, store, "truncated", victim)


def test_a_record_of_an_unknown_chain_is_found(phigate, three):
    """A row whose chain has no head was never written by a writer: verify names it
    (queries and reports would otherwise show it as genuine)."""
    store, a, b, recs = three
    victim = recs[1]
    table = audit_table(store, victim)
    cols = "id, ts_us, chain, seq, hash, request_id, key_id, user_id, action, outcome, " \
           "subject, record"
    store.execute("INSERT INTO %s (%s) SELECT '01ZZZZZZZZZZZZZZZZZZZZZZZZ', ts_us, 'ghost', seq, "
                  "hash, request_id, key_id, 'mallory', action, outcome, 'patient-7', record "
                  "FROM %s WHERE id = %s" % (table, cols, table, sql_text(victim["id"])))
    assert_broken(phigate, store, "no head")


def test_lowercase_ulids_page_like_uppercase(phigate, three):
    store, a, b, recs = three
    upper = query(phigate, store, "--limit", "1", "--before", recs[0]["id"])["records"]
    lower = query(phigate, store, "--limit", "1", "--before",
                  recs[0]["id"].lower())["records"]
    assert [x["id"] for x in lower] == [x["id"] for x in upper] == [recs[1]["id"]]


def test_non_utf8_text_is_refused_and_nothing_is_stored(phigate, migrated):
    before = count_rows(migrated, "api_keys")
    r = subprocess.run([phigate.path, "keys", "create", "--role", "user", "--user",
                        b"bob\xff", "--store", migrated.url],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       env=conftest.clean_env(PHI_MASTER_KEY=conftest.ADMIN_MASTER_KEY))
    assert r.returncode == 2, r
    assert r.stdout == b""
    assert count_rows(migrated, "api_keys") == before
    # a revoke of a non-UTF-8 id is an unknown key, and that attempt is still recorded
    r = subprocess.run([phigate.path, "keys", "revoke", b"ak_\xff", "--store", migrated.url],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       env=conftest.clean_env(PHI_MASTER_KEY=conftest.ADMIN_MASTER_KEY))
    assert r.returncode == 1 and b"no key" in r.stderr, r
    recs = records(phigate, migrated)
    assert recs[0]["action"] == "keys.revoke" and recs[0]["outcome"] == "error", recs
