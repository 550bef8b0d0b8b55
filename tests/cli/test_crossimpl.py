"""phigate against an independent Python implementation of docs/formats.md."""
import base64
import json
import math
import os

import pytest
from cryptography.fernet import Fernet
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

import phiref
from conftest import DOC_MASTER_KEY, DOC_MASTER_KEY_2, assert_failed

# docs/formats.md, section 6.1 / appendix
DOC_KEYRING = """{
  "format": "phigate-keyring",
  "version": 1,
  "primary": "k7h2p9d4w6e",
  "keys": [
    {
      "kid": "k1b5n8c3t0r",
      "state": "destroyed",
      "created": "2026-01-05T09:00:00Z"
    },
    {
      "kid": "kq3v8x1m0za",
      "state": "decrypt-only",
      "created": "2026-06-01T12:00:00Z",
      "wrapped": "gAAAAABqHXRAoKGio6SlpqeoqaqrrK2urzio_Qi7jQ6fwAihy-MwgIlGm-YUdqPeWOoYSSpH-HyVxONtbyUeWJVJSO1bEXFVTU2GwWTwM2aDKFIIkdRLufjAeAPWzhz2JQXSXl50U24Q"
    },
    {
      "kid": "k7h2p9d4w6e",
      "state": "active",
      "created": "2026-11-27T18:50:00Z",
      "wrapped": "gAAAAABrCdDYsLGys7S1tre4ubq7vL2-v0W3fJuFuRmGXqa2ezCVtrtNYa8dis4e2m0_0RPDKBIhx5_ZD-KnSOWyvJ6mJpOofjnd7kwBCshNoDOr7mhzfVpsbRTXXc0MO1U2TU1x-aU6"
    }
  ]
}
"""
DOC_DEK_Q = bytes(range(0x20, 0x40))
DOC_DEK_7 = bytes(range(0x40, 0x60))
DOC_CT_HRV = "phi1.k7h2p9d4w6e.AAECAwQFBgcICQoLnmdRGCMEQQuY1ldFcFZ6qBG6HeA"
DOC_CT_NOTES = ("phi1.k7h2p9d4w6e.DA0ODxAREhMUFRYXHDxgqFlprvtEfv4BBlwpts5QtwfCGMHxnuFlF7HWbl"
                "w6J0mgzFIHj4OOvlVA8L8zCgqbF24")


def kr(path):
    return ["--keyring", str(path)]


def python_keyring(path, mk, nkeys_destroyed=1, nkeys_old=1):
    """Write a keyring entirely in Python: returns (primary, {kid: DEK}, destroyed kids)."""
    keys, deks, destroyed = [], {}, []
    for _ in range(nkeys_destroyed):
        kid = phiref.new_kid()
        keys.append({"kid": kid, "state": "destroyed", "created": "2025-02-03T04:05:06Z"})
        destroyed.append(kid)
    for i in range(nkeys_old + 1):
        kid = phiref.new_kid()
        dek = os.urandom(32)
        deks[kid] = dek
        keys.append({"kid": kid, "state": "active" if i == nkeys_old else "decrypt-only",
                     "created": "2026-0%d-01T12:00:00Z" % (i + 1),
                     "wrapped": phiref.wrap_dek(mk, dek)})
    primary = keys[-1]["kid"]
    path.write_text(phiref.keyring_text(primary, keys))
    os.chmod(path, 0o600)
    return primary, deks, destroyed


# ---- the reference implementation reproduces the documented vectors -----------------

def test_reference_matches_documented_vectors():
    # 4.4 / 6.1: fixed IVs and times give exactly the documented tokens
    tok7 = phiref.wrap_dek(DOC_MASTER_KEY, DOC_DEK_7, iv=bytes(range(0xb0, 0xc0)), when=1795805400)
    tokq = phiref.wrap_dek(DOC_MASTER_KEY, DOC_DEK_Q, iv=bytes(range(0xa0, 0xb0)), when=1780315200)
    doc = json.loads(DOC_KEYRING)
    assert tok7 == doc["keys"][2]["wrapped"]
    assert tokq == doc["keys"][1]["wrapped"]
    assert phiref.keyring_text(doc["primary"], doc["keys"]) == DOC_KEYRING
    # 5.6 and 7.7
    assert phiref.field_key(DOC_DEK_7, b"user=42;field=hrv").hex() == \
        "2e1b7f6f5d0c5f9850d4f5fcb2f6f095181c4ac0e0611a3787352abaaaa53b9f"
    assert phiref.phi1_encrypt("k7h2p9d4w6e", DOC_DEK_7, b"user=42;field=hrv", b"58.0",
                               nonce=bytes(range(12))) == DOC_CT_HRV
    assert phiref.phi1_encrypt("k7h2p9d4w6e", DOC_DEK_7, b"user=42;field=notes",
                               b'{"tags":["rest","caf\\u00e9"],"n":1E2}',
                               nonce=bytes(range(12, 24))) == DOC_CT_NOTES


