"""Delivery of accepted webhooks (issue 7): durable across a restart while the
upstream is down, dead letters after max_attempts, and replays through the
admin API. Small backoffs (50 ms, at most 300-500 ms) keep it quick.
"""
import json
import os
import time

from e2e_helpers import (HookSink, assert_accepted, assert_error, free_port, metric_value,
                         post_webhook, sw_headers, wait_for, webhook_config, whsec_new)


def msg_id():
    return "msg_" + os.urandom(10).hex()


def metrics(gw):
    r = gw.get("/metrics")
    assert r.status == 200, r
    return r.body.decode()


def events(gw, state=None, source=None):
    q = "&".join("%s=%s" % kv for kv in (("state", state), ("source", source), ("limit", 1000))
                 if kv[1] is not None)
    r = gw.get("/admin/webhooks/events?" + q, key=gw.admin_key)
    assert r.status == 200, r
    return r.json()["events"]


def event(gw, eid):
    r = gw.get("/admin/webhooks/events/" + eid, key=gw.admin_key)
    assert r.status == 200, r
    return r.json()


# ---- 2: durability -------------------------------------------------------------------------------

def test_events_survive_a_restart_while_the_upstream_is_down(make_gateway, tmp_path):
    n = 20
    port = free_port()  # nothing listens there until the gateway is restarted
    s = whsec_new()
    folder = str(tmp_path / "wh")
    cfg = webhook_config(folder, {"dur": {"scheme": "standard-webhooks", "secrets": [s],
                                          "deliver_to": "http://127.0.0.1:%d/hooks/dur" % port}},
                         webhooks={"max_attempts": 1000, "backoff_ms": 50,
                                   "backoff_max_ms": 300, "timeout_ms": 500})
    gw = make_gateway(cfg)
    sent = {}
    t = int(time.time())
    for i in range(n):
        body = json.dumps({"seq": i, "pad": "x" * i}).encode()
        r = post_webhook(gw, "dur", sw_headers(s, msg_id(), t, body), body,
                         content_type="application/vnd.test+json")
        sent[assert_accepted(r)] = body
    assert len(sent) == n
    # they are tried, and fail (nothing listens)
    wait_for(lambda: (metric_value(metrics(gw), "phigate_webhook_deliveries_total",
                                   '{result="retry"}') or 0) >= n,
             "a failed attempt per event", timeout=15)
    assert metric_value(metrics(gw), "phigate_webhook_deliveries_total",
                        '{result="delivered"}') == 0
    pending = wait_for(lambda: (lambda es: es if all(e["attempts"] >= 1 for e in es) else None)(
        events(gw, state="pending")), "an attempt on every event", timeout=15)
    assert {e["id"] for e in pending} == set(sent), pending
    assert all(e["last_status"] is None and e["last_error"] for e in pending), pending
    # SIGTERM, then the upstream comes up on that port, then phigate again
    assert gw.stop() == 0
    sink = HookSink(port=port)
    try:
        gw.start()
        got = wait_for(lambda: (lambda b: b if set(b) >= set(sent) else None)(sink.by_event()),
                       "every event at the upstream after the restart", timeout=30)
        assert set(got) == set(sent), set(got) ^ set(sent)
        for eid, body in sent.items():
            for q in got[eid]:  # at least once; each copy exact
                assert q["body"] == body, eid
                assert q["h"]["content-type"] == "application/vnd.test+json", q["h"]
                assert q["h"]["x-phigate-webhook-source"] == "dur", q["h"]
                assert int(q["h"]["x-phigate-webhook-attempt"]) >= 2, q["h"]
        repeats = {k: len(v) for k, v in got.items() if len(v) > 1}
        wait_for(lambda: len(events(gw, state="delivered")) == n, "all %d delivered" % n)
        assert events(gw, state="pending") == []
        for e in events(gw, state="delivered"):
            assert e["attempts"] >= 2 and e["last_status"] == 200, e
        recs = gw.audit_all()
        acc = {x["details"]["event_id"] for x in recs if x["action"] == "webhook.accepted"}
        assert acc == set(sent), acc ^ set(sent)
        # at-least-once: a repeat is allowed, but this normal case has none
        assert not repeats, repeats
    finally:
        sink.stop()


