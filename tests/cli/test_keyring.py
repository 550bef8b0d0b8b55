"""Keyring lifecycle through the CLI: init, list, rotate, destroy, rewrap."""
import json
import os
import stat

import phiref
from conftest import assert_failed, file_state


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def kr_args(path):
    return ["--keyring", str(path)]


def encrypt(phigate, path, mk, ctx, data):
    r = phigate("phi", "encrypt", *kr_args(path), "--context", ctx, input=data, mk=mk)
    assert r.rc == 0, r
    return r.stdout.strip()


def decrypt(phigate, path, mk, ctx, text):
    return phigate("phi", "decrypt", *kr_args(path), "--context", ctx, input=text + "\n", mk=mk)


def test_init_writes_documented_file(phigate, mk, tmp_path):
    path = tmp_path / "kr.json"
    r = phigate("phi", "keyring", "init", *kr_args(path), "--json", mk=mk)
    assert r.rc == 0, r
    out = r.json()
    assert out["keyring"] == str(path)
    assert mode(path) == 0o600
    text = path.read_text()
    doc = json.loads(text)
    # section 6.4: exactly what json.dumps(doc, indent=2) + "\n" writes
    assert text == json.dumps(doc, indent=2) + "\n"
    assert list(doc) == ["format", "version", "primary", "keys"]
    assert doc["format"] == "phigate-keyring" and doc["version"] == 1
    assert len(doc["keys"]) == 1
    key = doc["keys"][0]
    assert list(key) == ["kid", "state", "created", "wrapped"]
    assert key["state"] == "active" and key["kid"] == doc["primary"] == out["primary"]
    assert phiref.KID_RE.fullmatch(key["kid"]) and len(key["kid"]) == 11 and key["kid"][0] == "k"
    assert phiref.CREATED_RE.fullmatch(key["created"])
    assert len(key["wrapped"]) == 140 and key["wrapped"].startswith("gAAAAA")
    # the independent implementation opens it
    primary, deks, states, _ = phiref.load_keyring(path.read_bytes(), [mk])
    assert primary == key["kid"] and len(deks[primary]) == 32
    # no plaintext DEK anywhere in the file
    dek = deks[primary]
    for enc in (dek.hex(), phiref.b64encode(dek, True, True), phiref.b64encode(dek, False, True)):
        assert enc not in text


def test_init_text_output(phigate, mk, tmp_path):
    path = tmp_path / "kr.json"
    r = phigate("phi", "keyring", "init", *kr_args(path), mk=mk)
    assert r.rc == 0 and r.err == b""
    kid = json.loads(path.read_text())["primary"]
    assert kid in r.stdout and str(path) in r.stdout


def test_init_refuses_to_overwrite(phigate, mk, keyring):
    before = file_state(keyring)
    r = phigate("phi", "keyring", "init", *kr_args(keyring), mk=mk)
    assert_failed(r, 1, "already exists")
    assert file_state(keyring) == before
    # even with another master key, and even when the file is not a keyring
    other = keyring.parent / "other.txt"
    other.write_text("not a keyring\n")
    before_other = file_state(other)
    r = phigate("phi", "keyring", "init", *kr_args(other), mk=phiref.master_key_text(os.urandom(32)))
    assert_failed(r, 1, "already exists")
    assert file_state(other) == before_other
    # a dangling symlink is an existing name too: nothing is written through it
    link = keyring.parent / "link.json"
    target = keyring.parent / "target.json"
    os.symlink(target, link)
    r = phigate("phi", "keyring", "init", *kr_args(link), mk=mk)
    assert_failed(r, 1)
    assert not target.exists() and os.path.islink(link)


def test_list_shows_no_secret(phigate, mk, keyring):
    assert phigate("phi", "keyring", "rotate", *kr_args(keyring), mk=mk).rc == 0
    doc = json.loads(keyring.read_text())
    r = phigate("phi", "keyring", "list", *kr_args(keyring), "--json", mk=mk)
    assert r.rc == 0 and r.err == b""
    listed = r.json()
    assert listed["primary"] == doc["primary"]
    assert [k["kid"] for k in listed["keys"]] == [k["kid"] for k in doc["keys"]]
    assert [k["state"] for k in listed["keys"]] == ["decrypt-only", "active"]
    assert [k["created"] for k in listed["keys"]] == [k["created"] for k in doc["keys"]]
    assert [k["primary"] for k in listed["keys"]] == [False, True]
    _, deks, _, _ = phiref.load_keyring(keyring.read_bytes(), [mk])
    text_list = phigate("phi", "keyring", "list", *kr_args(keyring), mk=mk)
    assert text_list.rc == 0
    for out in (r.stdout, text_list.stdout):
        assert mk not in out and mk.rstrip("=") not in out
        for k in doc["keys"]:
            assert k["wrapped"] not in out
            assert k["wrapped"][20:60] not in out
            assert k["kid"] in out
        for dek in deks.values():
            assert dek.hex() not in out
            assert phiref.b64encode(dek, True, False) not in out
    assert "KID" in text_list.stdout and "yes" in text_list.stdout


