"""Inbound webhooks end to end (issue 7): POST /webhooks/<source> on the real
`phigate serve`, every scheme signed here in Python as
../shared/research/webhooks.md and docs/formats.md section 17 describe,
delivered to a sink (e2e_helpers.HookSink), the audit log and /metrics.

Here: the signers against the documented vectors, every scheme once, the
vendor handshakes, duplicates (also across a restart) and bad input. The
npm interop and secret rotation are in test_webhooks_npm.py; durability,
dead letters and replays in test_webhooks_delivery.py.
"""
import base64
import hashlib
import json
import os
import socket
import time

import pytest

from e2e_helpers import (GoogleKey, assert_accepted, assert_error, assert_no_leak, audit_by_rid,
                         fitbit_headers, http_request, metric_value, oura_headers,
                         parse_raw_response, polar_headers, post_webhook, stripe_headers,
                         stripe_v1, suunto_headers, sw_headers, sw_signature, wait_for,
                         webhook_config, whoop_headers, whsec_new, write_secret_file)

SW_A = ("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330,
        b'{"test": 2432232314}', "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=")
DECOY = "v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc="
B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def rand_text(n=32):
    """A random secret of [A-Za-z0-9_-] (also a valid path token)."""
    return base64.urlsafe_b64encode(os.urandom(n)).decode().rstrip("=")[:n]


def msg_id():
    return "msg_" + rand_text(20)


def now_s():
    return int(time.time())


def at_second_start(fn, tries=4):
    """fn(s) called early in the wall-clock second s; again if the second
    changed before it returned (for exact window boundaries)."""
    for _ in range(tries):
        frac = time.time() % 1.0
        if frac > 0.05:
            time.sleep(1.0 - frac + 0.005)
        s = int(time.time())
        r = fn(s)
        if int(time.time()) == s:
            return r
    raise AssertionError("could not make a request within one wall-clock second")


def metrics(gw):
    r = gw.get("/metrics")
    assert r.status == 200, r
    return r.body.decode()


def wh_count(gw, outcome):
    return metric_value(metrics(gw), "phigate_webhook_requests_total", '{outcome="%s"}' % outcome)


# ---- 0: the signers of these tests against the documented vectors ----------------------------

def test_signers_reproduce_the_documented_vectors():
    sec, mid, ts, body, want = SW_A
    assert sw_signature(sec, mid, ts, body) == want
    assert stripe_headers("whsec_test_secret", 1614265330,
                          b'{"id":"evt_test_webhook","object":"event"}')["Stripe-Signature"] == (
        "t=1614265330,v1=3c5817089d739023dd6190f70a3757e04f7a2fd8b5dab12c2e000f51970dccff")
    oura = (b'{"event_type":"update","data_type":"sleep","object_id":"abc-123",'
            b'"event_time":"2023-11-14T22:13:20+00:00","user_id":"u-1"}')
    assert oura_headers("oura_test_client_secret", 1700000000, oura)["x-oura-signature"] == (
        "0DCC4CC5CCD86376CB64BEDC74562C17240C8EB483E7481E41E7F7AECB403305")
    whoop = (b'{"user_id":10129,"id":"ecfc6a15-4661-442f-a9a4-f160dd7afae8","type":'
             b'"sleep.updated","trace_id":"e369c784-5100-49e8-8098-75d35c47b31b"}')
    assert whoop_headers("whoop_test_client_secret", 1700000000000, whoop)[
        "X-WHOOP-Signature"] == "yCdL5NALtFp0hCYia0uo3noGCeYtxMiZAClAMTin0zo="
    fitbit = (b'[{"collectionType":"activities","date":"2023-10-25","ownerId":"ABC123",'
              b'"ownerType":"user","subscriptionId":"sub-1"}]')
    assert fitbit_headers("fitbit_test_client_secret", fitbit)["X-Fitbit-Signature"] == (
        "9hTJLq8Tu+6woBKZMspLReZREUk=")
    polar = (b'{"event":"EXERCISE","user_id":475,"entity_id":"aQlC83","timestamp":'
             b'"2018-05-15T14:22:24Z","url":"https://www.polaraccesslink.com/v3/exercises/aQlC83"}')
    assert polar_headers("polar_test_signature_secret_key", polar)["Polar-Webhook-Signature"] == (
        "bc3ceb41c1358b12aefcfef84964d89e34555a886908a6e4be13be75ce9cde16")
    suunto = b'{"workout":"abc","username":"u-1","event":"WORKOUT_CREATED"}'
    assert suunto_headers("suunto_test_notification_secret", suunto)[
        "X-HMAC-SHA256-Signature"] == (
        "6d075f250925cf5b2a69a918a40d7477d21f34e1c930c4b934289e1d96e97bbe")
    # the google-health signature: 0x01 || key id || DER, verifiable with the key
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    k = GoogleKey(0x01020304)
    raw = base64.b64decode(k.signature(b"body"))
    assert raw[:5] == b"\x01\x01\x02\x03\x04"
    k.priv.public_key().verify(raw[5:], b"body", ec.ECDSA(hashes.SHA256()))
    ks = json.loads(k.keyset_json())
    assert ks["primaryKeyId"] == 0x01020304 and len(ks["key"]) == 1


# ---- a gateway with one source of every scheme -------------------------------------------------

