"""The replay memory shared through Redis (issue 7): two gateways, each with a
store of its own, both given the same [webhooks] redis. A message accepted by
one is answered by the other with the same 200 and the same event id, and is
neither stored nor delivered a second time. Without Redis (the control) the
second gateway, which has its own store, accepts it as new.
"""
import json
import os
import shutil
import time

import pytest

from e2e_helpers import (HookSink, assert_accepted, post_webhook, sw_headers, wait_for,
                         webhook_config, whsec_new)
from test_ratelimit import Redis


@pytest.fixture
def redis(tmp_path):
    # not a skip: without redis-server this fails (make test installs it)
    assert shutil.which("redis-server") is not None, "redis-server is not installed"
    r = Redis(tmp_path / "redis")
    yield r
    r.stop()


def events(gw):
    r = gw.get("/admin/webhooks/events?limit=1000", key=gw.admin_key)
    assert r.status == 200, r
    return r.json()["events"]


def twin_config(folder, secret, sink, redis_url):
    return webhook_config(folder, {"shared": {"scheme": "standard-webhooks", "secrets": [secret],
                                              "deliver_to": sink.url + "/hooks"}},
                          webhooks={"redis": redis_url} if redis_url else None)


def test_two_gateways_share_the_replay_memory_through_redis(make_gateway, tmp_path, redis):
    s = whsec_new()
    sink = HookSink()
    try:
        a = make_gateway(twin_config(str(tmp_path / "a"), s, sink, redis.url), name="a")
        b = make_gateway(twin_config(str(tmp_path / "b"), s, sink, redis.url), name="b")
        body = json.dumps({"type": "sleep.updated", "hr": 58}).encode()
        mid = "msg_" + os.urandom(8).hex()
        h = sw_headers(s, mid, int(time.time()), body)

        first = assert_accepted(post_webhook(a, "shared", h, body))
        # the sender retries, and the load balancer picks the other gateway
        again = post_webhook(b, "shared", h, body)
        assert assert_accepted(again) == first, again
        # Redis holds it for twice the tolerance (2 x 300 s)
        assert redis.cli("GET", "phigate:{wh}:shared:" + mid) == first
        ttl = int(redis.cli("PTTL", "phigate:{wh}:shared:" + mid))
        assert 590000 < ttl <= 600000, ttl

        # stored once (in a's inbox), delivered once
        wait_for(lambda: len(sink.requests) >= 1, "the delivery")
        time.sleep(0.5)
        assert [r["h"]["x-phigate-event-id"] for r in sink.requests] == [first]
        assert [e["id"] for e in events(a)] == [first]
        assert events(b) == []
        # b recorded a duplicate, not an acceptance
        recs = b.audit_all()
        dup = [x for x in recs if x["action"] == "webhook.duplicate"]
        assert len(dup) == 1 and dup[0]["details"]["event_id"] == first, recs
        assert not [x for x in recs if x["action"] == "webhook.accepted"], recs

        # a new message on b is b's own
        mid2 = "msg_" + os.urandom(8).hex()
        second = assert_accepted(post_webhook(b, "shared", sw_headers(s, mid2, int(time.time()),
                                                                      body), body))
        assert second != first
        assert [e["id"] for e in events(b)] == [second]
        # ... and known to a through Redis
        assert assert_accepted(post_webhook(a, "shared", sw_headers(s, mid2, int(time.time()),
                                                                    body), body)) == second
    finally:
        sink.stop()


def test_without_redis_each_gateway_remembers_alone(make_gateway, tmp_path):
    s = whsec_new()
    sink = HookSink()
    try:
        a = make_gateway(twin_config(str(tmp_path / "a"), s, sink, None), name="a")
        b = make_gateway(twin_config(str(tmp_path / "b"), s, sink, None), name="b")
        body = b'{"n":1}'
        h = sw_headers(s, "msg_" + os.urandom(8).hex(), int(time.time()), body)
        first = assert_accepted(post_webhook(a, "shared", h, body))
        other = assert_accepted(post_webhook(b, "shared", h, body))
        assert other != first
        # each remembers its own
        assert assert_accepted(post_webhook(a, "shared", h, body)) == first
        assert assert_accepted(post_webhook(b, "shared", h, body)) == other
    finally:
        sink.stop()


def test_redis_down_falls_back_to_the_store(make_gateway, tmp_path, redis):
    """Redis unreachable: nothing fails; the gateway's own memory and its
    store's unique (source, message id) still answer a retry with the same id."""
    s = whsec_new()
    sink = HookSink()
    try:
        a = make_gateway(twin_config(str(tmp_path / "a"), s, sink, redis.url), name="a")
        redis.kill()
        body = b'{"n":2}'
        h = sw_headers(s, "msg_" + os.urandom(8).hex(), int(time.time()), body)
        first = assert_accepted(post_webhook(a, "shared", h, body))
        assert assert_accepted(post_webhook(a, "shared", h, body)) == first
        assert len(events(a)) == 1
        assert a.alive()
    finally:
        sink.stop()


def test_redis_cluster_follows_moved(make_gateway, tmp_path):
    """On a Redis Cluster every replay key has the hash tag {wh}: the
    gateways are pointed at a node that does not hold that slot, and follow
    its MOVED to the one that does."""
    assert shutil.which("redis-server") is not None, "redis-server is not installed"
    cluster = Redis(tmp_path / "cluster", cluster=True)
    sink = HookSink()
    try:
        owner = cluster.slot_owner("phigate:{wh}:x")
        other = [p for p in cluster.ports if p != owner][0]
        url = "redis://127.0.0.1:%d" % other
        s = whsec_new()
        a = make_gateway(twin_config(str(tmp_path / "a"), s, sink, url), name="a")
        b = make_gateway(twin_config(str(tmp_path / "b"), s, sink, url), name="b")
        body = b'{"n":3}'
        mid = "msg_" + os.urandom(8).hex()
        h = sw_headers(s, mid, int(time.time()), body)
        first = assert_accepted(post_webhook(a, "shared", h, body))
        assert assert_accepted(post_webhook(b, "shared", h, body)) == first
        assert cluster.cli("GET", "phigate:{wh}:shared:" + mid, port=owner) == first
        assert events(b) == []
    finally:
        sink.stop()
        cluster.stop()
