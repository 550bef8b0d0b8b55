"""Standard Webhooks interop with the npm reference library (issue 7):
`standardwebhooks` 1.1.1, installed from the npm registry by the session
fixture npm_dir (conftest.py), driven through tests/e2e/npm/sign.js.

- The npm library signs; phigate verifies, across a secret rotation done with
  the CLI on the store (add-secret, then retire-secret), picked up on SIGHUP
  and by the gateway's polling of the store.
- phigate signs (phg_webhook_sign of libphigate.so, next to the phigate
  binary: the CLI has no signing command); the npm library verifies.

Only canonical inputs go to the npm library (research/webhooks.md 2.2:
valid UTF-8 bodies, digits-only timestamps, padded base64).
"""
import json
import os
import signal
import subprocess
import time

from e2e_helpers import (assert_accepted, assert_error, assert_no_leak, phigate_bin,
                         post_webhook, sw_headers, wait_for, webhook_config, whsec_new,
                         write_secret_file)

SW_A = ("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330,
        '{"test": 2432232314}', "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=")


def msg_id():
    return "msg_" + os.urandom(10).hex()


# ---- phigate's own signer, through the shared library --------------------------------------------

_SIGN_PY = r"""
import ctypes, json, sys
lib = ctypes.CDLL(sys.argv[1])
f = lib.phg_webhook_sign
f.restype = ctypes.c_int
f.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_int64,
              ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_size_t,
              ctypes.POINTER(ctypes.c_size_t), ctypes.c_char_p, ctypes.c_size_t]
out = []
for op in json.load(sys.stdin):
    s, m, b = op["secret"].encode(), op["id"].encode(), op["payload"].encode()
    buf = ctypes.create_string_buffer(256)
    n = ctypes.c_size_t(0)
    err = ctypes.create_string_buffer(256)
    rc = f(s, len(s), m, len(m), op["timestamp"], b, len(b), buf, 256, ctypes.byref(n), err, 256)
    out.append({"rc": rc, "sig": buf.raw[:n.value].decode(), "err": err.value.decode()})
print(json.dumps(out))
"""


def phigate_sign(ops):
    """phg_webhook_sign for each {"secret","id","timestamp","payload"}: the
    library built with the phigate binary, called through ctypes in a child
    /usr/bin/python3 (with the sanitizer runtime preloaded in an ASan build)."""
    lib = os.path.join(os.path.dirname(os.path.abspath(phigate_bin())), "libphigate.so")
    assert os.path.isfile(lib), "no libphigate.so next to the phigate binary: %s" % lib
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    cmd = ["/usr/bin/python3", "-c", _SIGN_PY, lib]
    p = subprocess.run(cmd, input=json.dumps(ops).encode(), stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, env=env, timeout=60)
    if p.returncode != 0 and b"ASan runtime does not come first" in p.stderr:
        asan = subprocess.run(["gcc", "-print-file-name=libasan.so"], stdout=subprocess.PIPE,
                              timeout=30).stdout.decode().strip()
        env.update(LD_PRELOAD=asan, ASAN_OPTIONS="detect_leaks=0")
        p = subprocess.run(cmd, input=json.dumps(ops).encode(), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, env=env, timeout=60)
    assert p.returncode == 0, p.stderr.decode("utf-8", "replace")[-2000:]
    out = json.loads(p.stdout.decode())
    assert all(o["rc"] == 0 for o in out), out
    return [o["sig"] for o in out]


# ---- the tests -----------------------------------------------------------------------------------

def test_npm_library_is_the_pinned_one_and_matches_the_official_vector(node_signer):
    sec, mid, ts, body, want = SW_A
    out = node_signer.run([{"op": "version"},
                           {"op": "sign", "secret": sec, "id": mid, "timestamp": ts,
                            "payload": body}])
    assert out[0] == {"version": "1.1.1"}, out
    assert out[1] == {"webhook-id": mid, "webhook-timestamp": str(ts),
                      "webhook-signature": want}, out
    assert node_signer.verify(sec, out[1], body, ts + 300) == {"ok": True}
    assert node_signer.verify(sec, out[1], body, ts + 301)["ok"] is False


def npm_headers(node_signer, secrets, mid, ts, payload):
    """Headers of one message signed by the npm library with each secret (one
    Webhook instance per secret), the entries joined with a space."""
    ops = [{"op": "sign", "secret": s, "id": mid, "timestamp": ts, "payload": payload}
           for s in secrets]
    outs = node_signer.run(ops)
    h = dict(outs[0])
    h["webhook-signature"] = " ".join(o["webhook-signature"] for o in outs)
    return h