@pytest.fixture
def allgw(make_gateway, tmp_path, hook_sink):
    """Sources of all nine schemes from the configuration file, delivering to
    hook_sink/hooks/<name>; .wh holds the secrets, tokens and the Google key."""
    folder = str(tmp_path / "wh")
    gkey = GoogleKey()
    keyset = write_secret_file(folder, "keyset.json", gkey.keyset_json())
    wh = {
        "sw": {"scheme": "standard-webhooks", "secrets": [whsec_new()]},
        "stripe": {"scheme": "stripe", "secrets": ["whsec_" + rand_text(32)]},
        "oura": {"scheme": "oura", "secrets": [rand_text(32)], "verify_token": rand_text(24)},
        "whoop": {"scheme": "whoop", "secrets": [rand_text(32)]},
        "fitbit": {"scheme": "fitbit", "secrets": [rand_text(32)], "verify_token": rand_text(24)},
        "polar": {"scheme": "polar", "secrets": [rand_text(32)]},
        "suunto": {"scheme": "suunto", "secrets": [rand_text(32)]},
        "garmin": {"scheme": "unsigned", "secrets": [rand_text(32), rand_text(40)]},
        "gh": {"scheme": "google-health", "secrets": ["Bearer " + rand_text(40)]},
    }
    for name, s in wh.items():
        s["deliver_to"] = hook_sink.url + "/hooks/" + name
    gw = make_gateway(webhook_config(folder, wh, webhooks={"google_keyset": keyset}))
    gw.wh, gw.gkey, gw.sink = wh, gkey, hook_sink
    return gw


def sec(gw, name, i=0):
    return gw.wh[name]["secrets"][i]


def every_scheme_requests(gw):
    """(name, headers, body, content type, token, expected msg id, verified) of
    one genuine webhook per scheme."""
    t, t_ms = now_s(), int(time.time() * 1000)
    out = []
    mid = msg_id()
    body = '{"type":"user.created","name":"Zoë 🎉"}'.encode()
    out.append(("sw", sw_headers(sec(gw, "sw"), mid, t, body), body,
                "application/json; charset=utf-8", None, mid, "signature"))
    body = b'{"id":"evt_1","object":"event","data":{"x":1}}'
    h = stripe_headers(sec(gw, "stripe"), t, body)
    out.append(("stripe", h, body, "application/json", None, stripe_v1(sec(gw, "stripe"), t, body),
                "signature"))
    body = b'{"event_type":"create","data_type":"sleep","object_id":"o-1","user_id":"u-1"}'
    h = oura_headers(sec(gw, "oura"), t, body)
    out.append(("oura", h, body, "application/json", None, h["x-oura-signature"].lower(),
                "signature"))
    body = b'{"user_id":10129,"id":"ecfc6a15","type":"sleep.updated","trace_id":"t-1"}'
    h = whoop_headers(sec(gw, "whoop"), t_ms, body)
    out.append(("whoop", h, body, "application/json", None,
                base64.b64decode(h["X-WHOOP-Signature"]).hex(), "signature"))
    body = b'[{"collectionType":"sleep","date":"2026-10-01","ownerId":"A1","ownerType":"user"}]'
    h = fitbit_headers(sec(gw, "fitbit"), body)
    out.append(("fitbit", h, body, "application/json", None,
                base64.b64decode(h["X-Fitbit-Signature"]).hex(), "signature"))
    body = b'{"event":"EXERCISE","user_id":475,"entity_id":"aQlC83"}'
    h = polar_headers(sec(gw, "polar"), body)
    out.append(("polar", h, body, "application/json", None, h["Polar-Webhook-Signature"],
                "signature"))
    body = b'{"workout":"abc","username":"u-1","event":"WORKOUT_CREATED"}'
    h = suunto_headers(sec(gw, "suunto"), body)
    out.append(("suunto", h, body, "application/json", None, h["X-HMAC-SHA256-Signature"],
                "signature"))
    body = b"userid=1234&appli=44&startdate=1700000000&enddate=1700003600"
    out.append(("garmin", {}, body, "application/x-www-form-urlencoded", sec(gw, "garmin", 1),
                hashlib.sha256(body).hexdigest(), "unauthenticated-origin"))
    body = b'{"data":{"dataType":"steps","interval":{"start":"2026-10-01T00:00:00Z"}}}'
    h = {"Authorization": sec(gw, "gh"), "GOOGLE-HEALTH-API-SIGNATURE": gw.gkey.signature(body)}
    out.append(("gh", h, body, "application/json", None, hashlib.sha256(body).hexdigest(),
                "signature"))
    return out


# ---- 6: every scheme end to end ------------------------------------------------------------------