def test_list_does_not_change_the_file(phigate, mk, keyring):
    before = file_state(keyring)
    assert phigate("phi", "keyring", "list", *kr_args(keyring), mk=mk).rc == 0
    assert file_state(keyring) == before


def test_rotate(phigate, mk, keyring):
    old_doc = json.loads(keyring.read_text())
    old_kid = old_doc["primary"]
    ct_old = encrypt(phigate, keyring, mk, "user=1;field=hrv", b"58.0")
    r = phigate("phi", "keyring", "rotate", *kr_args(keyring), "--json", mk=mk)
    assert r.rc == 0, r
    out = r.json()
    assert out["previous"] == old_kid and out["primary"] != old_kid
    doc = json.loads(keyring.read_text())
    assert doc["primary"] == out["primary"]
    assert [(k["kid"], k["state"]) for k in doc["keys"]] == \
        [(old_kid, "decrypt-only"), (out["primary"], "active")]
    # the old key's record is kept as it was
    assert doc["keys"][0]["wrapped"] == old_doc["keys"][0]["wrapped"]
    assert doc["keys"][0]["created"] == old_doc["keys"][0]["created"]
    assert mode(keyring) == 0o600
    # old data still opens; new data is under the new primary
    d = decrypt(phigate, keyring, mk, "user=1;field=hrv", ct_old)
    assert d.rc == 0 and d.out == b"58.0"
    ct_new = encrypt(phigate, keyring, mk, "user=1;field=hrv", b"59.0")
    assert phiref.phi1_kid(ct_new) == out["primary"]
    _, deks, states, _ = phiref.load_keyring(keyring.read_bytes(), [mk])
    assert states == {old_kid: "decrypt-only", out["primary"]: "active"}
    assert phiref.phi1_decrypt(deks, b"user=1;field=hrv", ct_old) == b"58.0"
    assert phiref.phi1_decrypt(deks, b"user=1;field=hrv", ct_new) == b"59.0"


def test_phi_rewrap_moves_ciphertext_to_primary(phigate, mk, keyring):
    ct_old = encrypt(phigate, keyring, mk, "user=2", b"secret value")
    assert phigate("phi", "keyring", "rotate", *kr_args(keyring), mk=mk).rc == 0
    new_kid = json.loads(keyring.read_text())["primary"]
    r = phigate("phi", "rewrap", *kr_args(keyring), "--context", "user=2", input=ct_old, mk=mk)
    assert r.rc == 0, r
    ct_new = r.stdout.strip()
    assert r.stdout == ct_new + "\n"
    assert phiref.phi1_kid(ct_new) == new_kid and ct_new != ct_old
    j = phigate("phi", "rewrap", *kr_args(keyring), "--context", "user=2", "--json",
                input=ct_old, mk=mk)
    assert j.rc == 0 and phiref.phi1_kid(j.json()["ciphertext"]) == new_kid
    _, deks, _, _ = phiref.load_keyring(keyring.read_bytes(), [mk])
    assert phiref.phi1_decrypt(deks, b"user=2", ct_new) == b"secret value"
    # wrong context: the same single error
    w = phigate("phi", "rewrap", *kr_args(keyring), "--context", "user=3", input=ct_old, mk=mk)
    assert_failed(w, 1)
    assert w.stderr == "phigate: decryption failed\n"


def test_destroy(phigate, mk, keyring):
    ct_a = encrypt(phigate, keyring, mk, "user=1", b"under the first key")
    old_kid = json.loads(keyring.read_text())["primary"]

    # the primary cannot be destroyed
    before = file_state(keyring)
    r = phigate("phi", "keyring", "destroy", *kr_args(keyring), "--kid", old_kid, mk=mk)
    assert_failed(r, 1, "primary")
    assert file_state(keyring) == before

    assert phigate("phi", "keyring", "rotate", *kr_args(keyring), mk=mk).rc == 0
    new_kid = json.loads(keyring.read_text())["primary"]
    ct_b = encrypt(phigate, keyring, mk, "user=1", b"under the second key")

    # unknown kid
    before = file_state(keyring)
    r = phigate("phi", "keyring", "destroy", *kr_args(keyring), "--kid", "knosuchkid0", mk=mk)
    assert_failed(r, 1, "no key")
    assert file_state(keyring) == before

    r = phigate("phi", "keyring", "destroy", *kr_args(keyring), "--kid", old_kid, "--json", mk=mk)
    assert r.rc == 0, r
    assert r.json() == {"destroyed": old_kid}
    assert mode(keyring) == 0o600
    doc = json.loads(keyring.read_text())
    assert doc["primary"] == new_kid
    assert doc["keys"][0] == {"kid": old_kid, "state": "destroyed",
                              "created": doc["keys"][0]["created"]}  # no "wrapped" member
    assert doc["keys"][1]["state"] == "active"

    # crypto-shredded: the old data is gone, the same single error as tampering
    d = decrypt(phigate, keyring, mk, "user=1", ct_a)
    assert_failed(d, 1)
    assert d.stderr == "phigate: decryption failed\n"
    ok = decrypt(phigate, keyring, mk, "user=1", ct_b)
    assert ok.rc == 0 and ok.out == b"under the second key"

    # destroying again is refused and changes nothing
    before = file_state(keyring)
    r = phigate("phi", "keyring", "destroy", *kr_args(keyring), "--kid", old_kid, mk=mk)
    assert_failed(r, 1, "destroyed")
    assert file_state(keyring) == before

    listed = phigate("phi", "keyring", "list", *kr_args(keyring), "--json", mk=mk).json()
    assert [k["state"] for k in listed["keys"]] == ["destroyed", "active"]

    # the independent reader agrees
    _, deks, states, _ = phiref.load_keyring(keyring.read_bytes(), [mk])
    assert states[old_kid] == "destroyed" and old_kid not in deks


