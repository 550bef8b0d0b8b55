"""Regressions of the webhook route found in review (issue 7): an unsigned
source's path token in the audit records of early refusals, a Content-Type
the inbox cannot keep answered 503 at every retry, and the Redis
connections of the worker threads left behind at exit (LeakSanitizer).
"""
import json
import os
import shutil
import time

import pytest

from e2e_helpers import (assert_accepted, assert_error, assert_no_leak, post_webhook,
                         raw_exchange, sw_headers, wait_for, webhook_config, whsec_new)
from test_ratelimit import Redis


def msg_id():
    return "msg_" + os.urandom(10).hex()


def test_path_token_not_in_audit_of_early_refusals(make_gateway, tmp_path, hook_sink):
    """Refusals made before the webhook route (a header name that is not a
    token, a body over [server] max_body_bytes) are audited with the path
    cut at the source's name: the rest is the unsigned source's token."""
    tok = "garmin-token-" + os.urandom(12).hex()
    cfg = webhook_config(str(tmp_path / "wh"),
                         {"garmin": {"scheme": "unsigned", "secrets": [tok],
                                     "deliver_to": hook_sink.url + "/hooks/garmin"}},
                         server={"max_body_bytes": 1000})
    gw = make_gateway(cfg)
    bad_header, closed = raw_exchange(gw.port, (
        "POST /webhooks/garmin/%s HTTP/1.1\r\nHost: x\r\nBad Header: 1\r\n"
        "Content-Length: 2\r\n\r\n{}" % tok).encode())
    assert b" 400 " in bad_header.split(b"\r\n")[0], bad_header[:300]
    too_big, closed = raw_exchange(gw.port, (
        "POST /webhooks/garmin/%s HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n"
        % tok).encode() + b"x" * 5000)
    assert b" 413 " in too_big.split(b"\r\n")[0], too_big[:300]
    ok = post_webhook(gw, "garmin", {}, b'{"dailies":[]}', token=tok)
    assert_accepted(ok)
    recs = gw.audit_all()
    early = {x["details"]["reason"]: x["resource"] for x in recs
             if x["action"] == "http.request" and x["outcome"] == "denied"}
    assert early.get("invalid_header") == "POST /webhooks/garmin", early
    assert "payload_too_large" in early, early
    assert_no_leak(gw, [tok], [ok])


def test_content_type_outside_printable_ascii_is_accepted(make_gateway, tmp_path, hook_sink):
    """The inbox keeps a Content-Type of printable ASCII only. A signed
    webhook whose type holds a tab or a Latin-1 byte is accepted (the tab as
    a space, the other left out), never answered 503 'send it again' at
    every retry."""
    s = whsec_new()
    gw = make_gateway(webhook_config(str(tmp_path / "wh"), {
        "ct": {"scheme": "standard-webhooks", "secrets": [s],
               "deliver_to": hook_sink.url + "/hooks/ct"}}))
    body = json.dumps({"hr": 60}).encode()
    tab = post_webhook(gw, "ct", sw_headers(s, msg_id(), int(time.time()), body), body,
                       content_type="application/json;\tcharset=utf-8")
    latin = post_webhook(gw, "ct", sw_headers(s, msg_id(), int(time.time()), body), body,
                         content_type="application/json; charset=\xe9")
    ids = {assert_accepted(tab): "application/json; charset=utf-8",
           assert_accepted(latin): "application/octet-stream"}
    got = wait_for(lambda: (lambda b: b if set(b) >= set(ids) else None)(hook_sink.by_event()),
                   "both delivered")
    for eid, ct in ids.items():
        assert [q["h"]["content-type"] for q in got[eid]] == [ct], got[eid]
        assert got[eid][0]["body"] == body


@pytest.fixture
def redis(tmp_path):
    assert shutil.which("redis-server") is not None, "redis-server is not installed"
    r = Redis(tmp_path / "redis")
    yield r
    r.stop()


def test_redis_replay_memory_leaves_no_connection_behind(make_gateway, tmp_path, hook_sink,
                                                         redis):
    """With the replay memory on Redis, the workers' connections (one per
    thread) are freed when the threads end: under ASan, LeakSanitizer finds
    nothing at exit (make_gateway fails the test on a sanitizer report)."""
    s = whsec_new()
    gw = make_gateway(webhook_config(str(tmp_path / "wh"), {
        "rd": {"scheme": "standard-webhooks", "secrets": [s],
               "deliver_to": hook_sink.url + "/hooks/rd"}}, webhooks={"redis": redis.url}))
    body = b'{"a":1}'
    for _ in range(8):
        mid = msg_id()
        h = sw_headers(s, mid, int(time.time()), body)
        first = assert_accepted(post_webhook(gw, "rd", h, body))
        assert redis.cli("GET", "phigate:{wh}:rd:" + mid) == first
    assert gw.stop() == 0
    text = gw.log_text(all_runs=True)
    assert "LeakSanitizer" not in text and "AddressSanitizer" not in text, text[-3000:]
