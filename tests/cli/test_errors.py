"""Bad input: a clear message on stderr, non-zero exit, nothing on stdout,
no file changed, and never a secret in the message."""
import base64
import json
import os

import pytest

import phiref
from conftest import DOC_MASTER_KEY, assert_failed, file_state

PLAINTEXT = b"PHI-PLAINTEXT-hrv=58.0"


def kr(path):
    return ["--keyring", str(path)]


def std_b64_key_with_plus_slash():
    """32 random bytes whose standard base64 holds '+' or '/' (refused: not url-safe)."""
    while True:
        raw = os.urandom(32)
        text = base64.b64encode(raw).decode()
        if "+" in text or "/" in text:
            return text


def bad_master_keys():
    good = phiref.master_key_text(os.urandom(32))
    good2 = phiref.master_key_text(os.urandom(32))
    bang = good[:10] + "!" + good[11:]
    return {
        "too-short": phiref.master_key_text(os.urandom(32))[:-8] + "=",
        "16-bytes": base64.urlsafe_b64encode(os.urandom(16)).decode(),
        "bad-char": bang,
        "std-base64": std_b64_key_with_plus_slash(),
        "unused-bits": "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh9=",
        "no-padding": good.rstrip("="),
        "inner-space": good[:20] + " " + good[20:],
        "empty": "",
        "empty-item": good + ",," + good2,
        "trailing-comma": good + ",",
        "17-keys": ",".join(phiref.master_key_text(os.urandom(32)) for _ in range(17)),
    }


BAD_KEYS = bad_master_keys()


def assert_no_secret(r, *secrets):
    for s in secrets:
        if not s:
            continue
        for part in [s] + [p.strip() for p in s.split(",") if len(p.strip()) >= 12]:
            assert part not in r.stderr, ("secret leaked", r)
            assert part[:20] not in r.stderr, ("secret leaked", r)
    assert PLAINTEXT.decode() not in r.stderr


@pytest.mark.parametrize("name", sorted(BAD_KEYS))
def test_bad_master_key(phigate, mk, keyring, tmp_path, name):
    bad = BAD_KEYS[name]
    before = file_state(keyring)
    runs = [
        phigate("phi", "encrypt", *kr(keyring), "--context", "c", input=PLAINTEXT, mk=bad),
        phigate("phi", "keyring", "list", *kr(keyring), mk=bad),
        phigate("phi", "keyring", "rotate", *kr(keyring), mk=bad),
        phigate("phi", "keyring", "rewrap", *kr(keyring), mk=bad),
        phigate("phi", "keyring", "init", *kr(tmp_path / "new.json"), mk=bad),
        phigate("phi", "encrypt-jsonl", *kr(keyring), "--fields", "a", "--context", "c",
                input=b'{"a":1}\n', mk=bad),
    ]
    for r in runs:
        assert_failed(r, 1, ["PHI_MASTER_KEY", "not a Fernet key"])
        assert_no_secret(r, bad, mk)
    assert file_state(keyring) == before
    assert not (tmp_path / "new.json").exists()
    # the same text in a key file
    keyfile = tmp_path / "mk.txt"
    keyfile.write_text(bad)
    r = phigate("phi", "keyring", "list", *kr(keyring), env={"PHI_MASTER_KEY_FILE": str(keyfile)})
    assert_failed(r, 1, ["PHI_MASTER_KEY_FILE", "not a Fernet key"])
    assert_no_secret(r, bad)
    r = phigate("phi", "keyring", "list", *kr(keyring), "--master-key-file", keyfile)
    assert_failed(r, 1, "not a Fernet key")
    assert_no_secret(r, bad)


def test_both_env_vars(phigate, mk, keyring, tmp_path):
    keyfile = tmp_path / "mk.txt"
    keyfile.write_text(mk + "\n")
    before = file_state(keyring)
    for args in (["phi", "keyring", "list", *kr(keyring)],
                 ["phi", "keyring", "rotate", *kr(keyring)],
                 ["phi", "keyring", "init", *kr(tmp_path / "n.json")],
                 ["phi", "encrypt", *kr(keyring), "--context", "c"]):
        r = phigate(*args, input=PLAINTEXT, mk=mk, env={"PHI_MASTER_KEY_FILE": str(keyfile)})
        assert_failed(r, 1, ["PHI_MASTER_KEY", "PHI_MASTER_KEY_FILE", "both"])
        assert_no_secret(r, mk)
    # an empty variable counts as set (3.3)
    r = phigate("phi", "keyring", "list", *kr(keyring), mk="",
                env={"PHI_MASTER_KEY_FILE": str(keyfile)})
    assert_failed(r, 1, "both")
    assert file_state(keyring) == before
    assert not (tmp_path / "n.json").exists()