def test_rewrap_master_key_rotation(phigate, keyring, mk, tmp_path):
    old = mk
    new = phiref.master_key_text(os.urandom(32))
    ct = encrypt(phigate, keyring, old, "user=9;field=notes", b'{"a":1}')
    assert phigate("phi", "keyring", "rotate", *kr_args(keyring), mk=old).rc == 0
    ct2 = encrypt(phigate, keyring, old, "user=9;field=notes", b"second")
    before = json.loads(keyring.read_text())
    _, deks_before, _, _ = phiref.load_keyring(keyring.read_bytes(), [old])

    # NEW alone does not open the keyring yet
    r = phigate("phi", "keyring", "list", *kr_args(keyring), mk=new)
    assert_failed(r, 1, "master key")

    r = phigate("phi", "keyring", "rewrap", *kr_args(keyring), "--json", mk=new + "," + old)
    assert r.rc == 0, r
    assert r.json() == {"rewrapped": 2}
    assert mode(keyring) == 0o600
    after = json.loads(keyring.read_text())
    assert after["primary"] == before["primary"]
    for b, a in zip(before["keys"], after["keys"]):
        assert (a["kid"], a["state"], a["created"]) == (b["kid"], b["state"], b["created"])
        assert a["wrapped"] != b["wrapped"]

    # only NEW opens it now
    for r in (phigate("phi", "keyring", "list", *kr_args(keyring), mk=new),
              decrypt(phigate, keyring, new, "user=9;field=notes", ct)):
        assert r.rc == 0, r
    assert decrypt(phigate, keyring, new, "user=9;field=notes", ct).out == b'{"a":1}'
    assert decrypt(phigate, keyring, new, "user=9;field=notes", ct2).out == b"second"
    before_state = file_state(keyring)
    r = phigate("phi", "keyring", "list", *kr_args(keyring), mk=old)
    assert_failed(r, 1, "master key")
    assert old not in r.stderr and new not in r.stderr
    r = decrypt(phigate, keyring, old, "user=9;field=notes", ct)
    assert_failed(r, 1)
    assert file_state(keyring) == before_state

    # the DEKs did not change; Python opens the tokens with NEW only
    _, deks_after, _, _ = phiref.load_keyring(keyring.read_bytes(), [new])
    assert deks_after == deks_before
    try:
        phiref.load_keyring(keyring.read_bytes(), [old])
    except Exception:
        pass
    else:
        raise AssertionError("the old master key still unwraps a DEK")


def test_rewrap_keeps_destroyed_keys(phigate, mk, keyring):
    assert phigate("phi", "keyring", "rotate", *kr_args(keyring), mk=mk).rc == 0
    first = json.loads(keyring.read_text())["keys"][0]["kid"]
    assert phigate("phi", "keyring", "destroy", *kr_args(keyring), "--kid", first, mk=mk).rc == 0
    new = phiref.master_key_text(os.urandom(32))
    r = phigate("phi", "keyring", "rewrap", *kr_args(keyring), "--json", mk=new + "," + mk)
    assert r.rc == 0 and r.json() == {"rewrapped": 1}
    doc = json.loads(keyring.read_text())
    assert doc["keys"][0] == {"kid": first, "state": "destroyed",
                              "created": doc["keys"][0]["created"]}
    phiref.load_keyring(keyring.read_bytes(), [new])


def test_master_key_file_sources(phigate, mk, tmp_path):
    keyfile = tmp_path / "master.key"
    keyfile.write_text(mk + "\n")
    os.chmod(keyfile, 0o600)
    path = tmp_path / "kr.json"
    r = phigate("phi", "keyring", "init", *kr_args(path),
                env={"PHI_MASTER_KEY_FILE": str(keyfile)})
    assert r.rc == 0, r
    phiref.load_keyring(path.read_bytes(), [mk])
    r = phigate("phi", "keyring", "list", *kr_args(path), "--master-key-file", keyfile)
    assert r.rc == 0, r
    r = phigate("phi", "keyring", "list", *kr_args(path), mk=mk)
    assert r.rc == 0, r
    # a list of keys in the file, whitespace around each key allowed
    other = phiref.master_key_text(os.urandom(32))
    keyfile.write_text(" %s ,\n\t%s\n" % (other, mk))
    r = phigate("phi", "keyring", "list", *kr_args(path),
                env={"PHI_MASTER_KEY_FILE": str(keyfile)})
    assert r.rc == 0, r
