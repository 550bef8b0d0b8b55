"""Proxying: identity headers, what reaches the upstream, streaming."""
import base64
import json
import os
import threading
import time

from e2e_helpers import assert_error, free_port, http_request, parse_raw_response, raw_exchange


def echo_of(resp):
    assert resp.status == 200, resp
    assert resp.headers.get("x-upstream") == "echo", resp
    v = resp.json()
    v["body"] = base64.b64decode(v["body"])
    v["hdr"] = {}
    for k, val in v["headers"]:
        v["hdr"].setdefault(k.lower(), []).append(val)
    return v


def test_identity_headers_are_injected_and_spoofs_removed(gw, upstream):
    body = b'{"reading":{"hr":61,"spo2":98},"note":"caf\xc3\xa9 \x00\xff bytes"}'
    spoof = [
        ("X-Phigate-User-Id", "admin-victim"),
        ("X-Phigate-Role", "admin"),
        ("X-Phigate-Key-Id", "ak_spoofed"),
        ("X-Phigate-Scopes", "keys:admin"),
        ("x-phigate-anything", "1"),
        ("X-Request-Id", "01ARZ3NDEKTSV4RRFFQ69G5FAV"),
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-For", "203.0.113.9"),
        ("X-Custom", "kept"),
        ("Content-Type", "application/octet-stream"),
    ]
    # when the upstream gets a request, its audit record is already durable
    at_arrival = {}
    upstream.set_hook(lambda rid, path: at_arrival.__setitem__(
        rid, [r["action"] for r in gw.audit(rid)]))
    for how in ("bearer", "x-api-key"):
        cred = (("Authorization", "Bearer " + gw.user_key) if how == "bearer"
                else ("X-API-Key", gw.user_key))
        resp = http_request(gw.port, "PUT", "/v1/readings/7?from=2026-01-01&tag=a%20b&x=%2F",
                            [cred] + spoof, body)
        e = echo_of(resp)
        h = e["hdr"]
        assert e["method"] == "PUT"
        assert e["path"] == "/v1/readings/7?from=2026-01-01&tag=a%20b&x=%2F"
        assert e["body"] == body
        assert h["x-phigate-user-id"] == ["u1"]
        assert h["x-phigate-key-id"] == [gw.user_id]
        assert h["x-phigate-role"] == ["user"]
        assert h["x-phigate-scopes"] == ["phi:encrypt phi:decrypt"]
        assert "x-phigate-anything" not in h
        assert h["x-request-id"] == [resp.rid]
        assert resp.rid != "01ARZ3NDEKTSV4RRFFQ69G5FAV" and len(resp.rid) == 26
        assert h["x-forwarded-for"] == ["127.0.0.1"]
        assert h["x-forwarded-proto"] == ["http"]
        assert h["x-custom"] == ["kept"]
        assert h["content-type"] == ["application/octet-stream"]
        assert "authorization" not in h and "x-api-key" not in h
        for vals in h.values():
            for v in vals:
                assert gw.user_key not in v
        # the audit log has the request before it went out, and the outcome
        assert at_arrival[resp.rid] == ["http.request"], at_arrival
        recs = gw.audit_wait(resp.rid, "http.response")
        acts = sorted(r["action"] for r in recs)
        assert acts == ["http.request", "http.response"], recs
        for r in recs:
            assert r["actor"]["user_id"] == "u1" and r["actor"]["key_id"] == gw.user_id

    upstream.set_hook(None)
    # an admin key: role and scopes of that key
    e = echo_of(gw.get("/anything", key=gw.admin_key))
    assert e["hdr"]["x-phigate-role"] == ["admin"]
    assert e["hdr"]["x-phigate-user-id"] == ["adm"]
    assert e["hdr"]["x-phigate-scopes"] == ["phi:encrypt phi:decrypt audit:read keys:admin"]
    # a key with no scope: the header is there, empty
    e = echo_of(gw.get("/anything", key=gw.plain_key))
    assert e["hdr"]["x-phigate-scopes"] == [""]
    assert e["hdr"]["x-phigate-user-id"] == ["u2"]


def test_upstream_errors_pass_through(gw):
    r = gw.get("/status/404", key=gw.user_key)
    assert r.status == 404, r
    assert r.json() == {"upstream_status": 404}
    assert r.headers.get("x-upstream") == "echo"
    assert len(r.rid) == 26
    r = gw.request("DELETE", "/status/500", key=gw.user_key)
    assert r.status == 500 and r.json() == {"upstream_status": 500}, r


