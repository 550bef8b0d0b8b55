"""`phigate keys ...`: API keys (docs/formats.md section 10), on both engines.

An independent Python implementation of the key format (10.1-10.2) checks what
phigate makes and stores, and makes well-formed keys phigate never issued.
"""
import base64
import hashlib
import json
import os
import re
import struct
import time
import zlib

import pytest

import conftest
from conftest import assert_failed

# ---- the format, from docs/formats.md 10.1 / 10.2 ------------------------------------------

B62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
KEY_RE = re.compile(r"^phg_[0-9A-Za-z]{49}$")
ID_RE = re.compile(r"^ak_[a-z0-9]{16}$")
SCOPE_BITS = {"phi:encrypt": 1, "phi:decrypt": 2, "audit:read": 4, "keys:admin": 8,
              "webhooks:admin": 16}


def b62(n, width):
    s = ""
    for _ in range(width):
        n, d = divmod(n, 62)
        s = B62[d] + s
    assert n == 0
    return s


def make_key(random32):
    head = "phg_" + b62(int.from_bytes(random32, "big"), 43)
    return head + b62(zlib.crc32(head.encode()), 6)


def well_formed(key):
    return (len(key) == 53 and key.startswith("phg_") and all(c in B62 for c in key[4:])
            and key[47:] == b62(zlib.crc32(key[:47].encode()), 6))


def stored(key):
    h = hashlib.sha256(key.encode()).digest()
    return h, struct.unpack(">q", h[:8])[0]


def test_python_format_matches_doc_example():
    """The worked example of 10.3, so that the checks below rest on the documented rule."""
    key = make_key(bytes(range(32)))
    body = key[4:47]
    assert body == "003aUlTJC7tjlCTQj2uNU3MFagCXG9LRKRcwGkBIDlf"
    assert zlib.crc32(("phg_" + body).encode()) == 0x6799cc50
    assert key[47:] == "1td1g8"
    assert key == "phg_003aUlTJC7tjlCTQj2uNU3MFagCXG9LRKRcwGkBIDlf1td1g8"
    h, index = stored(key)
    assert h.hex() == "2982e14e7a8d05c148881086d806cd1da1b0a06467ed6044b527320973306342"
    assert index == 2991200829707191745
    assert well_formed(key) and KEY_RE.match(key)
    assert not well_formed(key[:-1] + ("0" if key[-1] != "0" else "1"))
    # 62^43 > 2^256: the largest body fits, in exactly 43 digits
    assert len(make_key(b"\xff" * 32)) == 53 and well_formed(make_key(b"\xff" * 32))


# ---- helpers ----------------------------------------------------------------------------------


def create(phigate, store, *args, user="alice", role="user"):
    r = phigate("keys", "create", "--role", role, "--user", user, *args, "--store", store.url,
                "--json")
    assert r.rc == 0, r
    return r.json()


def verify(phigate, store, key):
    r = phigate("keys", "verify", "--store", store.url, "--json", input=key + "\n")
    return r


def assert_valid(phigate, store, key, key_id):
    r = verify(phigate, store, key)
    assert r.rc == 0, r
    out = r.json()
    assert out["valid"] is True and out["key_id"] == key_id, out
    return out


def assert_invalid(phigate, store, key, reason):
    r = verify(phigate, store, key)
    assert r.rc == 1, r
    assert r.json() == {"valid": False, "reason": reason}, r
    # and in text
    r = phigate("keys", "verify", "--store", store.url, input=key + "\n")
    assert r.rc == 1 and r.stdout == "invalid: %s\n" % reason, r


def count(store):
    return int(store.rows("SELECT count(*) FROM api_keys")[0][0])