# ---- (a) phigate encrypts, Python decrypts -------------------------------------------

PLAINTEXTS = [
    b"58.0",
    b"",
    bytes(range(256)),
    "caf\u00e9 \u2764 \U0001F600".encode("utf-8"),
    os.urandom(100_000),
]


@pytest.mark.parametrize("plain", PLAINTEXTS, ids=["number", "empty", "bytes", "unicode", "100k"])
def test_python_decrypts_phigate_ciphertext(phigate, mk, keyring, plain):
    ctx = "user=42;field=hrv"
    r = phigate("phi", "encrypt", *kr(keyring), "--context", ctx, input=plain, mk=mk)
    assert r.rc == 0, r
    assert r.stdout.endswith("\n") and r.stdout.count("\n") == 1
    text = r.stdout[:-1]

    # (a) by hand, following the brief literally
    doc = json.loads(keyring.read_text())
    key = doc["keys"][0]
    dek = Fernet(mk.encode()).decrypt(key["wrapped"].encode())
    assert len(dek) == 32
    prefix, kid, data = text.split(".")
    assert prefix == "phi1" and kid == key["kid"] == doc["primary"]
    raw = base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))
    assert "=" not in data and len(raw) == 12 + len(plain) + 16
    assert len(text) == 6 + len(kid) + math.ceil(4 * (len(plain) + 28) / 3)
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF
    fkey = HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                info=b"phigate/phi/v1\x00" + ctx.encode()).derive(dek)
    assert AESGCM(fkey).decrypt(raw[:12], raw[12:], ("phi1." + kid).encode()) == plain

    # and with the reference module (strict base64 etc.)
    _, deks, _, _ = phiref.load_keyring(keyring.read_bytes(), [mk])
    assert phiref.phi1_decrypt(deks, ctx.encode(), text) == plain
    with pytest.raises(phiref.PhiAuthError):
        phiref.phi1_decrypt(deks, b"user=43;field=hrv", text)


def test_nonces_are_fresh(phigate, mk, keyring):
    outs = {phigate("phi", "encrypt", *kr(keyring), "--context", "c", input=b"same",
                    mk=mk).stdout for _ in range(5)}
    assert len(outs) == 5
    nonces = {phiref.b64decode_strict(o.strip().split(".")[2], True, False)[:12] for o in outs}
    assert len(nonces) == 5


def test_encrypt_json_output(phigate, mk, keyring):
    r = phigate("phi", "encrypt", *kr(keyring), "--context", "c", "--json", input=b"x", mk=mk)
    assert r.rc == 0
    ct = r.json()["ciphertext"]
    _, deks, _, _ = phiref.load_keyring(keyring.read_bytes(), [mk])
    assert phiref.phi1_decrypt(deks, b"c", ct) == b"x"


# ---- (b) Python encrypts, phigate decrypts -------------------------------------------

@pytest.mark.parametrize("plain", PLAINTEXTS, ids=["number", "empty", "bytes", "unicode", "100k"])
def test_phigate_decrypts_python_ciphertext(phigate, mk, keyring, plain):
    primary, deks, _, _ = phiref.load_keyring(keyring.read_bytes(), [mk])
    ctx = "user=7;field=notes"
    text = phiref.phi1_encrypt(primary, deks[primary], ctx.encode(), plain)
    for suffix in ("", "\n", "\r\n"):
        r = phigate("phi", "decrypt", *kr(keyring), "--context", ctx, input=text + suffix, mk=mk)
        assert r.rc == 0, r
        assert r.out == plain and r.err == b""
    j = phigate("phi", "decrypt", *kr(keyring), "--context", ctx, "--json", input=text, mk=mk)
    assert j.rc == 0, j
    doc = j.json()
    try:
        expected_text = plain.decode("utf-8")
    except UnicodeDecodeError:
        expected_text = None
    if expected_text is not None:
        assert doc == {"plaintext": expected_text}
    else:
        assert set(doc) == {"plaintext_base64"}
        assert base64.b64decode(doc["plaintext_base64"], validate=True) == plain


