"""SIGTERM drains, SIGHUP reloads routes without a restart."""
import signal
import threading
import time

from e2e_helpers import assert_error


def wait_log(gw, msg, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for rec in gw.log_records():
            if rec.get("msg") == msg:
                return rec
        time.sleep(0.05)
    raise AssertionError("no log line %r within %ds: %s" % (msg, timeout, gw.log_text()))


def test_sigterm_drains_requests_in_flight(make_gateway, upstream):
    gw = make_gateway()
    result = {}

    def slow():
        try:
            result["resp"] = gw.get("/sleep/2000/drain", key=gw.user_key, timeout=20)
        except OSError as e:
            result["err"] = e

    t = threading.Thread(target=slow)
    t.start()
    deadline = time.monotonic() + 10
    while not any(x["path"].startswith("/sleep/2000/drain") for x in upstream.requests):
        assert time.monotonic() < deadline, "the slow request never reached the upstream"
        time.sleep(0.02)
    gw.signal(signal.SIGTERM)
    t.join(20)
    assert "err" not in result, result
    resp = result["resp"]
    assert resp.status == 200, resp
    assert resp.json()["path"] == "/sleep/2000/drain"
    assert gw.proc.wait(timeout=20) == 0
    drained = wait_log(gw, "drained", timeout=1)
    assert drained["abandoned_requests"] == 0, drained
    wait_log(gw, "stopped", timeout=1)
    # its outcome record was written before the exit
    gw.start()
    recs = gw.audit(resp.rid)
    assert sorted(r["action"] for r in recs) == ["http.request", "http.response"], recs


ROUTE = """
[route:secret]
prefix = /v1/secret
role = admin
"""


def test_sighup_reloads_routes_and_keeps_connections(make_gateway):
    gw = make_gateway("[log]\nlevel = info\n")
    conn = gw.connection()
    r = gw.request("GET", "/v1/secret/1", key=gw.user_key, conn=conn)
    assert r.status == 200, r
    sock_before = conn.sock
    assert sock_before is not None
    assert gw.get("/v1/secret/2", key=gw.user_key).status == 200

    gw.write_config("[log]\nlevel = info\n" + ROUTE)
    gw.signal(signal.SIGHUP)
    rec = wait_log(gw, "reloaded: keys, routes and limits")
    assert rec["routes"] == 1
    assert_error(gw.get("/v1/secret/3", key=gw.user_key), 403, "forbidden")
    assert gw.get("/v1/secret/3", key=gw.admin_key).status == 200
    # the keep-alive connection opened before the reload still works, under the new routes
    r = gw.request("GET", "/v1/open", key=gw.user_key, conn=conn)
    assert r.status == 200, r
    assert conn.sock is sock_before, "the keep-alive connection was replaced"
    assert_error(gw.request("GET", "/v1/secret/4", key=gw.user_key, conn=conn), 403)
    assert conn.sock is sock_before
    conn.close()

    # a broken file on reload: the old configuration stays
    gw.write_config("[server]\nmax_body_bytes = lots\n")
    gw.signal(signal.SIGHUP)
    wait_log(gw, "reload: the configuration is not valid; keeping the old one")
    assert_error(gw.get("/v1/secret/5", key=gw.user_key), 403, "forbidden")
    assert gw.alive()
    # and the route goes away again
    gw.write_config("")
    gw.signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while gw.get("/v1/secret/6", key=gw.user_key).status != 200:
        assert time.monotonic() < deadline, gw.log_text()
        time.sleep(0.05)