def test_upstream_down_is_502(make_gateway):
    down = make_gateway(upstream_url="http://127.0.0.1:%d" % free_port())
    r = down.get("/v1/x", key=down.user_key)
    assert_error(r, 502, "bad_gateway")
    # nothing was forwarded, but the attempt is in the audit log
    assert "http.request" in [x["action"] for x in down.audit(r.rid)]


def test_upstream_too_slow_is_504(make_gateway):
    slow = make_gateway("[upstream]\ntimeout_ms = 500\n")
    assert_error(slow.get("/sleep/3000", key=slow.user_key), 504, "gateway_timeout")
    assert slow.get("/sleep/10", key=slow.user_key).status == 200


def test_large_response_streams_in_constant_memory(make_gateway):
    # ASan keeps freed memory in quarantine (256 MiB by default), which would
    # count as phigate's own in VmRSS: keep it small for this measurement
    asan = os.environ.get("ASAN_OPTIONS", "")
    asan = (asan + ":" if asan else "") + "quarantine_size_mb=4:thread_local_quarantine_size_kb=64"
    gw = make_gateway(env={"ASAN_OPTIONS": asan})
    total = 96 << 20
    # warm up: the first proxied request allocates pools and buffers
    assert gw.get("/stream/1048576", key=gw.user_key).status == 200
    base = gw.rss_kib()
    peak = [base]
    conn = gw.connection(timeout=60)
    conn.putrequest("GET", "/stream/%d" % total)
    conn.putheader("Authorization", "Bearer " + gw.user_key)
    conn.endheaders()
    resp = conn.getresponse()
    assert resp.status == 200
    # the client does not read for a while: phigate must stop reading the
    # upstream instead of buffering what it sends
    for _ in range(15):
        time.sleep(0.1)
        peak[0] = max(peak[0], gw.rss_kib())
    got = 0
    n = 0
    while True:
        chunk = resp.read(1 << 20)
        if not chunk:
            break
        got += len(chunk)
        n += 1
        if n % 4 == 0:
            peak[0] = max(peak[0], gw.rss_kib())
    conn.close()
    assert got == total
    grew_mib = (peak[0] - base) / 1024.0
    assert grew_mib < 32, "RSS grew by %.1f MiB while streaming %d MiB" % (grew_mib, total >> 20)


def test_concurrent_proxied_requests_keep_their_identity(gw):
    errors = []

    def worker(key, user):
        try:
            for i in range(20):
                r = gw.request("POST", "/echo/%s/%d" % (user, i), key=key,
                               headers={"Content-Type": "application/json"},
                               body=json.dumps({"user": user, "i": i}))
                e = echo_of(r)
                if e["hdr"]["x-phigate-user-id"] != [user] or \
                        json.loads(e["body"]) != {"user": user, "i": i}:
                    errors.append((user, i, e))
        except Exception as ex:  # noqa: BLE001
            errors.append(repr(ex))

    ts = [threading.Thread(target=worker, args=(k, u))
          for k, u in ((gw.user_key, "u1"), (gw.plain_key, "u2"), (gw.admin_key, "adm"))
          for _ in range(2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    assert not errors, errors[:3]


def test_keepalive_head_and_chunked_upload(gw, upstream):
    conn = gw.connection()
    assert_error(gw.request("GET", "/v1/x", conn=conn), 401, "unauthorized")
    sock = conn.sock
    r = gw.request("HEAD", "/v1/x", key=gw.user_key, conn=conn)
    assert r.status == 200 and r.body == b"", r
    r = gw.request("GET", "/v1/y", key=gw.user_key, conn=conn)
    assert echo_of(r)["path"] == "/v1/y"
    assert conn.sock is sock, "keep-alive was not kept"
    conn.close()
    # a chunked request body reaches the upstream whole
    data, _ = raw_exchange(gw.port, b"POST /up HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                           + gw.user_key.encode() + b"\r\nTransfer-Encoding: chunked\r\n"
                           b"Connection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
    status, _, body = parse_raw_response(data)
    assert status == 200, data[:300]
    assert [x["body"] for x in upstream.requests if x["path"] == "/up"] == [b"hello world"]