def test_phigate_rejects_python_ciphertext_with_other_context(phigate, mk, keyring):
    primary, deks, _, _ = phiref.load_keyring(keyring.read_bytes(), [mk])
    text = phiref.phi1_encrypt(primary, deks[primary], b"user=1", b"v")
    r = phigate("phi", "decrypt", *kr(keyring), "--context", "user=2", input=text, mk=mk)
    assert_failed(r, 1)
    assert r.stderr == "phigate: decryption failed\n"


# ---- (c) a keyring written by Python ----------------------------------------------------

def test_phigate_loads_python_keyring(phigate, mk, tmp_path):
    path = tmp_path / "py.json"
    primary, deks, destroyed = python_keyring(path, mk, nkeys_destroyed=1, nkeys_old=2)
    listed = phigate("phi", "keyring", "list", *kr(path), "--json", mk=mk)
    assert listed.rc == 0, listed
    doc = json.loads(path.read_text())
    assert listed.json()["primary"] == primary
    assert [(k["kid"], k["state"], k["created"]) for k in listed.json()["keys"]] == \
        [(k["kid"], k["state"], k["created"]) for k in doc["keys"]]

    # phigate encrypts under the Python primary; Python and phigate decrypt
    r = phigate("phi", "encrypt", *kr(path), "--context", "user=5", input=b"hello", mk=mk)
    assert r.rc == 0, r
    ct = r.stdout.strip()
    assert phiref.phi1_kid(ct) == primary
    assert phiref.phi1_decrypt(deks, b"user=5", ct) == b"hello"
    d = phigate("phi", "decrypt", *kr(path), "--context", "user=5", input=ct, mk=mk)
    assert d.rc == 0 and d.out == b"hello"

    # Python ciphertexts under every decrypt-only key open with phigate
    for kid, dek in deks.items():
        py_ct = phiref.phi1_encrypt(kid, dek, b"user=5", kid.encode())
        d = phigate("phi", "decrypt", *kr(path), "--context", "user=5", input=py_ct, mk=mk)
        assert d.rc == 0 and d.out == kid.encode(), d

    # a ciphertext naming the destroyed kid fails like any other
    py_ct = phiref.phi1_encrypt(destroyed[0], os.urandom(32), b"user=5", b"gone")
    d = phigate("phi", "decrypt", *kr(path), "--context", "user=5", input=py_ct, mk=mk)
    assert_failed(d, 1)
    assert d.stderr == "phigate: decryption failed\n"


def test_phigate_rotates_python_keyring(phigate, mk, tmp_path):
    path = tmp_path / "py.json"
    primary, deks, destroyed = python_keyring(path, mk)
    before = json.loads(path.read_text())
    r = phigate("phi", "keyring", "rotate", *kr(path), "--json", mk=mk)
    assert r.rc == 0, r
    after = json.loads(path.read_text())
    assert after["keys"][:-1] == [dict(k, state="decrypt-only") if k["kid"] == primary else k
                                  for k in before["keys"]]
    new_primary, deks2, states, _ = phiref.load_keyring(path.read_bytes(), [mk])
    assert new_primary == r.json()["primary"] and states[primary] == "decrypt-only"
    for kid, dek in deks.items():
        assert deks2[kid] == dek