def row(store, key_id):
    rows = store.rows("SELECT %s, key_index, role, user_id, scopes, rate_limit, expires_at, "
                      "revoked_at, grace_until, replaced_by FROM api_keys WHERE id = '%s'"
                      % (store.hex("key_hash"), key_id))
    assert len(rows) == 1, rows
    names = ["key_hash", "key_index", "role", "user_id", "scopes", "rate_limit", "expires_at",
             "revoked_at", "grace_until", "replaced_by"]
    return dict(zip(names, rows[0]))


def secret_forms(key):
    h = hashlib.sha256(key.encode()).digest()
    return [key, key[4:], key[4:47], h.hex(), h.hex().upper(), base64.b64encode(h).decode(),
            base64.urlsafe_b64encode(h).decode().rstrip("=")]


# ---- create -----------------------------------------------------------------------------------


def test_create_prints_key_once(phigate, migrated):
    r = phigate("keys", "create", "--role", "admin", "--user", "root", "--store", migrated.url)
    assert r.rc == 0, r
    assert re.fullmatch(r"phg_[0-9A-Za-z]{49}\n", r.stdout), r
    key = r.stdout[:-1]
    assert KEY_RE.match(key) and well_formed(key)
    # stderr names the key's ID, not the key
    ids = re.findall(r"ak_[a-z0-9]{16}", r.stderr)
    assert len(ids) == 1 and key not in r.stderr, r
    assert count(migrated) == 1
    assert_valid(phigate, migrated, key, ids[0])


def test_create_json(phigate, migrated):
    out = create(phigate, migrated, "--scopes", "phi:encrypt,keys:admin", "--description",
                 "first admin", "--limit", "100/1m", role="admin", user="root")
    assert set(out) >= {"id", "key", "role", "user_id", "scopes", "state"}
    assert ID_RE.match(out["id"])
    assert KEY_RE.match(out["key"]) and well_formed(out["key"])
    assert out["role"] == "admin" and out["user_id"] == "root"
    assert set(out["scopes"].split()) == {"phi:encrypt", "keys:admin"}
    assert out["state"] == "active"
    assert out["description"] == "first admin" and out["rate_limit"] == "100/1m"
    assert out["expires_at"] is None and out["revoked_at"] is None


def test_stored_row_is_hash_not_key(phigate, migrated):
    out = create(phigate, migrated, "--scopes", "phi:encrypt,keys:admin", role="admin")
    key = out["key"]
    h, index = stored(key)
    rec = row(migrated, out["id"])
    assert rec["key_hash"] == h.hex()
    assert int(rec["key_index"]) == index
    assert rec["role"] == "admin" and rec["user_id"] == "alice"
    assert int(rec["scopes"]) == SCOPE_BITS["phi:encrypt"] | SCOPE_BITS["keys:admin"]
    dump = migrated.dump()
    assert key.encode() not in dump
    assert key[4:47].encode() not in dump
    # the change counter moved, and the row carries it
    counter = int(migrated.rows("SELECT counter FROM phigate_changes")[0][0])
    assert counter >= 1
    assert int(migrated.rows("SELECT version FROM api_keys WHERE id = '%s'" % out["id"])[0][0]) \
        == counter


def test_list_and_show_never_print_secret(phigate, migrated):
    a = create(phigate, migrated, user="alice")
    b = create(phigate, migrated, "--scopes", "phi:decrypt", user="bob", role="admin")
    outputs = []
    for args in (["list"], ["list", "--json"], ["show", a["id"]], ["show", a["id"], "--json"],
                 ["show", b["id"]], ["show", b["id"], "--json"]):
        r = phigate("keys", *args, "--store", migrated.url)
        assert r.rc == 0, r
        outputs.append(r.stdout + r.stderr)
    for text in outputs:
        for k in (a["key"], b["key"]):
            for form in secret_forms(k):
                assert form not in text, (form, text)
    listed = json.loads(outputs[1])["keys"]
    assert sorted(k["id"] for k in listed) == sorted([a["id"], b["id"]])
    assert all("key" not in k and "key_hash" not in k for k in listed)
    assert a["id"] in outputs[0] and b["id"] in outputs[0]
    shown = json.loads(outputs[3])
    assert shown["id"] == a["id"] and shown["user_id"] == "alice" and shown["state"] == "active"
    assert "key" not in shown