def test_every_scheme_accepted_stored_and_delivered_once(allgw):
    gw, sink = allgw, allgw.sink
    cases = every_scheme_requests(gw)
    sent, responses = {}, []
    for name, headers, body, ct, token, mid, verified in cases:
        t0 = int(time.time() * 1000)
        r = post_webhook(gw, name, headers, body, token=token, content_type=ct)
        t1 = int(time.time() * 1000)
        eid = assert_accepted(r)
        responses.append(r)
        sent[eid] = {"name": name, "body": body, "ct": ct, "mid": mid, "verified": verified,
                     "rid": r.rid, "t0": t0, "t1": t1}
    assert len(sent) == len(cases), "two webhooks got the same id: %r" % sent

    got = wait_for(lambda: (lambda b: b if set(sent) <= set(b) else None)(sink.by_event()),
                   "a delivery of every event", timeout=15)
    assert set(got) == set(sent), (set(got) ^ set(sent))
    scheme_of = {n: s["scheme"] for n, s in gw.wh.items()}
    for eid, want in sent.items():
        reqs = got[eid]
        assert len(reqs) == 1, (want["name"], reqs)
        q = reqs[0]
        assert q["method"] == "POST" and q["path"] == "/hooks/" + want["name"], q
        assert q["body"] == want["body"], (want["name"], q["body"], want["body"])
        h = q["h"]
        assert h.get("content-type") == want["ct"], (want["name"], h)
        assert h.get("x-phigate-event-id") == eid, h
        assert h.get("x-phigate-webhook-source") == want["name"], h
        assert h.get("x-phigate-webhook-scheme") == scheme_of[want["name"]], h
        assert h.get("x-phigate-webhook-verified") == want["verified"], (want["name"], h)
        assert h.get("x-phigate-webhook-msg-id") == want["mid"], (want["name"], h)
        assert h.get("x-phigate-webhook-attempt") == "1", h
        ra = int(h.get("x-phigate-webhook-received-at", "0"))
        assert want["t0"] - 5 <= ra <= want["t1"] + 5, (want["name"], ra, want["t0"], want["t1"])
        assert h.get("x-request-id") == want["rid"], (want["name"], h.get("x-request-id"),
                                                      want["rid"])
        # no secret, signature header or token is passed on
        for k in ("authorization", "stripe-signature", "webhook-signature", "x-oura-signature",
                  "google-health-api-signature"):
            assert k not in h, (want["name"], k)

    # the admin API: every event delivered, with its metadata
    def delivered():
        r = gw.get("/admin/webhooks/events?state=delivered", key=gw.admin_key)
        assert r.status == 200, r
        ids = {e["id"] for e in r.json()["events"]}
        return ids if ids >= set(sent) else None
    wait_for(delivered, "every event in state delivered")
    for eid, want in sent.items():
        r = gw.get("/admin/webhooks/events/" + eid, key=gw.admin_key)
        assert r.status == 200, r
        e = r.json()
        assert (e["id"], e["source"], e["state"], e["attempts"], e["msg_id"]) == (
            eid, want["name"], "delivered", 1, want["mid"]), e
        assert e["authenticated"] is (want["verified"] == "signature"), e
        assert e["body_len"] == len(want["body"]) and "body" not in e, e
    r = gw.get("/admin/webhooks/sources", key=gw.admin_key)
    assert r.status == 200, r
    assert {s["name"] for s in r.json()["sources"]} >= set(gw.wh), r

    # the audit log: one accepted record each; deliveries are kept in the
    # events' rows (checked above), not as one audit record per delivery
    def audit_complete():
        recs = gw.audit_all()
        acc = [x for x in recs if x["action"] == "webhook.accepted"]
        return (recs, acc) if len(acc) >= len(sent) else None
    recs, acc = wait_for(audit_complete, "the accepted records")
    assert len(acc) == len(sent), acc
    assert not [x for x in recs if x["action"] == "webhook.delivered"]
    by_rid = audit_by_rid(recs)
    for eid, want in sent.items():
        mine = [x for x in by_rid.get(want["rid"], []) if x["action"] == "webhook.accepted"]
        assert len(mine) == 1, (want["name"], by_rid.get(want["rid"]))
        x = mine[0]
        assert x["resource"] == "webhook:" + want["name"], x
        assert x["outcome"] == "success", x
        d = x["details"]
        assert d["event_id"] == eid and d["msg_id"] == want["mid"], x
        assert d["scheme"] == scheme_of[want["name"]], x
        want_index = 1 if want["name"] == "garmin" else 0
        assert d["secret_index"] == want_index, x

    # /metrics
    text = metrics(gw)
    assert metric_value(text, "phigate_webhook_requests_total", '{outcome="accepted"}') == len(sent)
    assert metric_value(text, "phigate_webhook_deliveries_total",
                        '{result="delivered"}') == len(sent), text
    # the gauges count what waits (pending, dead), refreshed every second
    wait_for(lambda: metric_value(metrics(gw), "phigate_webhook_inbox_events",
                                  '{state="pending"}') == 0,
             "phigate_webhook_inbox_events{state=pending} = 0", timeout=5)
    text = metrics(gw)
    assert metric_value(text, "phigate_webhook_inbox_events", '{state="dead"}') == 0, text
    assert 'phigate_webhook_inbox_events{state="delivered"}' not in text, text
    assert metric_value(text, "phigate_webhook_delivery_lag_seconds") == 0, text

    secrets = [s for w in gw.wh.values() for s in w["secrets"]] + [
        w["verify_token"] for w in gw.wh.values() if w.get("verify_token")]
    assert_no_leak(gw, secrets, responses)


# ---- 5: handshakes -------------------------------------------------------------------------------