def test_documented_keyring_and_ciphertexts(phigate, tmp_path):
    path = tmp_path / "doc.json"
    path.write_text(DOC_KEYRING)
    r = phigate("phi", "decrypt", *kr(path), "--context", "user=42;field=hrv",
                input=DOC_CT_HRV + "\n", mk=DOC_MASTER_KEY)
    assert r.rc == 0, r
    assert r.out == b"58.0"
    r = phigate("phi", "decrypt", *kr(path), "--context", "user=42;field=notes",
                input=DOC_CT_NOTES, mk=DOC_MASTER_KEY)
    assert r.rc == 0 and r.out == b'{"tags":["rest","caf\\u00e9"],"n":1E2}', r
    # 5.6: another user's context fails
    r = phigate("phi", "decrypt", *kr(path), "--context", "user=43;field=hrv",
                input=DOC_CT_HRV, mk=DOC_MASTER_KEY)
    assert_failed(r, 1)
    assert r.stderr == "phigate: decryption failed\n"
    # the master key list of 3.2 (new first) opens it too
    r = phigate("phi", "decrypt", *kr(path), "--context", "user=42;field=hrv",
                input=DOC_CT_HRV, mk=DOC_MASTER_KEY_2 + ", " + DOC_MASTER_KEY)
    assert r.rc == 0 and r.out == b"58.0", r
    # decrypt-only key kq3v8x1m0za: a Python ciphertext under it opens
    ct = phiref.phi1_encrypt("kq3v8x1m0za", DOC_DEK_Q, b"ctx", b"old data")
    r = phigate("phi", "decrypt", *kr(path), "--context", "ctx", input=ct, mk=DOC_MASTER_KEY)
    assert r.rc == 0 and r.out == b"old data", r


def test_documented_jsonl_example(phigate, tmp_path):
    path = tmp_path / "doc.json"
    path.write_text(DOC_KEYRING)
    enc_line = ('{"user_id":42,"ts":"2026-11-27T18:50:00Z","hrv":"%s","notes":"%s"}\n'
                % (DOC_CT_HRV, DOC_CT_NOTES))
    expected = ('{"user_id":42,"ts":"2026-11-27T18:50:00Z","hrv":58.0,'
                '"notes":{"tags":["rest","caf\\u00e9"],"n":1E2}}\n')
    r = phigate("phi", "decrypt-jsonl", *kr(path), "--fields", "hrv,notes",
                "--context", "user={user_id};field={field}", "--no-progress",
                input=enc_line, mk=DOC_MASTER_KEY)
    assert r.rc == 0, r
    assert r.stdout == expected


# ---- (d) encrypt-jsonl, field by field in Python ----------------------------------------

JSONL_VALUES = [
    58.0, 61, -3, 0, 12345678901234567890, 1e100, 1.5e-7, "text", "caf\u00e9 \u2764",
    "quote \" backslash \\ tab \t nl \n ctrl \u0001", None, True, False, [], {},
    [1, "two", None, [3.25], {"k": "v"}], {"tags": ["rest"], "n": {"deep": [True, False]}},
]


def test_python_decrypts_encrypt_jsonl(phigate, mk, keyring):
    fields = ["hrv", "notes", "misc"]
    lines, records = [], []
    for i, v in enumerate(JSONL_VALUES):
        rec = {"user_id": i, "org": "acme" if i % 2 else "o\u00e9", "hrv": v,
               "notes": {"i": i, "v": v}, "misc": [v], "keep": "k%d" % i}
        records.append(rec)
        lines.append(json.dumps(rec, separators=(",", ":"), ensure_ascii=bool(i % 2)))
    template = "{org}/u={user_id}/{field}"
    r = phigate("phi", "encrypt-jsonl", *kr(keyring), "--fields", ",".join(fields),
                "--context", template, "--no-progress", input="\n".join(lines) + "\n", mk=mk)
    assert r.rc == 0, r
    out_lines = r.stdout.split("\n")
    assert out_lines[-1] == ""
    out_lines = out_lines[:-1]
    assert len(out_lines) == len(lines)
    _, deks, _, _ = phiref.load_keyring(keyring.read_bytes(), [mk])
    for i, (rec, out) in enumerate(zip(records, out_lines)):
        enc = json.loads(out)
        assert list(enc) == list(rec)
        for name in rec:
            if name not in fields:
                assert enc[name] == rec[name]
                continue
            ctx = phiref.expand_template(template, fields, rec, name)
            plain = phiref.phi1_decrypt(deks, ctx, enc[name])
            # the plaintext is the compact JSON text of the value as it was written
            # (the line itself was written by json.dumps with these settings)
            assert plain == json.dumps(rec[name], separators=(",", ":"),
                                       ensure_ascii=bool(i % 2)).encode("utf-8")
            assert json.loads(plain) == rec[name]
            # bound to its record and field: another field's context fails
            other = phiref.expand_template(template, fields, rec, "x" + name)
            with pytest.raises(phiref.PhiAuthError):
                phiref.phi1_decrypt(deks, other, enc[name])