# ---- verify -----------------------------------------------------------------------------------


def test_verify_valid(phigate, migrated):
    out = create(phigate, migrated, "--scopes", "phi:encrypt,phi:decrypt", user="u-42")
    v = assert_valid(phigate, migrated, out["key"], out["id"])
    assert v["user_id"] == "u-42" and v["role"] == "user"
    assert set(v["scopes"].split()) == {"phi:encrypt", "phi:decrypt"}
    r = phigate("keys", "verify", "--store", migrated.url, input=out["key"])  # no newline
    assert r.rc == 0 and r.stdout.startswith("valid: key %s" % out["id"]), r


def test_verify_rejects_bad_keys(phigate, migrated):
    key = create(phigate, migrated)["key"]
    assert_invalid(phigate, migrated, key[:-1], "malformed")          # 52 characters
    assert_invalid(phigate, migrated, key + "A", "malformed")         # 54 characters
    assert_invalid(phigate, migrated, "", "malformed")
    assert_invalid(phigate, migrated, "phx_" + key[4:], "malformed")  # wrong prefix
    assert_invalid(phigate, migrated, "PHG_" + key[4:], "malformed")
    assert_invalid(phigate, migrated, key[:10] + "-" + key[11:], "malformed")
    # one changed character of the body: well-formed text, wrong check
    c = key[20]
    changed = key[:20] + ("a" if c != "a" else "b") + key[21:]
    assert not well_formed(changed)
    assert_invalid(phigate, migrated, changed, "bad_checksum")
    # a changed check character
    changed = key[:-1] + ("0" if key[-1] != "0" else "1")
    assert_invalid(phigate, migrated, changed, "bad_checksum")
    # a well-formed key phigate never issued
    unknown = make_key(os.urandom(32))
    assert well_formed(unknown)
    assert_invalid(phigate, migrated, unknown, "unknown")
    # the real one still works
    assert verify(phigate, migrated, key).rc == 0


def test_verify_revoked(phigate, migrated):
    out = create(phigate, migrated)
    r = phigate("keys", "revoke", out["id"], "--store", migrated.url)
    assert r.rc == 0 and r.stdout == "revoked %s\n" % out["id"], r
    assert_invalid(phigate, migrated, out["key"], "revoked")
    shown = phigate("keys", "show", out["id"], "--store", migrated.url, "--json").json()
    assert shown["state"] == "revoked" and shown["revoked_at"] is not None
    # revoking again is fine (include/phigate/apikey.h); rotating a revoked key fails
    r = phigate("keys", "revoke", out["id"], "--store", migrated.url)
    assert r.rc == 0, r
    assert_invalid(phigate, migrated, out["key"], "revoked")
    assert_failed(phigate("keys", "rotate", out["id"], "--store", migrated.url), 1, "revoked")
    assert count(migrated) == 1


def test_verify_expired(phigate, migrated):
    out = create(phigate, migrated, "--expires", "2s")
    assert out["expires_at"] is not None
    assert_valid(phigate, migrated, out["key"], out["id"])
    time.sleep(3)
    assert_invalid(phigate, migrated, out["key"], "expired")
    shown = phigate("keys", "show", out["id"], "--store", migrated.url, "--json").json()
    assert shown["state"] == "expired"


def test_expires_at_a_time(phigate, migrated):
    out = create(phigate, migrated, "--expires", "2099-01-02T03:04:05Z")
    assert out["expires_at"] == "2099-01-02T03:04:05Z"
    assert int(row(migrated, out["id"])["expires_at"]) == 4071006245
    assert_valid(phigate, migrated, out["key"], out["id"])


