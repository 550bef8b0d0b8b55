"""Regression tests for the bugs a review of src/server/server.c found: request
smuggling with an unframed PATCH body, header names that dodge the stripping,
Expect and Connection-named headers, a synchronous upstream connect failure,
a client that resets before its answer, and a chunked upstream response that
also carries a Content-Length."""
import json
import signal
import socket
import threading
import time

from e2e_helpers import auth, http_request, raw_exchange


def test_patch_body_is_framed_and_cannot_smuggle(gw, upstream):
    smuggled = (b"GET /v1/admin-only HTTP/1.1\r\nHost: x\r\n"
                b"X-Phigate-User-Id: victim\r\nX-Phigate-Role: admin\r\n\r\n")
    r = http_request(gw.port, "PATCH", "/v1/readings", auth(gw.user_key), body=smuggled)
    assert r.status == 200, r
    echo = r.json()
    assert echo["path"] == "/v1/readings"
    # the upstream got the body as a body, with its length
    headers = {k.lower(): v for k, v in echo["headers"]}
    assert headers["content-length"] == str(len(smuggled))
    # and nothing else arrived: no second request with forged identity
    time.sleep(0.3)
    paths = [q["path"] for q in upstream.requests]
    assert "/v1/admin-only" not in paths, paths
    # the next request on the pooled connection gets its own answer
    r2 = http_request(gw.port, "GET", "/v1/next", auth(gw.user_key))
    assert r2.status == 200 and r2.json()["path"] == "/v1/next"


def test_header_names_that_are_not_tokens_are_refused(gw, upstream):
    for name in (b"Host ", b"Authorization ", b"X-Phigate-Role ", b"Transfer-Encoding "):
        data = (b"GET /v1/x HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer " +
                gw.user_key.encode() + b"\r\n" + name + b": evil\r\nConnection: close\r\n\r\n")
        out, _ = raw_exchange(gw.port, data)
        assert out.startswith(b"HTTP/1.1 400"), out[:200]
        assert b'"invalid_header"' in out
    assert upstream.requests == []


def test_underscore_and_connection_named_headers_are_not_forwarded(gw, upstream):
    r = http_request(gw.port, "POST", "/v1/x", [
        ("Authorization", "Bearer " + gw.user_key),
        ("X_Phigate_Role", "admin"), ("X_Phigate_User_Id", "victim"),
        ("Connection", "keep-alive, X-Secret-Hop"), ("X-Secret-Hop", "1"),
        ("Expect", "100-continue"), ("Forwarded", "for=6.6.6.6"), ("X-Real-IP", "6.6.6.6"),
        ("X-Forwarded-Host", "evil"), ("X-Kept", "yes"),
        ("Content-Type", "application/json")], body=b'{"a":1}')
    assert r.status == 200, r
    names = {k.lower(): v for k, v in r.json()["headers"]}
    for gone in ("x_phigate_role", "x_phigate_user_id", "x-secret-hop", "expect", "forwarded",
                 "x-real-ip", "x-forwarded-host"):
        assert gone not in names, gone
    assert names["x-kept"] == "yes"
    assert names["x-phigate-role"] == "user" and names["x-phigate-user-id"] == "u1"
    assert names["x-forwarded-for"] == "127.0.0.1"


def test_upstream_unreachable_at_once_is_502_not_a_crash(make_gateway):
    # 224.0.0.1 (multicast): connect() fails inside evhttp_make_request
    gw = make_gateway(upstream_url="http://224.0.0.1:80")
    for _ in range(3):
        r = http_request(gw.port, "GET", "/v1/x", auth(gw.user_key))
        assert r.status in (502, 504), r
        assert r.json()["error"]["code"] in ("bad_gateway", "gateway_timeout")
    assert http_request(gw.port, "GET", "/healthz").status == 200
    assert gw.alive()


def test_client_reset_before_its_answer_does_not_hang_the_drain(gw, upstream):
    s = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
    s.sendall(b"GET /sleep/800 HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer " +
              gw.user_key.encode() + b"\r\n\r\n")
    time.sleep(0.2)
    # RST: SO_LINGER with a zero timeout
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    s.close()
    time.sleep(1.5)  # the upstream answers into a dead connection
    t0 = time.monotonic()
    rc = gw.stop()
    took = time.monotonic() - t0
    assert rc == 0
    text = gw.log_text()
    drained = [json.loads(line) for line in text.splitlines()
               if line.startswith("{") and '"drained"' in line]
    assert drained and drained[-1]["abandoned_requests"] == 0, text[-2000:]
    assert took < 8, "the drain waited for a request that could not finish"


def test_upstream_response_with_two_framings_is_refused(make_gateway):
    # an upstream that sends both Content-Length and Transfer-Encoding: a
    # smuggling signal; libevent 2.1.12 (Debian) refuses the response and
    # phigate answers 502 rather than relay a body under a wrong length
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    port = srv.getsockname()[1]
    stop = threading.Event()

    def serve():
        srv.settimeout(0.5)
        while not stop.is_set():
            try:
                c, _ = srv.accept()
            except socket.timeout:
                continue
            with c:
                c.settimeout(5)
                buf = b""
                while b"\r\n\r\n" not in buf:
                    d = c.recv(4096)
                    if not d:
                        break
                    buf += d
                c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n"
                          b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
                time.sleep(0.2)

    th = threading.Thread(target=serve, daemon=True)
    th.start()
    try:
        gw = make_gateway(upstream_url="http://127.0.0.1:%d" % port)
        r = http_request(gw.port, "GET", "/x", auth(gw.user_key))
        assert r.status == 502 and r.json()["error"]["code"] == "bad_gateway", r
        assert b"hello" not in r.body
    finally:
        stop.set()
        th.join(5)
        srv.close()
