"""Every refusal is JSON with the request id, and is in the audit log."""
import json
import time

import pytest

from e2e_helpers import assert_error, http_request, parse_raw_response, raw_exchange

CONFIG = """
[server]
max_body_bytes = 4096

[route:internal]
prefix = /v1/internal
role = admin

[route:decrypted]
methods = GET
prefix = /v1/decrypted
scopes = phi:decrypt
"""


@pytest.fixture
def egw(make_gateway):
    return make_gateway(CONFIG)


def audited(gw, resp, outcome=None, action=None):
    recs = gw.audit(resp.rid)
    assert recs, "no audit record for %s (%r)" % (resp.rid, resp)
    for r in recs:
        assert r["request_id"] == resp.rid
    if outcome is not None:
        assert outcome in [r["outcome"] for r in recs], recs
    if action is not None:
        assert action in [r["action"] for r in recs], recs
    return recs


def unknown_key(gw):
    """A well-formed key (valid checksum) that this store has never seen."""
    other = "sqlite:" + gw.folder + "/other.db"
    assert gw.cli("migrate", "--store", other).rc == 0
    r = gw.cli("keys", "create", "--store", other, "--role", "user", "--user", "u1", "--json")
    assert r.rc == 0, r
    return r.json()["key"]


def test_401_missing_malformed_unknown_revoked(egw):
    gw = egw
    cases = {
        "missing": {},
        "not bearer": {"Authorization": "Basic dTE6cGFzcw=="},
        "malformed": {"Authorization": "Bearer phg_not-a-key"},
        "bad checksum": {"Authorization": "Bearer " + gw.user_key[:-1]
                         + ("A" if gw.user_key[-1] != "A" else "B")},
        "malformed x-api-key": {"X-API-Key": "hello"},
        "unknown": {"Authorization": "Bearer " + unknown_key(gw)},
    }
    for name, headers in cases.items():
        for path in ("/v1/readings", "/v1/phi/encrypt", "/admin/keys"):
            r = gw.request("GET", path, headers=headers)
            err = assert_error(r, 401, "unauthorized")
            assert r.headers.get("www-authenticate") == 'Bearer realm="phigate"', (name, r)
            assert gw.user_key not in err["message"]
            recs = audited(gw, r, outcome="denied", action="http.request")
            assert recs[0]["actor"]["key_id"] == ""
    # nothing of that reached the upstream
    # revoked: works, then revoked with the CLI, then refused within a few seconds
    key, kid = gw.create_key("user", "u9")
    deadline = time.monotonic() + 5
    while gw.get("/v1/readings", key=key).status != 200:
        assert time.monotonic() < deadline, "a new key was not accepted within 5 s"
        time.sleep(0.1)
    assert gw.cli("keys", "revoke", kid, "--store", gw.store).rc == 0
    deadline = time.monotonic() + 5
    while True:
        r = gw.get("/v1/readings", key=key)
        if r.status == 401:
            break
        assert r.status == 200, r
        assert time.monotonic() < deadline, "a revoked key still works after 5 s"
        time.sleep(0.1)
    assert_error(r, 401, "unauthorized")
    audited(gw, r, outcome="denied")


def test_403_route_role_scope_and_admin(egw, upstream):
    gw = egw
    before = len(upstream.seen)
    cases = [
        (gw.user_key, "GET", "/v1/internal/stats"),      # route: role admin
        (gw.user_key, "POST", "/v1/internal"),
        (gw.plain_key, "GET", "/v1/decrypted/42"),       # route: scope phi:decrypt
        (gw.user_key, "GET", "/admin/keys"),             # /admin with a user key
        (gw.user_key, "GET", "/admin/audit"),
        (gw.plain_key, "POST", "/v1/phi/encrypt"),       # PHI scope
    ]
    for key, method, path in cases:
        body = b'{"context":{"user_id":"u2"},"plaintext":"x"}' if method == "POST" else None
        r = gw.request(method, path, key=key, body=body,
                       headers={"Content-Type": "application/json"})
        assert_error(r, 403, "forbidden")
        audited(gw, r, outcome="denied")
    assert len(upstream.seen) == before, "a refused request reached the upstream"
    # the same routes with the right key go through
    assert gw.get("/v1/internal/stats", key=gw.admin_key).status == 200
    assert gw.get("/v1/decrypted/42", key=gw.user_key).status == 200
    # POST is not in the decrypted route's methods: no scope needed
    assert gw.request("POST", "/v1/decrypted/42", key=gw.plain_key).status == 200


def test_404_405_415(egw):
    gw = egw
    r = gw.post_json("/v1/phi/unknown", {"x": 1}, key=gw.user_key)
    assert_error(r, 404, "not_found")
    audited(gw, r)
    r = gw.get("/admin/nothing-here", key=gw.admin_key)
    assert_error(r, 404, "not_found")
    audited(gw, r)
    # a 404 of the upstream is passed through as it is, and audited
    r = gw.get("/status/404", key=gw.user_key)
    assert r.status == 404 and r.json() == {"upstream_status": 404}, r
    recs = gw.audit_wait(r.rid, "http.response")
    resp = [x for x in recs if x["action"] == "http.response"]
    assert resp and resp[0]["details"]["status"] == 404, recs
    r = gw.get("/v1/phi/encrypt", key=gw.user_key)
    assert_error(r, 405, "method_not_allowed")
    audited(gw, r)
    r = gw.request("POST", "/v1/phi/encrypt", key=gw.user_key,
                   headers={"Content-Type": "text/plain"},
                   body='{"context":{"user_id":"u1"},"plaintext":"x"}')
    assert_error(r, 415, "unsupported_media_type")
    audited(gw, r)


def test_413_body_over_the_limit_is_json_and_audited(egw, upstream):
    gw = egw
    before = len(upstream.seen)
    body = b"a" * 5000
    req = (b"POST /v1/readings HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
           + gw.user_key.encode() + b"\r\nContent-Type: application/json\r\n"
           b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
    data, closed = raw_exchange(gw.port, req, timeout=10)
    assert data, "no answer to a body over server.max_body_bytes"
    status, headers, rbody = parse_raw_response(data)
    assert status == 413, data[:600]
    assert len(upstream.seen) == before
    # the documented error format: JSON with the request id (docs/api.md §3)
    assert headers.get("content-type", "").startswith("application/json"), data[:600]
    rid = headers.get("x-request-id")
    assert rid, data[:600]
    assert json.loads(rbody)["error"]["request_id"] == rid
    assert gw.audit(rid), "no audit record for the 413"
    # a body at the limit goes through
    r = gw.request("POST", "/v1/readings", key=gw.user_key, body=b"b" * 4096)
    assert r.status == 200, r


def test_413_through_http_client(egw):
    """The same over a keep-alive style client that sends headers, then body."""
    gw = egw
    try:
        r = http_request(gw.port, "POST", "/v1/phi/encrypt",
                         {"Authorization": "Bearer " + gw.user_key,
                          "Content-Type": "application/json"}, b"{" + b" " * 8000 + b"}")
    except (ConnectionResetError, BrokenPipeError) as e:
        pytest.fail("connection reset instead of a 413 answer: %r" % e)
    assert r.status == 413, r
    assert gw.get("/healthz").status == 200