def test_rotate_without_grace(phigate, migrated):
    old = create(phigate, migrated, "--scopes", "audit:read", "--limit", "10/1s", user="carol")
    r = phigate("keys", "rotate", old["id"], "--store", migrated.url, "--grace", "0s", "--json")
    assert r.rc == 0, r
    new = r.json()
    assert new["previous"] == old["id"] and new["id"] != old["id"]
    assert KEY_RE.match(new["key"]) and well_formed(new["key"]) and new["key"] != old["key"]
    assert new["user_id"] == "carol" and new["scopes"] == "audit:read"
    assert new["rate_limit"] == "10/1s"
    assert_invalid(phigate, migrated, old["key"], "expired")
    assert_valid(phigate, migrated, new["key"], new["id"])
    assert row(migrated, old["id"])["replaced_by"] == new["id"]
    assert count(migrated) == 2


def test_rotate_default_grace_is_zero(phigate, migrated):
    old = create(phigate, migrated)
    r = phigate("keys", "rotate", old["id"], "--store", migrated.url)
    assert r.rc == 0 and KEY_RE.match(r.stdout.strip()), r
    assert r.stdout == r.stdout.strip() + "\n"
    assert_invalid(phigate, migrated, old["key"], "expired")
    new_id = row(migrated, old["id"])["replaced_by"]
    assert_valid(phigate, migrated, r.stdout.strip(), new_id)


def test_rotate_with_grace_both_valid(phigate, migrated):
    old = create(phigate, migrated)
    r = phigate("keys", "rotate", old["id"], "--store", migrated.url, "--grace", "1h", "--json")
    assert r.rc == 0, r
    new = r.json()
    assert_valid(phigate, migrated, old["key"], old["id"])
    assert_valid(phigate, migrated, new["key"], new["id"])
    shown = phigate("keys", "show", old["id"], "--store", migrated.url, "--json").json()
    assert shown["state"] == "rotating" and shown["replaced_by"] == new["id"]
    # rotating the same key again is refused, and makes no key
    r = phigate("keys", "rotate", old["id"], "--store", migrated.url, "--grace", "1h")
    assert_failed(r, 1, "already rotated")
    assert count(migrated) == 2
    # revoking the old one during its grace time ends it at once
    assert phigate("keys", "revoke", old["id"], "--store", migrated.url).rc == 0
    assert_invalid(phigate, migrated, old["key"], "revoked")
    assert_valid(phigate, migrated, new["key"], new["id"])


@pytest.mark.parametrize("grace,seconds", [("90s", 90), ("15m", 900), ("24h", 86400),
                                           ("7d", 604800)])
def test_rotate_grace_durations(phigate, migrated, grace, seconds):
    old = create(phigate, migrated)
    t0 = int(time.time())
    r = phigate("keys", "rotate", old["id"], "--store", migrated.url, "--grace", grace)
    t1 = int(time.time())
    assert r.rc == 0, r
    until = int(row(migrated, old["id"])["grace_until"])
    assert t0 + seconds <= until <= t1 + seconds
    assert_valid(phigate, migrated, old["key"], old["id"])


@pytest.mark.parametrize("grace", ["10x", "", "-5m", "5", "1.5h", "h", "99999999999999999999d"])
def test_rotate_bad_grace(phigate, migrated, grace):
    old = create(phigate, migrated)
    r = phigate("keys", "rotate", old["id"], "--store", migrated.url, "--grace", grace)
    assert_failed(r, 2, "--grace")
    assert count(migrated) == 1
    assert row(migrated, old["id"])["grace_until"] == "0"
    assert_valid(phigate, migrated, old["key"], old["id"])


# ---- bad input ----------------------------------------------------------------------------------