def test_encrypt_jsonl_plaintext_is_compact_text(phigate, mk, keyring):
    line = '{"user_id": "u1", "hrv": [ 1 , 2.50 ,\t"a b" ], "n": 1E2 }'
    r = phigate("phi", "encrypt-jsonl", *kr(keyring), "--fields", "hrv,n",
                "--context", "u={user_id};f={field}", "--no-progress", input=line, mk=mk)
    assert r.rc == 0, r
    enc = json.loads(r.stdout)
    _, deks, _, _ = phiref.load_keyring(keyring.read_bytes(), [mk])
    assert phiref.phi1_decrypt(deks, b"u=u1;f=hrv", enc["hrv"]) == b'[1,2.50,"a b"]'
    assert phiref.phi1_decrypt(deks, b"u=u1;f=n", enc["n"]) == b"1E2"


def test_phigate_decrypt_jsonl_of_python_lines(phigate, mk, keyring):
    primary, deks, _, _ = phiref.load_keyring(keyring.read_bytes(), [mk])
    originals, encrypted = [], []
    for i, v in enumerate(JSONL_VALUES):
        compact = phiref.compact_json(v)
        ctx = ("user=%d;field=hrv" % i).encode()
        ct = phiref.phi1_encrypt(primary, deks[primary], ctx, compact.encode("utf-8"))
        originals.append('{"user_id":%d,"hrv":%s,"x":1}' % (i, compact))
        encrypted.append('{"user_id":%d,"hrv":"%s","x":1}' % (i, ct))
    r = phigate("phi", "decrypt-jsonl", *kr(keyring), "--fields", "hrv",
                "--context", "user={user_id};field={field}", "--no-progress",
                input="\n".join(encrypted) + "\n", mk=mk)
    assert r.rc == 0, r
    assert r.stdout == "\n".join(originals) + "\n"


def test_documented_jsonl_example_verbatim(phigate, tmp_path):
    """7.7 as written in the docs: spacing of the other members is kept."""
    path = tmp_path / "doc.json"
    path.write_text(DOC_KEYRING)
    enc_line = ('{"user_id": 42, "ts": "2026-11-27T18:50:00Z", "hrv": "%s", "notes": "%s"}\n'
                % (DOC_CT_HRV, DOC_CT_NOTES))
    expected = ('{"user_id": 42, "ts": "2026-11-27T18:50:00Z", "hrv": 58.0, '
                '"notes": {"tags":["rest","caf\\u00e9"],"n":1E2}}\n')
    r = phigate("phi", "decrypt-jsonl", *kr(path), "--fields", "hrv,notes",
                "--context", "user={user_id};field={field}", "--no-progress",
                input=enc_line, mk=DOC_MASTER_KEY)
    assert r.rc == 0, r
    assert r.stdout == expected
    # and encrypt-jsonl of the documented input gives that shape, openable in Python
    src = ('{"user_id": 42, "ts": "2026-11-27T18:50:00Z", "hrv": 58.0, '
           '"notes": {"tags": ["rest", "caf\\u00e9"], "n": 1E2}}\n')
    e = phigate("phi", "encrypt-jsonl", *kr(path), "--fields", "hrv,notes",
                "--context", "user={user_id};field={field}", "--no-progress",
                input=src, mk=DOC_MASTER_KEY)
    assert e.rc == 0, e
    rec = json.loads(e.stdout)
    assert e.stdout == ('{"user_id": 42, "ts": "2026-11-27T18:50:00Z", "hrv": "%s", "notes": "%s"}\n'
                        % (rec["hrv"], rec["notes"]))
    deks = {"k7h2p9d4w6e": DOC_DEK_7}
    assert phiref.phi1_decrypt(deks, b"user=42;field=hrv", rec["hrv"]) == b"58.0"
    assert phiref.phi1_decrypt(deks, b"user=42;field=notes", rec["notes"]) == \
        b'{"tags":["rest","caf\\u00e9"],"n":1E2}'
