"""The APIs phigate answers itself: PHI transit, admin keys, health, metrics."""
import json
import re
import time

from e2e_helpers import assert_error, free_port


def test_phi_encrypt_decrypt_roundtrip_and_ownership(gw):
    ctx = {"user_id": "u1", "field": "hrv"}
    secret = "HRV 42ms, diagnosis: sleep apnea \u00e9\u4e2d"
    r = gw.post_json("/v1/phi/encrypt", {"context": ctx, "plaintext": secret}, key=gw.user_key)
    assert r.status == 200, r
    enc = r.json()
    assert enc["ciphertext"].startswith("phi1." + enc["kid"] + ".")
    assert secret not in r.body.decode()
    # member order does not matter
    r = gw.post_json("/v1/phi/decrypt", {"context": {"field": "hrv", "user_id": "u1"},
                                         "ciphertext": enc["ciphertext"]}, key=gw.user_key)
    assert r.status == 200, r
    assert r.json() == {"plaintext": secret}
    # another context does not open it
    r = gw.post_json("/v1/phi/decrypt", {"context": {"user_id": "u1", "field": "spo2"},
                                         "ciphertext": enc["ciphertext"]}, key=gw.user_key)
    assert_error(r, 400, "decrypt_failed")
    # a user key is limited to its own user id
    r = gw.post_json("/v1/phi/encrypt", {"context": {"user_id": "u2"}, "plaintext": "x"},
                     key=gw.user_key)
    assert_error(r, 403, "forbidden")
    r = gw.post_json("/v1/phi/decrypt", {"context": {"user_id": "u2", "field": "hrv"},
                                         "ciphertext": enc["ciphertext"]}, key=gw.user_key)
    assert_error(r, 403, "forbidden")
    # an admin may use any user's context
    r = gw.post_json("/v1/phi/decrypt", {"context": ctx, "ciphertext": enc["ciphertext"]},
                     key=gw.admin_key)
    assert r.status == 200 and r.json()["plaintext"] == secret, r
    # rewrap gives a new ciphertext of the same text
    r = gw.post_json("/v1/phi/rewrap", {"context": ctx, "ciphertext": enc["ciphertext"]},
                     key=gw.user_key)
    assert r.status == 200, r
    rw = r.json()
    assert rw["ciphertext"] != enc["ciphertext"]
    r = gw.post_json("/v1/phi/decrypt", {"context": ctx, "ciphertext": rw["ciphertext"]},
                     key=gw.user_key)
    assert r.json() == {"plaintext": secret}
    # neither the plaintext nor a ciphertext is in the audit log
    text = json.dumps(gw.audit_all())
    assert secret not in text and "sleep apnea" not in text
    assert enc["ciphertext"] not in text and enc["ciphertext"].split(".")[2][:20] not in text
    assert gw.user_key not in text


def test_phi_batch_with_per_item_errors(gw):
    r = gw.post_json("/v1/phi/encrypt", {"items": [
        {"context": {"user_id": "u1", "f": "a"}, "plaintext": "one"},
        {"context": {"user_id": "u2"}, "plaintext": "not mine"},
        {"context": {"user_id": "u1", "BAD NAME": "x"}, "plaintext": "bad context"},
        {"context": {"user_id": "u1"}},
        "not an object",
        {"context": {"user_id": "u1", "f": "b"}, "plaintext": ""},
    ]}, key=gw.user_key)
    assert r.status == 200, r
    v = r.json()
    items = v["items"]
    assert len(items) == 6 and v["failed"] == 4, v
    assert "ciphertext" in items[0] and "ciphertext" in items[5]
    assert [i.get("error", {}).get("code") for i in items[1:5]] == \
        ["forbidden", "invalid_context", "invalid_request", "invalid_request"], items
    r = gw.post_json("/v1/phi/decrypt", {"items": [
        {"context": {"user_id": "u1", "f": "a"}, "ciphertext": items[0]["ciphertext"]},
        {"context": {"user_id": "u1", "f": "b"}, "ciphertext": items[0]["ciphertext"]},
        {"context": {"user_id": "u1", "f": "b"}, "ciphertext": items[5]["ciphertext"]},
        {"context": {"user_id": "u1"}, "ciphertext": "nope"},
    ]}, key=gw.user_key)
    assert r.status == 200, r
    d = r.json()
    assert d["failed"] == 2
    assert d["items"][0] == {"plaintext": "one"}
    assert d["items"][1]["error"]["code"] == "decrypt_failed"
    assert d["items"][2] == {"plaintext": ""}
    assert d["items"][3]["error"]["code"] == "invalid_ciphertext"
    assert_error(gw.post_json("/v1/phi/encrypt", {"items": []}, key=gw.user_key), 400,
                 "invalid_request")