def test_vendor_handshakes(allgw):
    gw = allgw
    responses = []
    oura_vt, fitbit_vt = gw.wh["oura"]["verify_token"], gw.wh["fitbit"]["verify_token"]
    # Oura: GET ?verification_token=&challenge= -> {"challenge": C}
    r = gw.get("/webhooks/oura?verification_token=%s&challenge=ch-123_abc" % oura_vt)
    responses.append(r)
    assert r.status == 200, r
    assert r.json() == {"challenge": "ch-123_abc"}, r
    r = gw.get("/webhooks/oura?verification_token=%s&challenge=ch-1" % rand_text(24))
    responses.append(r)
    assert_error(r, 401, "bad_verification_token")
    # Fitbit: GET ?verify= -> 204 for the right code, 404 for a wrong one
    r = gw.get("/webhooks/fitbit?verify=" + fitbit_vt)
    responses.append(r)
    assert r.status == 204 and r.body == b"", r
    r = gw.get("/webhooks/fitbit?verify=" + rand_text(24))
    responses.append(r)
    assert r.status == 404, r
    # Polar: the unsigned PING
    r = post_webhook(gw, "polar", {}, b'{"event":"PING"}')
    responses.append(r)
    assert r.status == 200, r
    # Google Health: the verification POSTs, with and without the Authorization value
    r = post_webhook(gw, "gh", {"Authorization": sec(gw, "gh")}, b'{"type":"verification"}')
    responses.append(r)
    assert r.status == 201, r
    for h in ({}, {"Authorization": "Bearer " + rand_text(40)}):
        r = post_webhook(gw, "gh", h, b'{"type":"verification"}')
        responses.append(r)
        assert r.status == 401, r
        assert_error(r, 401)
    # Withings: HEAD on an unsigned source's URL
    r = gw.request("HEAD", "/webhooks/garmin/" + sec(gw, "garmin"))
    responses.append(r)
    assert r.status == 200, r
    r = gw.request("HEAD", "/webhooks/garmin/" + rand_text(32))
    responses.append(r)
    assert r.status == 404, r

    # a signed google-health notification; a wrong key, an unknown key id
    body = b'{"data":{"dataType":"sleep","user":"u-9"}}'
    h = {"Authorization": sec(gw, "gh"), "GOOGLE-HEALTH-API-SIGNATURE": gw.gkey.signature(body)}
    eid = assert_accepted(post_webhook(gw, "gh", h, body))
    other = GoogleKey(gw.gkey.key_id)
    r = post_webhook(gw, "gh", {"Authorization": sec(gw, "gh"),
                                "GOOGLE-HEALTH-API-SIGNATURE": other.signature(body + b" ")},
                     body + b" ")
    responses.append(r)
    assert_error(r, 401, "bad_signature")
    r = post_webhook(gw, "gh", {"Authorization": sec(gw, "gh"),
                                "GOOGLE-HEALTH-API-SIGNATURE": gw.gkey.signature(body, 7)},
                     body + b"  ")
    responses.append(r)
    assert r.status == 401, r
    r = post_webhook(gw, "gh", {"GOOGLE-HEALTH-API-SIGNATURE": gw.gkey.signature(body + b"\n")},
                     body + b"\n")
    responses.append(r)
    assert r.status == 401, r
    wait_for(lambda: eid in gw.sink.by_event(), "the google-health delivery")
    q = gw.sink.by_event()[eid][0]
    assert q["h"]["x-phigate-webhook-verified"] == "signature", q
    assert q["h"]["x-phigate-webhook-scheme"] == "google-health", q

    # the handshakes are audited and counted (no event stored for them)
    recs = wait_for(lambda: (lambda rs: rs if len(rs) >= 6 else None)(
        [x for x in gw.audit_all() if x["action"] == "webhook.handshake"]),
        "six handshake records")
    res = sorted(x["resource"] for x in recs if x["outcome"] == "success")
    assert res == ["webhook:fitbit", "webhook:garmin", "webhook:gh", "webhook:oura",
                   "webhook:polar"], recs
    r = gw.get("/admin/webhooks/events", key=gw.admin_key)
    assert [e["id"] for e in r.json()["events"]] == [eid], r
    text = metrics(gw)
    assert metric_value(text, "phigate_webhook_requests_total", '{outcome="handshake"}') >= 5, text
    assert metric_value(text, "phigate_webhook_requests_total", '{outcome="accepted"}') == 1, text
    assert gw.alive()
    assert_no_leak(gw, [oura_vt, fitbit_vt] + [s for w in gw.wh.values() for s in w["secrets"]],
                   responses)