BAD_CREATE = [
    ("unknown-role", ["--role", "root", "--user", "u"], "--role"),
    ("missing-role", ["--user", "u"], "--role"),
    ("unknown-scope", ["--role", "user", "--user", "u", "--scopes", "phi:encrypt,phi:all"],
     "unknown scope"),
    ("expires-past", ["--role", "user", "--user", "u", "--expires", "2020-01-01T00:00:00Z"],
     "past"),
    ("expires-text", ["--role", "user", "--user", "u", "--expires", "next tuesday"], "--expires"),
    ("expires-date", ["--role", "user", "--user", "u", "--expires", "2099-02-30T00:00:00Z"],
     "--expires"),
    ("expires-unit", ["--role", "user", "--user", "u", "--expires", "10x"], "--expires"),
    ("missing-user", ["--role", "user"], "--user"),
    ("user-129", ["--role", "user", "--user", "u" * 129], "user id"),
    ("user-empty", ["--role", "user", "--user", ""], "user"),
    ("limit-chars", ["--role", "user", "--user", "u", "--limit", "100/1m;drop"], "rate limit"),
    ("limit-space", ["--role", "user", "--user", "u", "--limit", "100 /1m"], "rate limit"),
]


@pytest.mark.parametrize("args,why", [b[1:] for b in BAD_CREATE], ids=[b[0] for b in BAD_CREATE])
def test_create_bad_input(phigate, migrated, args, why):
    r = phigate("keys", "create", *args, "--store", migrated.url)
    assert r.rc in (1, 2), r
    assert r.out == b"" and r.err.startswith(b"phigate: "), r
    assert why in r.stderr, r
    assert count(migrated) == 0


def test_create_user_of_128_chars_is_fine(phigate, migrated):
    out = create(phigate, migrated, user="u" * 128)
    assert out["user_id"] == "u" * 128


@pytest.mark.parametrize("cmd", ["show", "revoke", "rotate"])
def test_unknown_id(phigate, migrated, cmd):
    create(phigate, migrated)
    r = phigate("keys", cmd, "ak_0000000000000000", "--store", migrated.url)
    assert_failed(r, 1, "no key")
    assert count(migrated) == 1


HOSTILE_IDS = ["../../etc/passwd", "x' OR '1'='1", "ak_x; DROP TABLE api_keys;--",
               "ak_x\" OR \"1\"=\"1", "%", "_", "ak_%"]


@pytest.mark.parametrize("cmd", ["show", "revoke", "rotate"])
def test_hostile_ids_are_not_found(phigate, migrated, cmd):
    keep = create(phigate, migrated)
    before = migrated.rows("SELECT id, revoked_at, grace_until, version FROM api_keys ORDER BY id")
    for bad in HOSTILE_IDS:
        r = phigate("keys", cmd, bad, "--store", migrated.url)
        assert r.rc in (1, 2) and r.out == b"", (bad, r)
        if r.rc == 1:
            assert "no key" in r.stderr, (bad, r)
        assert "api_keys" in migrated.tables()
        assert migrated.rows("SELECT id, revoked_at, grace_until, version FROM api_keys "
                             "ORDER BY id") == before, bad
    assert_valid(phigate, migrated, keep["key"], keep["id"])
    shown = phigate("keys", "show", keep["id"], "--store", migrated.url, "--json")
    assert shown.rc == 0 and shown.json()["state"] == "active"


def test_missing_id(phigate, migrated):
    for cmd in ("show", "revoke", "rotate"):
        r = phigate("keys", cmd, "--store", migrated.url)
        assert_failed(r, 2, "missing the key ID")


def test_list_pages(phigate, migrated):
    ids = sorted(create(phigate, migrated, user="u%d" % i)["id"] for i in range(5))
    r = phigate("keys", "list", "--store", migrated.url, "--json", "--page-size", "2")
    assert r.rc == 0, r
    assert [k["id"] for k in r.json()["keys"]] == ids[:2]
    r = phigate("keys", "list", "--store", migrated.url, "--json", "--page-size", "2",
                "--after", ids[1])
    assert [k["id"] for k in r.json()["keys"]] == ids[2:4]
    r = phigate("keys", "list", "--store", migrated.url, "--json")
    assert [k["id"] for k in r.json()["keys"]] == ids
    for bad in ("0", "1001", "x"):
        r = phigate("keys", "list", "--store", migrated.url, "--page-size", bad)
        assert r.rc == 2 and "--page-size" in r.stderr, r