def test_admin_creates_a_key_that_works_and_revokes_it(gw, upstream):
    r = gw.post_json("/admin/keys", {"role": "user", "user_id": "u77",
                                     "scopes": ["phi:encrypt"], "description": "e2e"},
                     key=gw.admin_key)
    assert r.status == 201, r
    v = r.json()
    key, rec = v["key"], v["record"]
    assert key.startswith("phg_") and rec["id"].startswith("ak_")
    assert rec["user_id"] == "u77" and rec["role"] == "user" and rec["scopes"] == ["phi:encrypt"]
    # the key text is never shown again
    r = gw.get("/admin/keys/" + rec["id"], key=gw.admin_key)
    assert r.status == 200 and key not in r.body.decode(), r
    assert r.json()["state"] == "active"
    deadline = time.monotonic() + 2
    while True:
        r = gw.get("/v1/who", key=key)
        if r.status == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert r.status == 200, r
    hdr = {k.lower(): v for k, v in r.json()["headers"]}
    assert hdr["x-phigate-user-id"] == "u77" and hdr["x-phigate-key-id"] == rec["id"]
    # the creation is audited with the admin as actor, without the key text
    recs = gw.audit_all()
    made = [x for x in recs if x["action"] in ("admin.keys.create", "keys.create")
            and rec["id"] in json.dumps(x)]
    assert made and all(x["actor"]["key_id"] == gw.admin_id for x in made), made
    assert key not in json.dumps(recs)

    r = gw.request("POST", "/admin/keys/%s/revoke" % rec["id"], key=gw.admin_key)
    assert r.status == 200, r
    assert r.json()["state"] == "revoked"
    deadline = time.monotonic() + 2
    while True:
        r = gw.get("/v1/who", key=key)
        if r.status == 401:
            break
        assert r.status == 200, r
        assert time.monotonic() < deadline, "a revoked key still worked after 2 s"
        time.sleep(0.05)
    assert_error(r, 401, "unauthorized")


def test_health_ready_metrics(make_gateway):
    gw = make_gateway()
    r = gw.get("/healthz")
    assert r.status == 200 and r.json() == {"status": "ok"}, r
    r = gw.get("/readyz")
    assert r.status == 200, r
    assert r.json() == {"status": "ready",
                        "checks": {"store": True, "audit": True, "upstream": True}}

    def counter(text, cls, status):
        m = re.search(r'^phigate_http_requests_total\{class="%s",status="%d"\} (\d+)$'
                      % (cls, status), text, re.M)
        return int(m.group(1)) if m else 0

    before = gw.get("/metrics").body.decode()
    for _ in range(7):
        assert gw.get("/v1/m", key=gw.user_key).status == 200
    for _ in range(3):
        assert gw.get("/v1/m").status == 401
    for _ in range(2):
        assert gw.post_json("/v1/phi/encrypt", {"context": {"user_id": "u1"},
                                                "plaintext": "x"},
                            key=gw.user_key).status == 200
    r = gw.get("/metrics")
    assert r.status == 200 and r.headers["content-type"].startswith("text/plain"), r
    text = r.body.decode()
    assert "# TYPE phigate_http_requests_total counter" in text
    assert counter(text, "proxy", 200) - counter(before, "proxy", 200) == 7, text[:2000]
    assert counter(text, "proxy", 401) - counter(before, "proxy", 401) == 3
    assert counter(text, "phi", 200) - counter(before, "phi", 200) == 2
    assert gw.user_key not in text

    down = make_gateway(upstream_url="http://127.0.0.1:%d" % free_port(), name="down")
    r = down.get("/readyz")
    assert r.status == 503, r
    v = r.json()
    assert v["status"] == "not_ready" and v["checks"]["upstream"] is False, v
    assert v["checks"]["store"] is True
    assert down.get("/healthz").status == 200