def test_store_sources_answer_handshakes_with_their_verify_token(make_gateway, tmp_path,
                                                                  hook_sink):
    """Sources of the STORE (the CLI's --verify-token-file, set-verify-token)
    answer the Oura and Fitbit handshakes as configured ones do; a token
    changed through PUT /admin/webhooks/sources/NAME/verify-token is in use at
    once. The token is never in a response, the log or the audit log."""
    folder = str(tmp_path / "wh")
    gw = make_gateway(webhook_config(folder, {}), start=False)
    oura_vt, oura_vt2, fitbit_vt = rand_text(24), rand_text(24), rand_text(24)
    oura_sec, fitbit_sec = rand_text(32), rand_text(32)
    r = gw.cli("webhooks", "source", "add", "ring", "--scheme", "oura", "--secret-file",
               write_secret_file(folder, "ring.secret", oura_sec), "--verify-token-file",
               write_secret_file(folder, "ring.vt", oura_vt), "--deliver-to",
               hook_sink.url + "/hooks/ring", "--store", gw.store)
    assert r.rc == 0, r
    r = gw.cli("webhooks", "source", "add", "fb", "--scheme", "fitbit", "--secret-file",
               write_secret_file(folder, "fb.secret", fitbit_sec), "--deliver-to",
               hook_sink.url + "/hooks/fb", "--store", gw.store)
    assert r.rc == 0, r
    r = gw.cli("webhooks", "source", "set-verify-token", "fb", "--verify-token-file",
               write_secret_file(folder, "fb.vt", fitbit_vt), "--store", gw.store)
    assert r.rc == 0, r
    gw.start()
    responses = []

    # Oura: the right token echoes the challenge; a wrong one is 401
    r = gw.get("/webhooks/ring?verification_token=%s&challenge=ch-77_x" % oura_vt)
    responses.append(r)
    assert r.status == 200, r
    assert r.json() == {"challenge": "ch-77_x"}, r
    r = gw.get("/webhooks/ring?verification_token=%s&challenge=ch-1" % rand_text(24))
    responses.append(r)
    assert_error(r, 401, "bad_verification_token")
    # Fitbit: ?verify= 204 for the right code, 404 for a wrong one
    r = gw.get("/webhooks/fb?verify=" + fitbit_vt)
    responses.append(r)
    assert r.status == 204 and r.body == b"", r
    r = gw.get("/webhooks/fb?verify=" + rand_text(24))
    responses.append(r)
    assert r.status == 404, r

    # the admin API says there is one, never what; a new one is used at once
    r = gw.get("/admin/webhooks/sources/ring", key=gw.admin_key)
    responses.append(r)
    assert r.status == 200 and r.json()["has_verify_token"] is True, r
    r = gw.request("PUT", "/admin/webhooks/sources/ring/verify-token",
                   headers={"Content-Type": "application/json"},
                   body=json.dumps({"verify_token": oura_vt2}), key=gw.admin_key)
    responses.append(r)
    assert r.status == 200 and r.json() == {"name": "ring", "has_verify_token": True}, r
    r = gw.get("/webhooks/ring?verification_token=%s&challenge=ch-2" % oura_vt2)
    responses.append(r)
    assert r.status == 200 and r.json() == {"challenge": "ch-2"}, r
    r = gw.get("/webhooks/ring?verification_token=%s&challenge=ch-3" % oura_vt)
    responses.append(r)
    assert_error(r, 401, "bad_verification_token")
    # cleared: no token matches
    r = gw.request("PUT", "/admin/webhooks/sources/fb/verify-token",
                   headers={"Content-Type": "application/json"},
                   body=json.dumps({"verify_token": None}), key=gw.admin_key)
    responses.append(r)
    assert r.status == 200 and r.json() == {"name": "fb", "has_verify_token": False}, r
    r = gw.get("/webhooks/fb?verify=" + fitbit_vt)
    responses.append(r)
    assert r.status == 404, r

    assert_no_leak(gw, [oura_vt, oura_vt2, fitbit_vt, oura_sec, fitbit_sec], responses)


# ---- 4: duplicates -------------------------------------------------------------------------------

def test_duplicates_same_id_stored_and_delivered_once(make_gateway, tmp_path, hook_sink):
    folder = str(tmp_path / "wh")
    wh = {"sw": {"scheme": "standard-webhooks", "secrets": [whsec_new()]},
          "stripe": {"scheme": "stripe", "secrets": ["whsec_" + rand_text(32)]},
          "polar": {"scheme": "polar", "secrets": [rand_text(32)]}}
    for name, s in wh.items():
        s["deliver_to"] = hook_sink.url + "/hooks/" + name
    gw = make_gateway(webhook_config(folder, wh))
    t = now_s()
    mid = msg_id()
    body = b'{"n":1}'
    sw_h = sw_headers(wh["sw"]["secrets"][0], mid, t, body)
    r1 = post_webhook(gw, "sw", sw_h, body)
    first = assert_accepted(r1)
    r2 = post_webhook(gw, "sw", sw_h, body)
    assert assert_accepted(r2) == first and r2.body == r1.body, (r1, r2)
    # the sender's retry: same webhook-id, a new timestamp and signature
    r3 = post_webhook(gw, "sw", sw_headers(wh["sw"]["secrets"][0], mid, t + 1, body), body)
    assert assert_accepted(r3) == first and r3.body == r1.body, (r1, r3)

    sbody = b'{"id":"evt_dup","object":"event"}'
    st_h = stripe_headers(wh["stripe"]["secrets"][0], t, sbody)
    s1 = assert_accepted(post_webhook(gw, "stripe", st_h, sbody))
    assert assert_accepted(post_webhook(gw, "stripe", st_h, sbody)) == s1
    pbody = b'{"event":"EXERCISE","entity_id":"x1"}'
    p_h = polar_headers(wh["polar"]["secrets"][0], pbody)
    p1 = assert_accepted(post_webhook(gw, "polar", p_h, pbody))
    assert assert_accepted(post_webhook(gw, "polar", p_h, pbody)) == p1
    # the same body under another signature (another timestamp) is another event
    st_h2 = stripe_headers(wh["stripe"]["secrets"][0], t + 2, sbody)
    s2 = assert_accepted(post_webhook(gw, "stripe", st_h2, sbody))
    assert s2 != s1
    ids = {first, s1, p1, s2}
    assert len(ids) == 4

    wait_for(lambda: set(hook_sink.by_event()) >= ids, "the four deliveries")
    time.sleep(1.0)  # anything delivered twice would come within the 50 ms backoff
    got = hook_sink.by_event()
    assert set(got) == ids and all(len(v) == 1 for v in got.values()), \
        {k: len(v) for k, v in got.items()}

    # across a restart (the replay memory is gone; the inbox remembers)
    assert gw.stop() == 0
    gw.start()
    r4 = post_webhook(gw, "sw", sw_h, body)
    assert assert_accepted(r4) == first, r4
    assert assert_accepted(post_webhook(gw, "polar", p_h, pbody)) == p1
    time.sleep(1.0)
    got = hook_sink.by_event()
    assert set(got) == ids and all(len(v) == 1 for v in got.values()), \
        {k: len(v) for k, v in got.items()}
    r = gw.get("/admin/webhooks/events", key=gw.admin_key)
    assert sorted(e["id"] for e in r.json()["events"]) == sorted(ids), r

    recs = gw.audit_all()
    dups = [x for x in recs if x["action"] == "webhook.duplicate"]
    acc = [x for x in recs if x["action"] == "webhook.accepted"]
    assert len(acc) == 4, acc
    assert sorted(x["details"]["event_id"] for x in dups) == sorted(
        [first, first, first, s1, p1, p1]), dups
    # counted (this run: the two after the restart)
    text = metrics(gw)
    assert metric_value(text, "phigate_webhook_requests_total", '{outcome="duplicate"}') == 2, text
    assert metric_value(text, "phigate_webhook_requests_total", '{outcome="accepted"}') == 0, text