@pytest.mark.parametrize("command", [["create", "--role", "user", "--user", "u1"],
                                     ["revoke", "ak_0000000000000000"],
                                     ["rotate", "ak_0000000000000000"]])
def test_admin_commands_need_the_master_key_for_their_audit_record(phigate, migrated, command):
    before = count(migrated)
    r = phigate("keys", *command, "--store", migrated.url, mk=conftest.NO_MASTER_KEY)
    assert_failed(r, 1, "master key")
    assert count(migrated) == before


def test_admin_commands_leave_audit_records(phigate, migrated):
    rec = create(phigate, migrated)
    assert phigate("keys", "revoke", rec["id"], "--store", migrated.url).rc == 0
    r = phigate("audit", "query", "--store", migrated.url, "--json")
    assert r.rc == 0, r
    records = r.json()["records"]
    actions = [x["action"] for x in records]
    assert actions[:2] == ["keys.revoke", "keys.create"]
    for x in records[:2]:
        assert x["actor"]["user_id"].startswith("cli:")
        assert x["resource"] == "key:" + rec["id"]
        assert x["outcome"] == "success"
    # the key itself never reaches the audit log
    assert rec["key"] not in r.stdout
    v = phigate("audit", "verify", "--store", migrated.url, "--json",
                mk=conftest.ADMIN_MASTER_KEY)
    assert v.rc == 0, v
    assert v.json()["ok"] is True and v.json()["records"] >= 2


# ---- rate limits: create --limit (repeatable) and set-limit ---------------------------------


def set_limit(phigate, store, key_id, *args, mk=None):
    """`keys set-limit`: audited, so it needs the master key (given here)."""
    return phigate("keys", "set-limit", key_id, *args, "--store", store.url,
                   mk=conftest.ADMIN_MASTER_KEY if mk is None else mk)


def counter(store):
    return int(store.rows("SELECT counter FROM phigate_changes")[0][0])


def test_create_with_two_limits(phigate, migrated):
    out = create(phigate, migrated, "--limit", "100/1m", "--limit", "5000/1h")
    assert out["rate_limit"] == "100/1m,5000/1h"
    assert row(migrated, out["id"])["rate_limit"] == "100/1m,5000/1h"
    # a comma list in one flag, mixed with another flag; stored shortest window first
    out = create(phigate, migrated, "--limit", "5000/1h,10/1s", "--limit=100/1m")
    assert out["rate_limit"] == "10/1s,100/1m,5000/1h"
    shown = phigate("keys", "show", out["id"], "--store", migrated.url, "--json").json()
    assert shown["rate_limit"] == "10/1s,100/1m,5000/1h"
    listed = phigate("keys", "list", "--store", migrated.url, "--json").json()["keys"]
    assert {k["id"]: k["rate_limit"] for k in listed}[out["id"]] == "10/1s,100/1m,5000/1h"
    # no --limit: no limit of its own
    out = create(phigate, migrated)
    assert out["rate_limit"] is None and row(migrated, out["id"])["rate_limit"] == ""


