"""The PHI API's context objects become the canonical context string of
docs/formats.md §15: a ciphertext made over HTTP opens with the CLI under
that string, and one made by the CLI opens over HTTP."""
import json

from e2e_helpers import auth, http_request


def test_api_and_cli_agree_on_the_context_string(gw):
    h = dict(auth(gw.admin_key), **{"Content-Type": "application/json"})
    r = http_request(gw.port, "POST", "/v1/phi/encrypt", h, body=json.dumps(
        {"context": {"user_id": 42, "field": "hrv", "device_9": "ring"}, "plaintext": "48.2"}))
    assert r.status == 200, r
    ct = r.json()["ciphertext"]
    out = gw.cli("phi", "decrypt", "--store", gw.store,
                 "--context", "device_9=ring;field=hrv;user_id=42", input=ct.encode())
    assert out.rc == 0 and out.out == b"48.2", out
    # another member order, and "42" for 42: the same string
    r = http_request(gw.port, "POST", "/v1/phi/decrypt", h, body=json.dumps(
        {"context": {"field": "hrv", "device_9": "ring", "user_id": "42"}, "ciphertext": ct}))
    assert r.status == 200 and r.json()["plaintext"] == "48.2", r
    # made by the CLI, opened over HTTP
    out = gw.cli("phi", "encrypt", "--store", gw.store, "--context", "field=hr;user_id=7",
                 input=b"61")
    assert out.rc == 0, out
    r = http_request(gw.port, "POST", "/v1/phi/decrypt", h, body=json.dumps(
        {"context": {"user_id": 7, "field": "hr"}, "ciphertext": out.out.decode().strip()}))
    assert r.status == 200 and r.json()["plaintext"] == "61", r