def test_no_master_key(phigate, keyring, tmp_path):
    before = file_state(keyring)
    for args in (["phi", "keyring", "list", *kr(keyring)],
                 ["phi", "keyring", "init", *kr(tmp_path / "n.json")],
                 ["phi", "decrypt", *kr(keyring), "--context", "c"]):
        r = phigate(*args, input=b"phi1.k.x")
        assert_failed(r, 1, ["no master key", "PHI_MASTER_KEY"])
    assert file_state(keyring) == before
    assert not (tmp_path / "n.json").exists()


def test_master_key_file_problems(phigate, mk, keyring, tmp_path):
    r = phigate("phi", "keyring", "list", *kr(keyring),
                env={"PHI_MASTER_KEY_FILE": str(tmp_path / "missing.key")})
    assert_failed(r, 1, ["PHI_MASTER_KEY_FILE", "cannot read"])
    big = tmp_path / "big.key"
    big.write_text(mk + "\n" + " " * 9000)
    r = phigate("phi", "keyring", "list", *kr(keyring), env={"PHI_MASTER_KEY_FILE": str(big)})
    assert_failed(r, 1, "8192")
    assert_no_secret(r, mk)


# ---- keyring files ------------------------------------------------------------------

def corrupt_variants(text):
    doc = json.loads(text)
    w = doc["keys"][0]["wrapped"]
    mid = len(w) // 2
    flipped = w[:mid] + ("A" if w[mid] != "A" else "B") + w[mid + 1:]
    v2 = dict(doc, version=2)
    extra = dict(doc, comment="x")
    two_active = dict(doc, keys=doc["keys"] + [dict(doc["keys"][0], kid="kother")])
    bad_primary = dict(doc, primary="knotthere")
    no_wrapped = dict(doc, keys=[{k: v for k, v in doc["keys"][0].items() if k != "wrapped"}])
    return {
        "not-json": (b"this is not json\n", "corrupt"),
        "empty": (b"", "corrupt"),
        "truncated": (text.encode()[: len(text) // 2], "corrupt"),
        "json-array": (b"[]\n", "corrupt"),
        "version-2": (json.dumps(v2, indent=2).encode(), "corrupt"),
        "unknown-member": (json.dumps(extra, indent=2).encode(), "corrupt"),
        "two-active": (json.dumps(two_active, indent=2).encode(), "corrupt"),
        "unknown-primary": (json.dumps(bad_primary, indent=2).encode(), "corrupt"),
        "active-without-wrapped": (json.dumps(no_wrapped, indent=2).encode(), "corrupt"),
        "modified-token": (text.replace(w, flipped).encode(), "none of the master keys"),
    }


@pytest.fixture
def keyring_text(keyring):
    return keyring.read_text()


@pytest.mark.parametrize("variant", ["not-json", "empty", "truncated", "json-array", "version-2",
                                     "unknown-member", "two-active", "unknown-primary",
                                     "active-without-wrapped", "modified-token"])
def test_bad_keyring_file(phigate, mk, keyring, keyring_text, variant):
    data, message = corrupt_variants(keyring_text)[variant]
    keyring.write_bytes(data)
    os.chmod(keyring, 0o600)
    before = file_state(keyring)
    old_kid = json.loads(keyring_text)["primary"]
    runs = [
        phigate("phi", "encrypt", *kr(keyring), "--context", "c", input=PLAINTEXT, mk=mk),
        phigate("phi", "decrypt", *kr(keyring), "--context", "c", input=b"phi1.k.AAAA", mk=mk),
        phigate("phi", "keyring", "list", *kr(keyring), mk=mk),
        phigate("phi", "keyring", "rotate", *kr(keyring), mk=mk),
        phigate("phi", "keyring", "rewrap", *kr(keyring), mk=mk),
        phigate("phi", "keyring", "destroy", *kr(keyring), "--kid", old_kid, mk=mk),
        phigate("phi", "encrypt-jsonl", *kr(keyring), "--fields", "a", "--context", "c",
                input=b'{"a":1}\n', mk=mk),
    ]
    for r in runs:
        assert_failed(r, 1, [str(keyring), message])
        assert_no_secret(r, mk)
        assert json.loads(keyring_text)["keys"][0]["wrapped"][8:40] not in r.stderr
    assert file_state(keyring) == before


def test_keyring_missing(phigate, mk, tmp_path):
    path = tmp_path / "nope.json"
    for args in (["phi", "encrypt", *kr(path), "--context", "c"],
                 ["phi", "keyring", "list", *kr(path)],
                 ["phi", "keyring", "rotate", *kr(path)]):
        r = phigate(*args, input=PLAINTEXT, mk=mk)
        assert_failed(r, 1, [str(path), "no such file"])
    assert not path.exists()


def test_keyring_is_a_directory(phigate, mk, tmp_path):
    r = phigate("phi", "keyring", "list", *kr(tmp_path), mk=mk)
    assert_failed(r, 1, str(tmp_path))


def test_wrong_master_key(phigate, mk, keyring):
    other = phiref.master_key_text(os.urandom(32))
    before = file_state(keyring)
    for args in (["phi", "encrypt", *kr(keyring), "--context", "c"],
                 ["phi", "keyring", "list", *kr(keyring)],
                 ["phi", "keyring", "rotate", *kr(keyring)],
                 ["phi", "keyring", "rewrap", *kr(keyring)]):
        r = phigate(*args, input=PLAINTEXT, mk=other)
        assert_failed(r, 1, "none of the master keys")
        assert_no_secret(r, other, mk)
    # a rewrap with NEW,WRONG must not have rewritten anything either
    r = phigate("phi", "keyring", "rewrap", *kr(keyring),
                mk=phiref.master_key_text(os.urandom(32)) + "," + other)
    assert_failed(r, 1)
    assert file_state(keyring) == before


# ---- contexts ------------------------------------------------------------------------

@pytest.mark.parametrize("ctx", ["", "x" * 513, "\u00e9" * 257], ids=["0", "513", "514-utf8"])
def test_context_out_of_range(phigate, mk, keyring, ctx):
    for cmd in ("encrypt", "decrypt", "rewrap"):
        r = phigate("phi", cmd, *kr(keyring), "--context", ctx, input=PLAINTEXT, mk=mk)
        assert r.rc != 0 and r.rc in (1, 2), r
        assert r.out == b"" and r.err.startswith(b"phigate: ")
        assert "--context" in r.stderr and "512" in r.stderr


@pytest.mark.parametrize("ctx", ["x" * 512, "\u00e9" * 256, "c"], ids=["512", "512-utf8", "1"])
def test_context_in_range(phigate, mk, keyring, ctx):
    r = phigate("phi", "encrypt", *kr(keyring), "--context", ctx, input=PLAINTEXT, mk=mk)
    assert r.rc == 0, r
    ct = r.stdout.strip()
    d = phigate("phi", "decrypt", *kr(keyring), "--context", ctx, input=ct, mk=mk)
    assert d.rc == 0 and d.out == PLAINTEXT
    _, deks, _, _ = phiref.load_keyring(keyring.read_bytes(), [mk])
    assert phiref.phi1_decrypt(deks, ctx.encode("utf-8"), ct) == PLAINTEXT
    # one byte less is another context
    d = phigate("phi", "decrypt", *kr(keyring), "--context", ctx[:-1] or "y", input=ct, mk=mk)
    assert_failed(d, 1)


# ---- ciphertexts ----------------------------------------------------------------------

@pytest.mark.parametrize("text", ["hello", "phi2.x.y", "", "PHI1.kabc.AAAA", " phi1"])
def test_not_a_v1_ciphertext(phigate, mk, keyring, text):
    for cmd in ("decrypt", "rewrap"):
        r = phigate("phi", cmd, *kr(keyring), "--context", "c", input=text, mk=mk)
        assert_failed(r, 1, "not a phi1 ciphertext")


def tampered_variants(ct, other_kid_ct):
    prefix, kid, data = ct.split(".")

    def flip(s, i):
        return s[:i] + ("A" if s[i] != "A" else "g") + s[i + 1:]
    return {
        "nonce-bit": ".".join([prefix, kid, flip(data, 2)]),
        "ciphertext-bit": ".".join([prefix, kid, flip(data, 17)]),
        "tag-bit": ".".join([prefix, kid, flip(data, len(data) - 3)]),
        "kid-changed": ".".join([prefix, kid[:-1] + ("a" if kid[-1] != "a" else "b"), data]),
        "kid-uppercase": ".".join([prefix, kid.upper(), data]),
        "truncated": ct[:-6],
        "short": "phi1.%s.AAAA" % kid,
        "no-dot": "phi1." + kid,
        "padding": ct + "=",
        "std-alphabet": ".".join([prefix, kid, data.replace("-", "+").replace("_", "/")])
        if ("-" in data or "_" in data) else ct + "+",
        "extra-dot": ct + ".x",
        "inner-space": ct[:30] + " " + ct[30:],
        "other-kid-header": other_kid_ct,
    }


TAMPER_CASES = ["nonce-bit", "ciphertext-bit", "tag-bit", "kid-changed", "kid-uppercase",
                "truncated", "short", "no-dot", "padding", "std-alphabet", "extra-dot",
                "inner-space", "other-kid-header", "kid-too-long", "context-user",
                "context-field", "context-trailing-space", "destroyed-kid"]


@pytest.fixture
def rotated(phigate, mk, keyring):
    """(ct under the old key, ct2 under the new primary), same context and plaintext."""
    ctx = "user=42;field=hrv"
    ct = phigate("phi", "encrypt", *kr(keyring), "--context", ctx, input=PLAINTEXT,
                 mk=mk).stdout.strip()
    assert phigate("phi", "keyring", "rotate", *kr(keyring), mk=mk).rc == 0
    ct2 = phigate("phi", "encrypt", *kr(keyring), "--context", ctx, input=PLAINTEXT,
                  mk=mk).stdout.strip()
    return ctx, ct, ct2


@pytest.mark.parametrize("case", TAMPER_CASES)
def test_tampered_and_wrong_context_give_one_message(phigate, mk, keyring, rotated, case):
    """docs/formats.md 5.5: after the "phi1." prefix check, every failure is one error."""
    ctx, ct, ct2 = rotated
    kid1, kid2 = ct.split(".")[1], ct2.split(".")[1]
    cases = tampered_variants(ct, ct.replace(kid1, kid2, 1))
    cases["kid-too-long"] = ct.replace(kid1, kid1 * 3 + "x", 1)  # 34 characters
    use_ctx = {"context-user": "user=43;field=hrv", "context-field": "user=42;field=hr",
               "context-trailing-space": ctx + " "}.get(case, ctx)
    if case.startswith("context-"):
        bad = ct
    elif case == "destroyed-kid":
        assert phigate("phi", "keyring", "destroy", *kr(keyring), "--kid", kid1, mk=mk).rc == 0
        bad = ct
    else:
        bad = cases[case]
    before = file_state(keyring)
    for cmd in ("decrypt", "rewrap"):
        r = phigate("phi", cmd, *kr(keyring), "--context", use_ctx, input=bad, mk=mk)
        assert_failed(r, 1)
        assert r.stderr == "phigate: decryption failed\n", (case, cmd, bad, r)
    assert file_state(keyring) == before
    # the untouched ciphertext under the live key still opens
    ok = phigate("phi", "decrypt", *kr(keyring), "--context", ctx, input=ct2, mk=mk)
    assert ok.rc == 0 and ok.out == PLAINTEXT


def test_decrypt_does_not_write_the_keyring(phigate, mk, keyring):
    before = file_state(keyring)
    ct = phigate("phi", "encrypt", *kr(keyring), "--context", "c", input=b"v",
                 mk=mk).stdout.strip()
    for text in (ct, ct[:-2], "hello"):
        phigate("phi", "decrypt", *kr(keyring), "--context", "c", input=text, mk=mk)
    assert file_state(keyring) == before


def test_secrets_never_in_stderr(phigate, tmp_path):
    """Every failure above, with one known master key text searched in stderr."""
    mk = DOC_MASTER_KEY
    path = tmp_path / "kr.json"
    assert phigate("phi", "keyring", "init", *kr(path), mk=mk).rc == 0
    ct = phigate("phi", "encrypt", *kr(path), "--context", "c", input=PLAINTEXT,
                 mk=mk).stdout.strip()
    wrapped = json.loads(path.read_text())["keys"][0]["wrapped"]
    runs = [
        phigate("phi", "decrypt", *kr(path), "--context", "d", input=ct, mk=mk),
        phigate("phi", "decrypt", *kr(path), "--context", "c", input=ct[:-1], mk=mk),
        phigate("phi", "keyring", "list", *kr(path), mk=mk[:-2] + "=="),
        phigate("phi", "keyring", "list", *kr(path), mk=mk + ",x" + mk),
        phigate("phi", "keyring", "list", *kr(path),
                mk=phiref.master_key_text(os.urandom(32)) + "," + mk[:-1] + "x"),
        phigate("phi", "keyring", "init", *kr(path), mk=mk),
        phigate("phi", "keyring", "destroy", *kr(path), "--kid", "kzz", mk=mk),
        phigate("phi", "decrypt-jsonl", *kr(path), "--fields", "f", "--context", "c",
                input=('{"f":"%s"}\n' % ct[:-1]).encode(), mk=mk),
        phigate("phi", "encrypt-jsonl", *kr(path), "--fields", "f", "--context", "u={u}",
                input=b'{"f":"PHI-PLAINTEXT-hrv=58.0"}\n', mk=mk),
    ]
    for r in runs:
        assert r.rc != 0, r
        assert r.out == b""
        assert mk not in r.stderr and mk[:24] not in r.stderr and mk[10:40] not in r.stderr
        assert wrapped[10:50] not in r.stderr
        assert "PHI-PLAINTEXT" not in r.stderr
