"""Hostile and malformed input while good traffic flows: clean 4xx, no crash,
no effect on other clients."""
import http.client
import json
import re
import socket
import threading
import time

import pytest

from e2e_helpers import assert_error, http_request, parse_raw_response, raw_exchange

CONFIG = """
[server]
max_body_bytes = 65536
header_timeout_ms = 2000

[route:internal]
prefix = /v1/internal
role = admin
"""


class GoodTraffic:
    """A thread doing good requests (proxied, PHI, health) until stopped."""

    def __init__(self, gw):
        self.gw = gw
        self.stop_ev = threading.Event()
        self.ok = 0
        self.bad = []
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        gw = self.gw
        i = 0
        while not self.stop_ev.is_set():
            i += 1
            try:
                if i % 3 == 0:
                    r = gw.post_json("/v1/phi/encrypt",
                                     {"context": {"user_id": "u1"}, "plaintext": "hr=%d" % i},
                                     key=gw.user_key, timeout=10)
                elif i % 3 == 1:
                    r = gw.get("/v1/readings/%d" % i, key=gw.user_key, timeout=10)
                else:
                    r = gw.get("/healthz", timeout=10)
                if r.status == 200:
                    self.ok += 1
                else:
                    self.bad.append(r)
            except (OSError, http.client.HTTPException) as e:
                self.bad.append(e)
            time.sleep(0.01)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop_ev.set()
        self.thread.join(20)


@pytest.fixture
def bgw(make_gateway):
    return make_gateway(CONFIG)


def send_raw(gw, data, timeout=10):
    out, closed = raw_exchange(gw.port, data, timeout=timeout)
    return out, closed