# ---- 7: dead letters and replays -----------------------------------------------------------------

def test_dead_letter_after_max_attempts_then_replay(make_gateway, tmp_path, hook_sink):
    hook_sink.status = 500
    folder = str(tmp_path / "wh")
    s1, s2 = whsec_new(), whsec_new()
    cfg = webhook_config(folder, {
        "dl": {"scheme": "standard-webhooks", "secrets": [s1],
               "deliver_to": hook_sink.url + "/hooks/dl"},
        "dl2": {"scheme": "standard-webhooks", "secrets": [s2],
                "deliver_to": hook_sink.url + "/hooks/dl2"}},
        webhooks={"max_attempts": 2, "backoff_ms": 50, "backoff_max_ms": 500})
    gw = make_gateway(cfg)
    t = int(time.time())
    ids = {}
    for name, sec, label in (("dl", s1, "e1"), ("dl", s1, "e2"), ("dl2", s2, "e3")):
        body = json.dumps({"label": label}).encode()
        ids[label] = assert_accepted(post_webhook(gw, name, sw_headers(sec, msg_id(), t, body),
                                                  body))
    wait_for(lambda: len(events(gw, state="dead")) == 3, "three dead events", timeout=15)
    for label, eid in ids.items():
        e = event(gw, eid)
        assert (e["state"], e["attempts"], e["last_status"]) == ("dead", 2, 500), e
        assert e["last_error"] and e["next_attempt_ms"] is None, e
    got = hook_sink.by_event()
    for eid in ids.values():
        assert sorted(q["h"]["x-phigate-webhook-attempt"] for q in got[eid]) == ["1", "2"], \
            [q["h"] for q in got[eid]]
    recs = wait_for(lambda: (lambda rs: rs if len(rs) == 3 else None)(
        [x for x in gw.audit_all() if x["action"] == "webhook.dead"]), "three webhook.dead")
    assert sorted(x["details"]["event_id"] for x in recs) == sorted(ids.values()), recs
    assert {x["resource"] for x in recs} == {"webhook:dl", "webhook:dl2"}, recs
    text = metrics(gw)
    assert metric_value(text, "phigate_webhook_deliveries_total", '{result="dead"}') == 3, text
    assert metric_value(text, "phigate_webhook_deliveries_total", '{result="retry"}') == 3, text
    assert metric_value(text, "phigate_webhook_deliveries_total",
                        '{result="delivered"}') == 0, text
    wait_for(lambda: metric_value(metrics(gw), "phigate_webhook_inbox_events",
                                  '{state="dead"}') == 3, "inbox_events{state=dead} 3", timeout=5)
    r = gw.get("/admin/webhooks/stats", key=gw.admin_key)
    assert r.status == 200, r
    assert (r.json()["dead"], r.json()["pending"], r.json()["delivered"]) == (3, 0, 0), r

    # a pending or unknown event cannot be replayed; a bad id is a 400
    r = gw.request("POST", "/admin/webhooks/events/01ARZ3NDEKTSV4RRFFQ69G5FAV/replay",
                   key=gw.admin_key)
    assert_error(r, 404, "not_found")
    r = gw.request("POST", "/admin/webhooks/events/not-a-ulid/replay", key=gw.admin_key)
    assert_error(r, 400)

    # the upstream is fixed: replay one by id
    hook_sink.status = 200
    r = gw.request("POST", "/admin/webhooks/events/%s/replay" % ids["e1"], key=gw.admin_key)
    assert r.status == 200 and r.json() == {"id": ids["e1"], "state": "pending"}, r
    wait_for(lambda: event(gw, ids["e1"])["state"] == "delivered", "e1 delivered after replay")
    got = hook_sink.by_event()
    assert [q["status"] for q in got[ids["e1"]]] == [500, 500, 200], got[ids["e1"]]
    assert got[ids["e1"]][-1]["h"]["x-phigate-webhook-attempt"] == "1", got[ids["e1"]][-1]["h"]
    assert event(gw, ids["e2"])["state"] == "dead" and event(gw, ids["e3"])["state"] == "dead"
    # a delivered event is not replayed
    r = gw.request("POST", "/admin/webhooks/events/%s/replay" % ids["e1"], key=gw.admin_key)
    assert_error(r, 409, "conflict")
    # every dead event of one source
    r = gw.request("POST", "/admin/webhooks/events/replay?source=dl2", key=gw.admin_key)
    assert r.status == 200 and r.json() == {"replayed": 1}, r
    wait_for(lambda: event(gw, ids["e3"])["state"] == "delivered", "e3 delivered after replay")
    assert event(gw, ids["e2"])["state"] == "dead"
    r = gw.request("POST", "/admin/webhooks/events/replay?source=dl", key=gw.admin_key)
    assert r.status == 200 and r.json() == {"replayed": 1}, r
    wait_for(lambda: event(gw, ids["e2"])["state"] == "delivered", "e2 delivered after replay")
    r = gw.request("POST", "/admin/webhooks/events/replay", key=gw.admin_key)
    assert r.status == 200 and r.json() == {"replayed": 0}, r
    time.sleep(0.5)
    got = hook_sink.by_event()
    assert {eid: [q["status"] for q in got[eid]] for eid in ids.values()} == {
        eid: [500, 500, 200] for eid in ids.values()}, got
    r = gw.get("/admin/webhooks/stats", key=gw.admin_key)
    assert (r.json()["dead"], r.json()["pending"], r.json()["delivered"]) == (0, 0, 3), r
    recs = gw.audit_all()
    # deliveries are in the events' rows (above), dead letters in the log
    assert not [x for x in recs if x["action"] == "webhook.delivered"]
    replays = [x for x in recs if x["action"].startswith("admin.webhooks.event.replay")]
    assert len(replays) >= 4, replays
    text = metrics(gw)
    assert metric_value(text, "phigate_webhook_deliveries_total", '{result="delivered"}') == 3
    wait_for(lambda: metric_value(metrics(gw), "phigate_webhook_inbox_events",
                                  '{state="dead"}') == 0, "inbox_events{state=dead} 0",
             timeout=5)
    assert metric_value(metrics(gw), "phigate_webhook_delivery_lag_seconds") == 0
    r = gw.get("/admin/webhooks/sources", key=gw.admin_key)
    assert sorted(x["name"] for x in r.json()["sources"]) == ["dl", "dl2"], r
    assert gw.alive()


def test_delivery_lag_is_reported_while_events_wait(make_gateway, tmp_path):
    """phigate_webhook_delivery_lag_seconds: the age of the oldest pending
    event, refreshed every second."""
    port = free_port()
    s = whsec_new()
    folder = str(tmp_path / "wh")
    gw = make_gateway(webhook_config(folder, {"lag": {
        "scheme": "standard-webhooks", "secrets": [s],
        "deliver_to": "http://127.0.0.1:%d/x" % port}},
        webhooks={"max_attempts": 1000, "backoff_ms": 50, "backoff_max_ms": 200,
                  "timeout_ms": 200}))
    body = b'{"lag":1}'
    assert_accepted(post_webhook(gw, "lag", sw_headers(s, msg_id(), int(time.time()), body), body))
    t0 = time.time()
    wait_for(lambda: (metric_value(metrics(gw), "phigate_webhook_delivery_lag_seconds") or 0)
             >= 1.0, "a lag of a second or more", timeout=6)
    lag = metric_value(metrics(gw), "phigate_webhook_delivery_lag_seconds")
    assert lag <= time.time() - t0 + 1.5, lag
    assert metric_value(metrics(gw), "phigate_webhook_inbox_events", '{state="pending"}') == 1