def test_npm_signed_webhooks_verified_across_a_secret_rotation(make_gateway, tmp_path, hook_sink,
                                                               node_signer):
    folder = str(tmp_path / "wh")
    a, b = whsec_new(), whsec_new()
    gw = make_gateway(webhook_config(folder, {}), start=False)
    r = gw.cli("webhooks", "source", "add", "rot", "--scheme", "standard-webhooks",
               "--secret-file", write_secret_file(folder, "a", a), "--deliver-to",
               hook_sink.url + "/hooks/rot", "--store", gw.store)
    assert r.rc == 0, r
    gw.start()
    responses = []
    sent = {}  # event id -> (payload, secret index that must have matched)

    def send(secrets, payload=None):
        payload = payload or json.dumps({"type": "invoice.paid", "n": len(sent),
                                         "who": "Zoë"}, ensure_ascii=False)
        mid = msg_id()
        h = npm_headers(node_signer, secrets, mid, int(time.time()), payload)
        r = post_webhook(gw, "rot", h, payload.encode())
        responses.append(r)
        return r, payload

    def accepted(secrets, index):
        r, payload = send(secrets)
        eid = assert_accepted(r)
        sent[eid] = (payload, index, r.rid)
        return eid

    # 1: secret A
    accepted([a], 0)
    r, _ = send([b])
    assert_error(r, 401, "bad_signature")
    # 2: secret B added with the CLI; SIGHUP makes the gateway read the store
    r = gw.cli("webhooks", "source", "add-secret", "rot", "--secret-file",
               write_secret_file(folder, "b", b), "--store", gw.store, "--json")
    assert r.rc == 0 and r.json()["index"] == 1, r
    gw.signal(signal.SIGHUP)

    def b_works():
        r, payload = send([b])
        if r.status == 200:
            sent[assert_accepted(r)] = (payload, 1, r.rid)
            return True
        assert_error(r, 401, "bad_signature")
        return False
    wait_for(b_works, "secret B verifying after SIGHUP", timeout=10, interval=0.2)
    # both signatures in one header (the sender's side of a rotation), either order
    accepted([a, b], 0)
    accepted([b, a], 0)
    accepted([b], 1)
    accepted([a], 0)
    # 3: A retired with the CLI, no signal: the gateway's polling picks it up
    r = gw.cli("webhooks", "source", "retire-secret", "rot", "--index", "0", "--store", gw.store)
    assert r.rc == 0, r

    def a_refused():
        r, payload = send([a])
        if r.status == 401:
            assert_error(r, 401, "bad_signature")
            return True
        sent[assert_accepted(r)] = (payload, 0, r.rid)
        return False
    wait_for(a_refused, "secret A refused after retire-secret (by polling)", timeout=15,
             interval=0.25)
    accepted([b], 1)
    accepted([a, b], 1)
    r, _ = send([a])
    assert_error(r, 401, "bad_signature")

    # every accepted message delivered with its exact body, and audited with
    # the index of the secret that matched
    wait_for(lambda: set(hook_sink.by_event()) >= set(sent), "the deliveries", timeout=15)
    got = hook_sink.by_event()
    for eid, (payload, index, rid) in sent.items():
        assert [q["body"] for q in got[eid]] == [payload.encode()], eid
    recs = {x["details"]["event_id"]: x for x in gw.audit_all()
            if x["action"] == "webhook.accepted"}
    assert set(recs) == set(sent), (set(recs) ^ set(sent))
    for eid, (payload, index, rid) in sent.items():
        assert recs[eid]["details"]["secret_index"] == index, (eid, index, recs[eid])
        assert recs[eid]["request_id"] == rid, recs[eid]
    assert_no_leak(gw, [a, b], responses)


def test_svix_named_headers_from_npm_accepted(make_gateway, tmp_path, hook_sink, node_signer):
    folder = str(tmp_path / "wh")
    s = whsec_new()
    gw = make_gateway(webhook_config(folder, {"svix": {
        "scheme": "standard-webhooks", "secrets": [s], "deliver_to": hook_sink.url + "/h"}}))
    payload = '{"type":"svix.test"}'
    h = npm_headers(node_signer, [s], msg_id(), int(time.time()), payload)
    svix = {k.replace("webhook-", "svix-"): v for k, v in h.items()}
    eid = assert_accepted(post_webhook(gw, "svix", svix, payload.encode()))
    wait_for(lambda: eid in hook_sink.by_event(), "the delivery")
    assert hook_sink.by_event()[eid][0]["h"]["x-phigate-webhook-msg-id"] == h["webhook-id"]


def test_phigate_signatures_verified_by_the_npm_library(node_signer):
    """phg_webhook_sign (phigate's signing helper) -> the npm verify(): single
    signatures and a rotation's two, and the official vector."""
    secrets = [whsec_new(), whsec_new(), SW_A[0]]
    now = int(time.time())
    ops = [{"secret": s, "id": msg_id(), "timestamp": now - i,
            "payload": json.dumps({"i": i, "text": "é ✓"}, ensure_ascii=False)}
           for i, s in enumerate(secrets)]
    ops.append({"secret": SW_A[0], "id": SW_A[1], "timestamp": SW_A[2], "payload": SW_A[3]})
    sigs = phigate_sign(ops)
    assert sigs[-1] == SW_A[4], sigs
    checks = []
    for op, sig in zip(ops, sigs):
        h = {"webhook-id": op["id"], "webhook-timestamp": str(op["timestamp"]),
             "webhook-signature": sig}
        checks.append({"op": "verify", "secret": op["secret"], "headers": h,
                       "payload": op["payload"], "now": op["timestamp"]})
        # the same signature must fail for another body and another secret
        checks.append({"op": "verify", "secret": op["secret"], "headers": h,
                       "payload": op["payload"] + " ", "now": op["timestamp"]})
        checks.append({"op": "verify", "secret": whsec_new(), "headers": h,
                       "payload": op["payload"], "now": op["timestamp"]})
    # a rotation: phigate's two entries joined with a space; each secret verifies
    rot = {"id": msg_id(), "timestamp": now, "payload": '{"rotation":true}'}
    two = phigate_sign([dict(rot, secret=secrets[0]), dict(rot, secret=secrets[1])])
    h = {"webhook-id": rot["id"], "webhook-timestamp": str(now), "webhook-signature": " ".join(two)}
    for s in secrets[:2]:
        checks.append({"op": "verify", "secret": s, "headers": h, "payload": rot["payload"],
                       "now": now})
    out = node_signer.run(checks)
    want = [True, False, False] * len(ops) + [True, True]
    assert [o["ok"] for o in out] == want, out
    # and Python's hmac agrees with both
    assert sw_headers(secrets[0], rot["id"], now, rot["payload"])["webhook-signature"] == two[0]