def test_set_limit(phigate, migrated):
    out = create(phigate, migrated, "--limit", "100/1m")
    c0 = counter(migrated)
    r = set_limit(phigate, migrated, out["id"], "--limit", "100/1m", "--limit", "5000/1h")
    assert r.rc == 0 and r.stdout == "rate limit of %s: 100/1m,5000/1h\n" % out["id"], r
    assert row(migrated, out["id"])["rate_limit"] == "100/1m,5000/1h"
    # the change moved the counter and the row carries it: every instance reloads the key
    assert counter(migrated) == c0 + 1
    assert int(migrated.rows("SELECT version FROM api_keys WHERE id = '%s'" % out["id"])[0][0]) \
        == c0 + 1
    # --json prints the record; a comma list in one flag
    r = set_limit(phigate, migrated, out["id"], "--limit", "20/10s,1000/1d", "--json")
    assert r.rc == 0, r
    assert r.json()["id"] == out["id"] and r.json()["rate_limit"] == "20/10s,1000/1d"
    shown = phigate("keys", "show", out["id"], "--store", migrated.url, "--json").json()
    assert shown["rate_limit"] == "20/10s,1000/1d" and shown["state"] == "active"
    # the key itself is unchanged
    assert_valid(phigate, migrated, out["key"], out["id"])
    # "none": a key that is not limited at all (an override, unlike --no-limit)
    r = set_limit(phigate, migrated, out["id"], "--limit", "none")
    assert r.rc == 0 and row(migrated, out["id"])["rate_limit"] == "none", r


def test_set_limit_no_limit(phigate, migrated):
    out = create(phigate, migrated, "--limit", "100/1m")
    r = set_limit(phigate, migrated, out["id"], "--no-limit")
    assert r.rc == 0, r
    assert "removed" in r.stdout and out["id"] in r.stdout, r
    assert row(migrated, out["id"])["rate_limit"] == ""
    shown = phigate("keys", "show", out["id"], "--store", migrated.url, "--json").json()
    assert shown["rate_limit"] is None
    # again: nothing to change, still fine, and no new version
    c0 = counter(migrated)
    r = set_limit(phigate, migrated, out["id"], "--no-limit", "--json")
    assert r.rc == 0 and r.json()["rate_limit"] is None, r
    assert counter(migrated) == c0


def test_set_limit_is_audited(phigate, migrated):
    out = create(phigate, migrated, "--limit", "100/1m")
    assert set_limit(phigate, migrated, out["id"], "--limit", "5/1s").rc == 0
    assert set_limit(phigate, migrated, out["id"], "--no-limit").rc == 0
    r = phigate("audit", "query", "--store", migrated.url, "--json", "--action",
                "keys.set_limit")
    assert r.rc == 0, r
    records = r.json()["records"]
    assert len(records) == 2, records
    for x in records:
        assert x["resource"] == "key:" + out["id"] and x["outcome"] == "success"
        assert x["actor"]["user_id"].startswith("cli:")
    assert records[0]["details"]["old_rate_limit"] == "5/1s"
    assert records[0]["details"]["new_rate_limit"] == ""
    assert records[1]["details"]["old_rate_limit"] == "100/1m"
    assert records[1]["details"]["new_rate_limit"] == "5/1s"
    assert out["key"] not in r.stdout
    v = phigate("audit", "verify", "--store", migrated.url, "--json",
                mk=conftest.ADMIN_MASTER_KEY)
    assert v.rc == 0 and v.json()["ok"] is True, v


def test_set_limit_needs_the_master_key(phigate, migrated):
    out = create(phigate, migrated, "--limit", "100/1m")
    r = set_limit(phigate, migrated, out["id"], "--limit", "5/1s", mk=conftest.NO_MASTER_KEY)
    assert_failed(r, 1, "master key")
    assert row(migrated, out["id"])["rate_limit"] == "100/1m"