# ---- 3: bad input --------------------------------------------------------------------------------

def send_half_closed(port, data, timeout=5):
    """Send data, shut the writing side, read until the server closes or
    timeout. (bytes read, closed by the server)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    out, closed = b"", False
    try:
        try:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                break
            except ConnectionResetError:
                closed = True
                break
            if not chunk:
                closed = True
                break
            out += chunk
    finally:
        s.close()
    return out, closed


def statuses_in(data):
    """The status codes of every HTTP response in data."""
    out = []
    for part in data.split(b"HTTP/1.1 ")[1:]:
        try:
            out.append(int(part[:3]))
        except ValueError:
            pass
    return out


@pytest.fixture
def badgw(make_gateway, tmp_path, hook_sink):
    folder = str(tmp_path / "wh")
    wh = {"sw": {"scheme": "standard-webhooks", "secrets": [whsec_new()]},
          "small": {"scheme": "standard-webhooks", "secrets": [whsec_new()], "max_body": "1k"},
          "stripe": {"scheme": "stripe", "secrets": ["whsec_" + rand_text(32)]},
          "oura": {"scheme": "oura", "secrets": [rand_text(32)], "verify_token": rand_text(24)},
          "garmin": {"scheme": "unsigned", "secrets": [rand_text(32)]}}
    for name, s in wh.items():
        s["deliver_to"] = hook_sink.url + "/hooks/" + name
    gw = make_gateway(webhook_config(folder, wh, server={"max_body_bytes": 65536}), start=False)
    # a store source whose only unretired secret is past its not_after
    old, late = whsec_new(), whsec_new()
    r = gw.cli("webhooks", "source", "add", "expired", "--scheme", "standard-webhooks",
               "--secret-file", write_secret_file(folder, "expired.0", old), "--deliver-to",
               hook_sink.url + "/hooks/expired", "--store", gw.store)
    assert r.rc == 0, r
    r = gw.cli("webhooks", "source", "add-secret", "expired", "--secret-file",
               write_secret_file(folder, "expired.1", late), "--not-after", "2020-01-01T00:00:00Z",
               "--store", gw.store)
    assert r.rc == 0, r
    r = gw.cli("webhooks", "source", "retire-secret", "expired", "--index", "0",
               "--store", gw.store)
    assert r.rc == 0, r
    wh["expired"] = {"scheme": "standard-webhooks", "secrets": [late], "old": old}
    gw.start()
    gw.wh = wh
    return gw


def bad_input_cases(gw):
    """(label, source, headers (list of pairs), body, status, code). Each is a
    refusal from the webhook route (JSON, audited as webhook.refused)."""
    S, K = sec(gw, "sw"), sec(gw, "stripe")
    t = now_s()
    body = b'{"type":"x","n":1}'
    cases = []

    def sw(label, sig=None, mid=None, ts=None, status=400, code="malformed_header", drop=(),
           extra=(), src="sw", b=body, secret=None):
        m = mid or msg_id()
        tt = t if ts is None else ts
        h = [("webhook-id", m), ("webhook-timestamp", str(tt)),
             ("webhook-signature", sig if sig is not None else
              sw_signature(secret or S, m, tt, b))]
        h = [kv for kv in h if kv[0] not in drop] + list(extra)
        cases.append((label, src, h, b, status, code))

    m = msg_id()
    good = sw_signature(S, m, t, body)
    last = B64.index(good[-2])
    assert good.endswith("=") and last % 4 == 0
    sw("non-canonical base64 (unused bits set)", good[:-2] + B64[last + 1] + "=", mid=m)
    sw("truncated signature", good[:30], mid=m)
    sw("signature without padding", good[:-1], mid=m)
    sw("'v1,' alone", "v1,", mid=m)
    sw("the first 8 characters of a valid header", good[:8], mid=m)
    sw("an entry without a comma", "v1" + good[3:], mid=m, status=400)
    sw("decoy signatures only", DECOY + " v2," + DECOY[3:], mid=m, status=401,
       code="bad_signature")
    sw("the official wrong vector", "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OA=", mid=m,
       status=401, code="bad_signature")
    sw("v2 only", "v2," + good[3:], mid=m, status=401, code="no_signature")
    sw("v1a only (no whpk_ key)", "v1a," + base64.b64encode(b"\x01" * 64).decode(), mid=m,
       status=401, code="no_signature")
    sw("signature of another body", good, mid=m, b=body + b" ", status=401, code="bad_signature")
    sw("signed with another secret", secret=whsec_new(), status=401, code="bad_signature")
    sw("no signature header", drop=("webhook-signature",), status=401, code="no_signature")
    sw("no id header", drop=("webhook-id",), status=400, code="missing_header")
    sw("no timestamp header", drop=("webhook-timestamp",), status=400, code="missing_header")
    sw("a '.' in the id", mid="msg.with.dots")
    for bad_ts in ("+%d" % t, "0%d" % t, "%dabc" % t, "%d.0" % t, "-%d" % t, "1e9", ""):
        mm = msg_id()
        cases.append(("timestamp %r" % bad_ts, "sw",
                      [("webhook-id", mm), ("webhook-timestamp", bad_ts),
                       ("webhook-signature", sw_signature(S, mm, bad_ts, body))], body, 400,
                      "malformed_header"))
    for delta in (-100000, 100000):  # (+-301: at_second_start, in the test)
        sw("timestamp %+d s" % delta, ts=t + delta, status=401, code="timestamp_outside")
    mm = msg_id()
    cases.append(("repeated signature header", "sw",
                  [("webhook-id", mm), ("webhook-timestamp", str(t)),
                   ("webhook-signature", sw_signature(S, mm, t, body)),
                   ("webhook-signature", sw_signature(S, mm, t, body))], body, 400,
                  "repeated_header"))
    cases.append(("repeated id header", "sw",
                  [("webhook-id", mm), ("webhook-id", mm), ("webhook-timestamp", str(t)),
                   ("webhook-signature", sw_signature(S, mm, t, body))], body, 400,
                  "repeated_header"))
    sw("signature header over 4096 bytes", good + " v9," + "A" * 5000, mid=m,
       code="header_too_long")
    sw("17 signatures", " ".join([DECOY] * 17), status=400, code="too_many_signatures")
    sw("no valid secret", src="expired", secret=gw.wh["expired"]["secrets"][0], status=401,
       code="no_secret")
    sw("body over the source's max_body", src="small", secret=sec(gw, "small"),
       b=b"x" * 1025, status=413, code="too_large")

    # Stripe
    def st(label, header, b=body, status=400, code="malformed_header"):
        cases.append((label, "stripe", [("Stripe-Signature", header)], b, status, code))
    v1 = stripe_v1(K, t, body)
    st("stripe: a space after the comma", "t=%d, v1=%s" % (t, v1))
    st("stripe: upper-case hex", "t=%d,v1=%s" % (t, v1.upper()))
    st("stripe: duplicate t", "t=%d,t=%d,v1=%s" % (t, t, v1))
    st("stripe: junk after the timestamp", "t=%dabc,v1=%s" % (t, stripe_v1(K, "%dabc" % t, body)))
    st("stripe: leading + in t", "t=+%d,v1=%s" % (t, stripe_v1(K, "+%d" % t, body)))
    st("stripe: leading space in t", "t= %d,v1=%s" % (t, stripe_v1(K, " %d" % t, body)))
    st("stripe: trailing comma", "t=%d,v1=%s," % (t, v1))
    st("stripe: a bad v1 next to a good one", "t=%d,v1=zz,v1=%s" % (t, v1))
    st("stripe: short v1", "t=%d,v1=%s" % (t, v1[:40]))
    st("stripe: no t", "v1=%s" % v1, status=400, code="malformed_header")
    st("stripe: v0 only", "t=%d,v0=%s" % (t, v1), status=401, code="no_signature")
    st("stripe: wrong v1", "t=%d,v1=%s" % (t, stripe_v1(K, t, body + b"x")), status=401,
       code="bad_signature")
    for delta in (-100000, 100000):
        st("stripe: t %+d s" % delta,
           "t=%d,v1=%s" % (t + delta, stripe_v1(K, t + delta, body)), status=401,
           code="timestamp_outside")
    cases.append(("stripe: repeated header", "stripe", [("Stripe-Signature", "t=%d,v1=%s" % (
        t, v1))] * 2, body, 400, "repeated_header"))
    cases.append(("stripe: no header", "stripe", [], body, 401, "no_signature"))
    # Oura
    oh = oura_headers(sec(gw, "oura"), t, body)
    cases.append(("oura: truncated signature", "oura",
                  [("x-oura-signature", oh["x-oura-signature"][:60]),
                   ("x-oura-timestamp", oh["x-oura-timestamp"])], body, 400, "malformed_header"))
    cases.append(("oura: mixed-case hex", "oura",
                  [("x-oura-signature", oh["x-oura-signature"][:10].lower()
                    + oh["x-oura-signature"][10:]),
                   ("x-oura-timestamp", oh["x-oura-timestamp"])], body, 400, "malformed_header"))
    cases.append(("oura: no timestamp", "oura", [("x-oura-signature", oh["x-oura-signature"])],
                  body, 400, "missing_header"))
    return cases


def test_bad_input_refused_with_json_errors_and_audited(badgw, hook_sink):
    gw = badgw
    cases = bad_input_cases(gw)
    mismatches, seen = [], []
    for label, src, headers, body, status, code in cases:
        r = post_webhook(gw, src, headers, body)
        seen.append((label, r))
        if r.status != status or not r.headers.get("content-type", "").startswith(
                "application/json") or r.json().get("error", {}).get("code") != code:
            mismatches.append("%s: want %d %s, got %d %r" % (label, status, code, r.status,
                                                             r.body[:200]))
            continue
        assert_error(r, status, code)
    assert not mismatches, "\n".join(mismatches)
    assert gw.alive()

    # window boundaries, inclusive: exactly 300 s either way verifies
    S = sec(gw, "sw")
    body = b'{"edge":1}'
    for delta in (-300, 300):
        def edge(s):
            m = msg_id()
            return post_webhook(gw, "sw", sw_headers(S, m, s + delta, body), body)
        assert_accepted(at_second_start(edge))
    for delta in (-301, 301):
        def edge(s):
            m = msg_id()
            return post_webhook(gw, "sw", sw_headers(S, m, s + delta, body), body)
        assert_error(at_second_start(edge), 401, "timestamp_outside")
    # Stripe's window is two-sided too (its own libraries check only the past)
    K = sec(gw, "stripe")
    for delta, ok in ((-300, True), (300, True), (-301, False), (301, False)):
        def sedge(s):
            return post_webhook(gw, "stripe", stripe_headers(K, s + delta, body), body)
        r = at_second_start(sedge)
        if ok:
            assert_accepted(r)
        else:
            assert_error(r, 401, "timestamp_outside")
    # positive controls: a decoy next to the good one; lower-case Oura hex
    t, m = now_s(), msg_id()
    h = sw_headers(S, m, t, body)
    h["webhook-signature"] = DECOY + " v2,xyz " + h["webhook-signature"]
    assert_accepted(post_webhook(gw, "sw", h, body))
    oh = oura_headers(sec(gw, "oura"), t, body)
    oh["x-oura-signature"] = oh["x-oura-signature"].lower()
    assert_accepted(post_webhook(gw, "oura", oh, body))
    # 1024 bytes pass the 1k cap
    b = b"y" * 1024
    assert_accepted(post_webhook(gw, "small", sw_headers(sec(gw, "small"), msg_id(), t, b), b))

    # where a webhook cannot go
    route = []
    for path, method in (("/webhooks/nosuch", "POST"), ("/webhooks/Bad!Name", "POST"),
                         ("/webhooks/" + "a" * 65, "POST"), ("/webhooks/sw/extra", "POST"),
                         ("/webhooks/garmin", "POST"),
                         ("/webhooks/garmin/" + rand_text(32), "POST"),
                         ("/webhooks/garmin/" + sec(gw, "garmin") + "/x", "POST"),
                         ("/webhooks/garmin/" + sec(gw, "garmin")[:-1], "POST")):
        r = http_request(gw.port, method, path, {"Content-Type": "application/json"}, body)
        route.append((path, r))
        seen.append((path, r))
    for path, r in route:
        assert_error(r, 404, "unknown_source")
    for method in ("GET", "PUT", "DELETE", "PATCH"):
        r = http_request(gw.port, method, "/webhooks/sw", {}, body if method != "GET" else None)
        seen.append((method, r))
        assert_error(r, 405, "method_not_allowed")
    r = http_request(gw.port, "GET", "/webhooks/stripe", {}, None)
    seen.append(("GET stripe", r))
    assert_error(r, 405, "method_not_allowed")
    # counted: every refusal so far, and the four refused edges
    n_refused = sum(1 for _, r in seen if r.status >= 400) + 4
    assert wh_count(gw, "refused") == n_refused
    assert wh_count(gw, "accepted") == 7

    # over the server's max_body_bytes: libevent's 413, as JSON
    big = b"z" * 70000
    r = post_webhook(gw, "sw", sw_headers(S, msg_id(), t, big), big)
    assert r.status == 413, r
    assert_error(r, 413)

    # a Content-Length that lies: larger than what is sent, then the write side closed
    m = msg_id()
    hs = sw_headers(S, m, t, body)
    head = ("POST /webhooks/sw HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + "".join("%s: %s\r\n" % kv for kv in hs.items()))
    data, closed = send_half_closed(gw.port, (head + "Content-Length: 500\r\n\r\n").encode()
                                    + body)
    assert all(400 <= s < 500 for s in statuses_in(data)), data[:400]
    assert gw.alive() and gw.get("/healthz").status == 200
    # smaller: the rest of the body is read as the next request
    data, closed = send_half_closed(gw.port, (head + "Content-Length: 5\r\n\r\n").encode() + body)
    got = statuses_in(data)
    assert got and all(400 <= s < 500 for s in got), data[:600]
    status, headers, rbody = parse_raw_response(data)
    assert json.loads(rbody)["error"]["code"], data[:600]
    # a body of 0 bytes declared, none sent
    data, closed = send_half_closed(gw.port, (head + "Content-Length: 0\r\n\r\n").encode())
    assert all(400 <= s < 500 for s in statuses_in(data)), data[:400]
    # a chunked body that ends early
    data, closed = send_half_closed(gw.port, (head + "Transfer-Encoding: chunked\r\n\r\n"
                                              "ffff\r\n").encode() + body)
    assert all(400 <= s < 500 for s in statuses_in(data)), data[:400]
    assert gw.alive() and gw.get("/healthz").status == 200

    # nothing of it was stored or delivered
    r = gw.get("/admin/webhooks/events", key=gw.admin_key)
    assert r.status == 200 and len(r.json()["events"]) == 7, r  # the seven accepted above
    # every refusal audited with its reason
    by_rid = audit_by_rid(gw.audit_all())
    for label, r in seen:
        if r.status < 400:
            continue
        code = r.json()["error"]["code"]
        recs = [x for x in by_rid.get(r.rid, []) if x["action"] == "webhook.refused"]
        assert len(recs) == 1, (label, by_rid.get(r.rid))
        assert recs[0]["details"]["reason"] == code, (label, recs[0])
        assert recs[0]["resource"].startswith("webhook:"), recs[0]
    assert gw.alive()
    secrets = [s for w in gw.wh.values() for s in w["secrets"]] + [gw.wh["expired"]["old"],
                                                                     gw.wh["oura"]["verify_token"]]
    assert_no_leak(gw, secrets, [r for _, r in seen])