def req_bytes(method, target, headers=(), body=b""):
    lines = [b"%s %s HTTP/1.1" % (method.encode(), target.encode()), b"Host: 127.0.0.1"]
    for k, v in headers:
        lines.append(b"%s: %s" % (k.encode(), v.encode()))
    if body:
        lines.append(b"Content-Length: %d" % len(body))
    lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def test_bad_input_while_good_traffic_flows(bgw, upstream):
    gw = bgw
    admin = [("Authorization", "Bearer " + gw.admin_key)]
    user = [("Authorization", "Bearer " + gw.user_key)]
    ct = [("Content-Type", "application/json")]
    with GoodTraffic(gw) as good:
        time.sleep(0.3)
        # malformed request lines: evhttp's 400, the connection closed
        for line in (b"HELLO\r\n\r\n", b"GET\r\n\r\n", b"GET /v1/x HTTP/9.9\r\n\r\n",
                     b"GET /v1/x HTTP/1.1 extra\r\n\r\n", b"\x00\x01\x02\xff\r\n\r\n",
                     b"GET v1/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                     b"GET /v1/x HTTP/1.1\r\nNo colon here\r\n\r\n"):
            data, closed = send_raw(gw, line)
            assert closed, line
            assert data.startswith(b"HTTP/1.1 400 "), (line, data[:300])

        # 64 KiB of headers, one big or many small
        for hdrs in ([("X-Big", "a" * 65536)],
                     [("X-H%d" % i, "b" * 100) for i in range(650)]):
            data, closed = send_raw(gw, req_bytes("GET", "/v1/readings", user + hdrs))
            assert closed
            assert data.split(b" ")[1] in (b"400", b"431"), data[:300]

        # a body over the limit
        data, closed = send_raw(gw, req_bytes("POST", "/v1/readings", user + ct,
                                              b"x" * 70000))
        assert data.startswith(b"HTTP/1.1 413 "), data[:300]

        # invalid JSON
        for body in (b"{", b"not json", b"[1,2]", b'{"a":"\xff\xfe"}', b"[" * 60000,
                     b'{"context":{"user_id":"u1"},"plaintext":"a\\u0000b"}'):
            r = http_request(gw.port, "POST", "/v1/phi/encrypt", user + ct, body)
            assert_error(r, 400, "invalid_json")
            r = http_request(gw.port, "POST", "/admin/keys", admin + ct, body)
            assert_error(r, 400)
            assert r.json()["error"]["code"] in ("invalid_json", "invalid_request"), r

        # a key in the query string, with or without one in a header
        for target in ("/v1/readings?api_key=" + gw.user_key,
                       "/v1/readings?x=1&access_token=abc",
                       "/v1/readings?k=" + gw.user_key,
                       "/v1/phi/encrypt?apikey=x"):
            for hdrs in ([], user):
                r = http_request(gw.port, "GET", target, hdrs)
                err = assert_error(r, 400, "key_in_query")
                assert gw.user_key not in err["message"]

        # duplicate credentials
        for hdrs in (user + user,
                     [("X-API-Key", gw.user_key)] * 2,
                     user + [("X-API-Key", gw.user_key)],
                     user + [("Authorization", "Bearer " + gw.admin_key)]):
            r = http_request(gw.port, "GET", "/admin/keys", hdrs)
            assert_error(r, 400, "ambiguous_credentials")

        # path traversal and odd paths
        for target in ("/v1/../admin/keys", "/v1/%2e%2e/admin/keys", "/v1/%2E%2E/admin/keys",
                       "/v1/..%2Fadmin/keys", "/v1/./readings", "/v1/readings/%00",
                       "/v1/%zz", "/v1\\..\\admin"):
            r = http_request(gw.port, "GET", target, admin)
            assert_error(r, 400, "invalid_path")

        # admin ids and audit filters: validated, never reach SQL as code
        for target in ("/admin/keys/..%2F..%2Fetc", "/admin/keys/'%20OR%201=1--",
                       "/admin/keys/ak_x'%3BDROP%20TABLE%20api_keys--",
                       "/admin/keys/ak_doesnotexist0000",
                       "/admin/audit?request_id='%20OR%20'1'='1",
                       "/admin/audit?action='%20OR%20'1'='1",
                       "/admin/audit?outcome=success'--",
                       "/admin/audit?from=2026'%20OR%201=1",
                       "/admin/audit?limit=1%20OR%201=1",
                       "/admin/phi/keys/'%20OR%201=1/destroy"):
            method = "POST" if target.endswith("/destroy") else "GET"
            r = http_request(gw.port, method, target, admin + ct, b"{}" if method == "POST" else None)
            assert r.status in (400, 404), r
            assert_error(r, r.status)
        # a filter that is only text: no error, and no record matches it
        r = http_request(gw.port, "GET", "/admin/audit?user_id='%20OR%20'1'='1", admin)
        assert r.status in (200, 400), r
        if r.status == 200:
            assert r.json()["records"] == [], r
        else:
            assert_error(r, 400)
        # ... while the log does hold records of u1 and adm
        r = http_request(gw.port, "GET", "/admin/audit?user_id=u1&limit=5", admin)
        assert r.status == 200 and len(r.json()["records"]) > 0, r
        # the keys table is intact
        r = http_request(gw.port, "GET", "/admin/keys", admin)
        assert r.status == 200 and len(r.json()["keys"]) == 3, r

        time.sleep(0.3)
    assert good.ok > 20
    assert not good.bad, good.bad[:3]
    assert gw.alive()
    assert gw.get("/healthz").status == 200


def test_double_slash_cannot_dodge_a_route(bgw, upstream):
    """'//v1/internal' must not escape the role=admin route of '/v1/internal'."""
    gw = bgw
    assert_error(gw.get("/v1/internal/stats", key=gw.user_key), 403, "forbidden")
    before = len(upstream.requests)
    for target in ("//v1/internal/stats", "//admin/keys", "/v1//internal/stats",
                   "///v1/internal"):
        data, _ = raw_exchange(gw.port, req_bytes("GET", target, [
            ("Authorization", "Bearer " + gw.user_key)]), timeout=10)
        status, headers, body = parse_raw_response(data)
        assert status in (400, 403), (target, data[:600])
        assert json.loads(body)["error"]["code"] in ("invalid_path", "forbidden"), data[:600]
    leaked = [x["path"] for x in upstream.requests[before:]]
    assert not leaked, "forwarded to the upstream: %r" % leaked


def test_slow_client_is_cut_off(bgw):
    """Headers sent one byte per second: the connection is closed once
    server.header_timeout_ms (2 s) has passed, and nobody else notices."""
    gw = bgw
    head = req_bytes("GET", "/v1/readings", [("Authorization", "Bearer " + gw.user_key)])
    with GoodTraffic(gw) as good:
        s = socket.create_connection(("127.0.0.1", gw.port), timeout=2)
        t0 = time.monotonic()
        closed_after = None
        try:
            for i in range(len(head)):
                if time.monotonic() - t0 > 12:
                    break
                try:
                    s.sendall(head[i:i + 1])
                except (BrokenPipeError, ConnectionResetError):
                    closed_after = time.monotonic() - t0
                    break
                # poll for the server's close while waiting a second
                s.settimeout(1.0)
                try:
                    got = s.recv(4096)
                    if got == b"" or got.startswith(b"HTTP/"):
                        closed_after = time.monotonic() - t0
                        break
                except socket.timeout:
                    pass
                except ConnectionResetError:
                    closed_after = time.monotonic() - t0
                    break
        finally:
            s.close()
    assert closed_after is not None, "a client trickling its headers was not cut off in 12 s"
    assert closed_after < 8, closed_after
    assert good.ok > 10
    assert not good.bad, good.bad[:3]
    assert gw.alive()


def test_closed_connections_do_not_count_against_max_connections(make_gateway):
    """Connections closed before any request (TCP probes of a load balancer,
    scanners, requests evhttp refuses itself) must be forgotten at once, not
    when their header deadline (10 s by default) passes."""
    gw = make_gateway("[server]\nmax_connections = 4\n")
    assert gw.get("/healthz").status == 200
    for _ in range(4):
        socket.create_connection(("127.0.0.1", gw.port), timeout=5).close()
    for _ in range(2):
        raw_exchange(gw.port, b"HELLO\r\n\r\n", timeout=5)
    time.sleep(0.5)
    try:
        r = gw.get("/healthz", timeout=5)
    except OSError as e:
        raise AssertionError("a new client was refused after 6 closed connections: %r" % e)
    assert r.status == 200, r
    m = re.search(r"^phigate_connections (\d+)$", gw.get("/metrics").body.decode(), re.M)
    assert m and int(m.group(1)) == 1, "phigate_connections is %s with one client" % (
        m and m.group(1))