def test_set_limit_unknown_revoked_and_missing_id(phigate, migrated):
    out = create(phigate, migrated, "--limit", "100/1m")
    assert_failed(set_limit(phigate, migrated, "ak_0000000000000000", "--limit", "5/1s"), 1,
                  "no key")
    for bad in HOSTILE_IDS:
        r = set_limit(phigate, migrated, bad, "--limit", "5/1s")
        assert r.rc in (1, 2) and r.out == b"", (bad, r)
    assert phigate("keys", "revoke", out["id"], "--store", migrated.url).rc == 0
    c0 = counter(migrated)
    assert_failed(set_limit(phigate, migrated, out["id"], "--limit", "5/1s"), 1, "revoked")
    assert_failed(set_limit(phigate, migrated, out["id"], "--no-limit"), 1, "revoked")
    assert row(migrated, out["id"])["rate_limit"] == "100/1m"
    assert counter(migrated) == c0
    r = phigate("keys", "set-limit", "--limit", "5/1s", "--store", migrated.url,
                mk=conftest.ADMIN_MASTER_KEY)
    assert_failed(r, 2, "missing the key ID")


BAD_LIMITS = [
    ("count-0", ["--limit", "0/1m"], "count of 0"),
    ("count-negative", ["--limit", "-5/1m"], "negative"),
    ("window-0", ["--limit", "100/0s"], "window of 0"),
    ("window-negative", ["--limit", "100/-1m"], "negative"),
    ("unit-unknown", ["--limit", "100/1w"], "unit"),
    ("unit-missing", ["--limit", "100/5"], "unit"),
    ("garbage", ["--limit", "lots"], "rate limit"),
    ("chars", ["--limit", "100/1m;drop"], "rate limit"),
    ("space", ["--limit", "100 /1m"], "rate limit"),
    ("count-too-large", ["--limit", "1000000000/1m"], "rate limit"),
    ("window-too-long", ["--limit", "1/101d"], "100 days"),
    ("same-window", ["--limit", "100/1m", "--limit", "200/60s"], "same window"),
    ("five-windows", ["--limit", "1/1s,2/1m,3/1h,4/1d", "--limit", "5/2d"], "4"),
    ("empty", ["--limit", ""], "--limit"),
    ("empty-item", ["--limit", "100/1m,"], "rate limit"),
    ("too-long", ["--limit", "1/1s," * 30 + "1/1m"], "128"),
]


@pytest.mark.parametrize("args,why", [b[1:] for b in BAD_LIMITS], ids=[b[0] for b in BAD_LIMITS])
def test_create_bad_limit(phigate, migrated, args, why):
    r = phigate("keys", "create", "--role", "user", "--user", "u", *args, "--store", migrated.url)
    assert_failed(r, 2, why)
    assert "rate limit" in r.stderr, r
    assert count(migrated) == 0


@pytest.mark.parametrize("args,why", [b[1:] for b in BAD_LIMITS], ids=[b[0] for b in BAD_LIMITS])
def test_set_limit_bad_limit(phigate, migrated, args, why):
    out = create(phigate, migrated, "--limit", "100/1m")
    c0 = counter(migrated)
    r = set_limit(phigate, migrated, out["id"], *args)
    assert_failed(r, 2, why)
    assert "rate limit" in r.stderr, r
    assert row(migrated, out["id"])["rate_limit"] == "100/1m"
    assert counter(migrated) == c0


@pytest.mark.parametrize("args", [[], ["--limit", "5/1s", "--no-limit"], ["--json"]],
                         ids=["neither", "both", "json-only"])
def test_set_limit_needs_limit_or_no_limit(phigate, migrated, args):
    out = create(phigate, migrated, "--limit", "100/1m")
    assert_failed(set_limit(phigate, migrated, out["id"], *args), 2, "--no-limit")
    assert row(migrated, out["id"])["rate_limit"] == "100/1m"


def test_limit_help(phigate, tmp_path):
    for cmd in (["create"], ["set-limit"]):
        r = phigate("keys", *cmd, "--help", cwd=tmp_path)
        assert r.rc == 0 and r.err == b"", r
        assert r.stdout.startswith("Usage: phigate keys " + cmd[0]), r
        assert "--limit" in r.stdout and "5000/1h" in r.stdout
    assert "--no-limit" in phigate("keys", "set-limit", "--help").stdout
    assert "set-limit" in phigate("keys", "--help").stdout
