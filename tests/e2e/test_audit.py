"""The audit log: complete, verifiable, fail-closed, and intact after a crash."""
import http.client
import sqlite3
import threading
import time

import pytest

from e2e_helpers import assert_error, http_request

CONFIG = """
[route:internal]
prefix = /v1/internal
role = admin
"""


def actions_by_rid(records):
    out = {}
    for r in records:
        out.setdefault(r["request_id"], []).append(r["action"])
    return out


def test_every_request_has_a_record_and_the_chain_verifies(make_gateway, upstream):
    gw = make_gateway(CONFIG)
    ct = {"Content-Type": "application/json"}
    proxied, other = [], []
    for i in range(6):
        proxied.append(gw.get("/v1/readings/%d?x=%d" % (i, i), key=gw.user_key))
        proxied.append(gw.request("POST", "/v1/readings", key=gw.admin_key, headers=ct,
                                  body='{"i":%d}' % i))
        proxied.append(gw.get("/status/404", key=gw.plain_key))
        other.append(gw.get("/v1/readings"))                                   # 401
        other.append(gw.get("/v1/readings", key="phg_bogus"))                  # 401
        other.append(gw.get("/v1/internal/x", key=gw.user_key))                # 403
        other.append(gw.get("/admin/keys", key=gw.user_key))                   # 403
        other.append(gw.get("/admin/keys?limit=1", key=gw.admin_key))          # 200 admin
        other.append(gw.post_json("/v1/phi/encrypt",
                                  {"context": {"user_id": "u1"}, "plaintext": "p%d" % i},
                                  key=gw.user_key))                           # 200 phi
        other.append(gw.get("/v1/phi/encrypt", key=gw.user_key))               # 405
        other.append(gw.get("/v1/readings?api_key=%s" % gw.user_key))          # 400 key_in_query
        other.append(http_request(gw.port, "GET", "/v1/readings",
                                  [("Authorization", "Bearer " + gw.user_key),
                                   ("X-API-Key", gw.user_key)]))              # 400 ambiguous
    statuses = sorted({r.status for r in proxied + other})
    assert statuses == [200, 400, 401, 403, 404, 405], statuses
    rids = [r.rid for r in proxied + other]
    assert len(set(rids)) == len(rids) and all(rids)
    seen = set(upstream.seen)
    for r in proxied:
        assert r.rid in seen
    for r in other:
        assert r.rid not in seen, r
    deadline = time.monotonic() + 5
    while True:
        by = actions_by_rid(gw.audit_all())
        missing = [r for r in proxied if "http.response" not in by.get(r.rid, [])]
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    for r in proxied:
        assert by.get(r.rid, []).count("http.request") == 1, (r, by.get(r.rid))
        assert by.get(r.rid, []).count("http.response") == 1, (r, by.get(r.rid))
    for r in other:
        assert by.get(r.rid), "no audit record for %r" % r
    v = gw.verify()
    assert v.rc == 0, v
    assert v.json()["ok"] is True, v


def test_refused_paths_are_audited(gw, upstream):
    """A request refused for its path still leaves a record (docs/api.md §5:
    every request is recorded before its response goes out)."""
    rs = [gw.get("/v1/../admin/keys", key=gw.admin_key),
          gw.get("/v1/%2e%2e/admin/keys", key=gw.admin_key),
          gw.get("/v1/./admin/keys", key=gw.admin_key)]
    for r in rs:
        assert_error(r, 400, "invalid_path")
    assert not set(upstream.seen) & {r.rid for r in rs}
    for r in rs:
        assert gw.audit(r.rid), "no audit record for the refused request %s" % r.rid


def test_503_when_the_audit_log_cannot_take_records(make_gateway, upstream):
    gw = make_gateway()
    assert gw.get("/v1/before", key=gw.user_key).status == 200
    con = sqlite3.connect(gw.db, timeout=1, isolation_level=None)
    try:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        con.execute("BEGIN EXCLUSIVE")
        # check that writers really are blocked
        probe = sqlite3.connect(gw.db, timeout=0.2, isolation_level=None)
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            probe.execute("BEGIN IMMEDIATE")
        probe.close()
        before = len(upstream.seen)
        r = gw.get("/v1/during?x=1", key=gw.user_key, timeout=30)
        assert_error(r, 503, "audit_unavailable")
        p = gw.post_json("/v1/phi/encrypt", {"context": {"user_id": "u1"}, "plaintext": "s"},
                         key=gw.user_key, timeout=30)
        assert_error(p, 503, "audit_unavailable")
        assert "ciphertext" not in p.body.decode()
        assert len(upstream.seen) == before, "the upstream received an unaudited request"
        assert all(not x["path"].startswith("/v1/during") for x in upstream.requests)
    finally:
        con.execute("ROLLBACK") if con.in_transaction else None
        con.close()
    # the lock is gone: requests work again, and are audited
    r = gw.get("/v1/after", key=gw.user_key, timeout=30)
    assert r.status == 200, r
    assert r.rid in upstream.seen
    assert any(x["action"] == "http.request" for x in gw.audit(r.rid))
    v = gw.verify()
    assert v.rc == 0 and v.json()["ok"] is True, v


def test_kill_9_under_load_loses_no_forwarded_request(make_gateway, upstream):
    gw = make_gateway(threads=4)
    stop = threading.Event()
    answered, errors = [], []

    def load(n):
        i = 0
        while not stop.is_set():
            i += 1
            try:
                r = gw.request("POST", "/load/%d/%d" % (n, i), key=gw.user_key, timeout=10,
                               headers={"Content-Type": "application/json"}, body='{"i":1}')
                answered.append(r)
            except (OSError, http.client.HTTPException) as e:  # killed mid-answer
                errors.append(e)
                if not gw.alive():
                    return

    ts = [threading.Thread(target=load, args=(n,)) for n in range(12)]
    for t in ts:
        t.start()
    deadline = time.monotonic() + 20
    while len(upstream.seen) < 300 and time.monotonic() < deadline:
        time.sleep(0.05)
    gw.kill9()
    stop.set()
    for t in ts:
        t.join(30)
    assert not any(t.is_alive() for t in ts)
    seen = [rid for rid in upstream.seen if rid]
    assert len(seen) >= 100, "too little load before the kill: %d" % len(seen)
    assert all(r.status == 200 for r in answered), [r for r in answered if r.status != 200][:3]

    # restart on the same store: the chain goes on from where it was
    gw.start()
    r = gw.get("/after/restart", key=gw.user_key)
    assert r.status == 200, r
    by = actions_by_rid(gw.audit_all())
    missing = [rid for rid in seen if "http.request" not in by.get(rid, [])]
    assert not missing, "%d of %d forwarded requests have no http.request record" % (
        len(missing), len(seen))
    for resp in answered:
        assert "http.request" in by.get(resp.rid, [])
    v = gw.verify()
    assert v.rc == 0, v
    assert v.json()["ok"] is True, v
