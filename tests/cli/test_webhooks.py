"""`phigate webhooks source ...`: webhook sources in the store (issue 7), on both
engines: every command, --help, --json, bad input and its exit code, secrets
encrypted at rest and never printed, every change audited."""
import base64
import json
import os

import pytest

import conftest
from conftest import assert_failed

MK = conftest.ADMIN_MASTER_KEY


def whsec(n=32):
    return "whsec_" + base64.b64encode(os.urandom(n)).decode()


@pytest.fixture
def secrets(tmp_path):
    out = []
    for i in range(3):
        text = whsec()
        p = tmp_path / ("s%d.txt" % i)
        p.write_text("  " + text + "\n")  # trimmed by phigate
        out.append((p, text))
    return out


def wh(phigate, *args, mk=MK):
    return phigate("webhooks", "source", *args, mk=mk)


def add(phigate, store, name, secret_files, *extra, scheme="standard-webhooks",
        url="https://up.example/in"):
    args = ["add", name, "--scheme", scheme]
    for f in secret_files:
        args += ["--secret-file", f]
    args += ["--deliver-to", url, "--store", store.url] + list(extra)
    return wh(phigate, *args)


def no_secret(r, texts):
    for t in texts:
        body = t[len("whsec_"):]
        assert t not in r.stdout and t not in r.stderr, r
        assert body not in r.stdout and body not in r.stderr, r


def audit_actions(phigate, store):
    r = phigate("audit", "query", "--store", store.url, "--json")
    assert r.rc == 0, r
    return r.json()["records"]


def test_help(phigate):
    for cmd in ([], ["add"], ["list"], ["show"], ["remove"], ["add-secret"], ["retire-secret"],
                ["set-verify-token"]):
        r = phigate("webhooks", "source", *cmd, "--help")
        assert r.rc == 0 and r.stdout.startswith("Usage: phigate webhooks source"), r
    r = phigate("webhooks", "source", "--help")
    assert "set-verify-token" in r.stdout, r
    r = phigate("webhooks", "source", "add", "--help")
    assert "--verify-token-file" in r.stdout, r
    r = phigate("webhooks", "source", "set-verify-token", "--help")
    assert "--verify-token-file" in r.stdout and "--clear" in r.stdout, r
    r = phigate("webhooks", "--help")
    assert r.rc == 0 and "source" in r.stdout, r


def test_lifecycle(phigate, migrated, secrets):
    texts = [t for _, t in secrets]
    r = add(phigate, migrated, "oura-1", [secrets[0][0], secrets[1][0]], "--tolerance", "120",
            "--json")
    assert r.rc == 0, r
    out = r.json()
    assert out["name"] == "oura-1" and out["scheme"] == "standard-webhooks"
    assert out["tolerance_s"] == 120 and out["deliver_to"] == "https://up.example/in"
    assert [s["index"] for s in out["secrets"]] == [0, 1]
    assert all(s["fingerprint"].startswith("fp:") and len(s["fingerprint"]) == 19
               for s in out["secrets"])
    no_secret(r, texts)

    r = add(phigate, migrated, "strp", [secrets[2][0]], scheme="stripe", url="http://up:8080/")
    assert r.rc == 0 and r.stdout.startswith("added webhook source strp"), r
    no_secret(r, texts)

    # the same name twice
    assert_failed(add(phigate, migrated, "strp", [secrets[2][0]], scheme="stripe"), 1, "exists")

    r = wh(phigate, "list", "--store", migrated.url, "--json", mk=None)
    assert r.rc == 0, r
    names = [s["name"] for s in r.json()["sources"]]
    assert names == ["oura-1", "strp"]
    assert r.json()["sources"][1]["tolerance_s"] == 300
    r = wh(phigate, "list", "--store", migrated.url, mk=None)
    assert r.rc == 0 and "oura-1" in r.stdout and "strp" in r.stdout, r
    no_secret(r, texts)

    r = wh(phigate, "show", "oura-1", "--store", migrated.url, mk=None)
    assert r.rc == 0 and "fp:" in r.stdout and "active" in r.stdout, r
    no_secret(r, texts)

    # encrypted at rest: Fernet tokens, no secret text in the table
    rows = migrated.rows("SELECT secret_enc, fingerprint FROM webhook_secrets ORDER BY source, idx")
    assert len(rows) == 3
    for enc, fp in rows:
        assert enc.startswith("gAAAAA") and fp.startswith("fp:")
        for t in texts:
            assert t[len("whsec_"):][:20] not in enc
    dump = migrated.dump()
    for t in texts:
        assert t[len("whsec_"):].encode() not in dump

    # rotation: add a secret with not_after, retire the old one
    r = wh(phigate, "add-secret", "strp", "--secret-file", secrets[0][0], "--not-after",
           "2030-01-01T00:00:00Z", "--store", migrated.url, "--json")
    assert r.rc == 0, r
    assert r.json()["index"] == 1 and r.json()["source"] == "strp"
    no_secret(r, texts)
    r = wh(phigate, "retire-secret", "strp", "--index", "0", "--store", migrated.url, "--json")
    assert r.rc == 0 and r.json() == {"source": "strp", "retired": 0}, r
    # the last unretired secret stays
    assert_failed(wh(phigate, "retire-secret", "strp", "--index", "1", "--store", migrated.url),
                  1, "last")
    assert_failed(wh(phigate, "retire-secret", "strp", "--index", "9", "--store", migrated.url),
                  1, "no secret 9")
    r = wh(phigate, "show", "strp", "--store", migrated.url, "--json", mk=None)
    assert r.rc == 0, r
    sec = r.json()["secrets"]
    assert sec[0]["retired_at"] is not None and sec[1]["retired_at"] is None
    assert sec[1]["not_after"] == "2030-01-01T00:00:00Z"
    no_secret(r, texts)

    r = wh(phigate, "remove", "oura-1", "--store", migrated.url, "--json")
    assert r.rc == 0 and r.json() == {"removed": "oura-1"}, r
    assert_failed(wh(phigate, "remove", "oura-1", "--store", migrated.url), 1, "no webhook source")
    assert_failed(wh(phigate, "show", "oura-1", "--store", migrated.url), 1, "no webhook source")
    assert int(migrated.value("SELECT count(*) FROM webhook_secrets WHERE source = 'oura-1'")) == 0

    # every change audited, never with a secret
    recs = audit_actions(phigate, migrated)
    acts = [(x["action"], x["resource"], x["outcome"]) for x in recs]
    for a in [("webhooks.source.add", "webhook_source:oura-1", "success"),
              ("webhooks.source.add", "webhook_source:strp", "success"),
              ("webhooks.source.add", "webhook_source:strp", "error"),
              ("webhooks.secret.add", "webhook_source:strp", "success"),
              ("webhooks.secret.retire", "webhook_source:strp", "success"),
              ("webhooks.source.remove", "webhook_source:oura-1", "success")]:
        assert a in acts, (a, acts)
    for t in texts:
        assert t[len("whsec_"):] not in json.dumps(recs)


def test_bad_input(phigate, migrated, secrets, tmp_path):
    f = secrets[0][0]
    texts = [t for _, t in secrets]
    short = tmp_path / "short"
    short.write_text("whsec_AAAAAAAA\n")
    big = tmp_path / "big"
    big.write_bytes(b"a" * 5000)
    bad_b64 = tmp_path / "bad64"
    bad_b64.write_text("whsec_!!!notbase64!!!aaaaaaaaaaaaaaaaaaaaaaaaa\n")

    cases = [
        (["add", "Bad Name", "--scheme", "stripe", "--secret-file", f, "--deliver-to",
          "https://x/"], "NAME"),
        (["add", "x" * 65, "--scheme", "stripe", "--secret-file", f, "--deliver-to",
          "https://x/"], "NAME"),
        (["add", "a", "--scheme", "nosuch", "--secret-file", f, "--deliver-to", "https://x/"],
         "scheme"),
        (["add", "a", "--scheme", "standard-webhooks", "--secret-file", short, "--deliver-to",
          "https://x/"], "bytes"),
        (["add", "a", "--scheme", "standard-webhooks", "--secret-file", bad_b64, "--deliver-to",
          "https://x/"], "secret"),
        (["add", "a", "--scheme", "stripe", "--secret-file", big, "--deliver-to", "https://x/"],
         "4096"),
        (["add", "a", "--scheme", "stripe", "--secret-file", f, "--deliver-to", "ftp://x/"],
         "deliver_to"),
        (["add", "a", "--scheme", "stripe", "--secret-file", f, "--deliver-to", "https://x/",
          "--tolerance", "0"], "tolerance"),
        (["add", "a", "--scheme", "stripe", "--secret-file", f, "--deliver-to", "https://x/",
          "--tolerance", "86401"], "tolerance"),
        (["add", "a", "--scheme", "stripe", "--deliver-to", "https://x/"], "--secret-file"),
        (["add", "a", "--scheme", "stripe", "--secret-file", f], "--deliver-to"),
        (["add", "--scheme", "stripe"], "NAME"),
        (["add", "a", "--scheme", "stripe", "--secret-file", f, "--deliver-to", "https://x/",
          "--bogus"], "unknown option"),
        (["retire-secret", "a", "--index", "-1"], "--index"),
        (["retire-secret", "a"], "--index"),
        (["add-secret", "a", "--secret-file", f, "--not-after", "tomorrow"], "--not-after"),
        (["add-secret", "a"], "--secret-file"),
        (["list", "extra"], "unexpected"),
        (["show", "a", "--index", "1"], "does not apply"),
    ]
    for args, msg in cases:
        r = wh(phigate, *args, "--store", migrated.url)
        assert_failed(r, 2, msg)
        no_secret(r, texts)
    r = wh(phigate, "add", "a", "--scheme", "stripe", "--secret-file", tmp_path / "missing",
           "--deliver-to", "https://x/", "--store", migrated.url)
    assert_failed(r, 1, "cannot open")
    # no master key: refused before anything is stored
    r = wh(phigate, "add", "a", "--scheme", "stripe", "--secret-file", f, "--deliver-to",
           "https://x/", "--store", migrated.url, mk=conftest.NO_MASTER_KEY)
    assert r.rc == 1 and r.out == b"", r
    r = wh(phigate, "add-secret", "nosuch", "--secret-file", f, "--store", migrated.url)
    assert_failed(r, 1, "no such source")
    assert int(migrated.value("SELECT count(*) FROM webhook_sources")) == 0
    assert int(migrated.value("SELECT count(*) FROM webhook_secrets")) == 0


def test_wrong_master_key_cannot_open(phigate, migrated, secrets):
    """The stored token opens with the master key it was made under, not another one."""
    from cryptography.fernet import Fernet, InvalidToken
    assert add(phigate, migrated, "s", [secrets[0][0]], scheme="stripe").rc == 0
    enc = migrated.value("SELECT secret_enc FROM webhook_secrets")
    assert Fernet(MK.encode()).decrypt(enc.encode()).decode() == secrets[0][1]
    with pytest.raises(InvalidToken):
        Fernet(Fernet.generate_key()).decrypt(enc.encode())


OURA_SECRET = "oura_client_secret_0123456789abcd"


def verify_token_state(store, name):
    return store.value("SELECT verify_token_enc FROM webhook_sources WHERE name = '%s'" % name)


def test_verify_token(phigate, migrated, tmp_path):
    """--verify-token-file on add, set-verify-token, --clear: encrypted at rest, never
    printed, audited without the value."""
    from cryptography.fernet import Fernet
    sec = tmp_path / "oura.secret"
    sec.write_text(OURA_SECRET + "\n")
    tok1 = "vt1-" + base64.urlsafe_b64encode(os.urandom(18)).decode()
    tok2 = "vt2-" + base64.urlsafe_b64encode(os.urandom(18)).decode()
    f1 = tmp_path / "vt1"
    f1.write_text("  " + tok1 + "\n")  # trimmed by phigate
    f2 = tmp_path / "vt2"
    f2.write_text(tok2)
    toks = [tok1, tok2]

    def no_token(r):
        for t in toks:
            assert t not in r.stdout and t not in r.stderr, r
            assert t[4:] not in r.stdout and t[4:] not in r.stderr, r

    r = add(phigate, migrated, "ring", [sec], "--verify-token-file", f1, "--json", scheme="oura")
    assert r.rc == 0, r
    assert r.json()["has_verify_token"] is True
    no_token(r)
    r = add(phigate, migrated, "plain", [sec], scheme="oura")
    assert r.rc == 0, r

    # at rest: a Fernet token of the trimmed text under the master key
    enc = verify_token_state(migrated, "ring")
    assert enc.startswith("gAAAAA") and tok1 not in enc
    assert Fernet(MK.encode()).decrypt(enc.encode()).decode() == tok1
    assert verify_token_state(migrated, "plain") == ""
    assert tok1.encode() not in migrated.dump()

    # show and list: whether there is one, never the value
    r = wh(phigate, "show", "ring", "--store", migrated.url, "--json", mk=None)
    assert r.rc == 0 and r.json()["has_verify_token"] is True, r
    no_token(r)
    r = wh(phigate, "show", "ring", "--store", migrated.url)
    assert r.rc == 0 and "verify token: set" in r.stdout, r
    no_token(r)
    r = wh(phigate, "show", "plain", "--store", migrated.url, "--json")
    assert r.rc == 0 and r.json()["has_verify_token"] is False, r
    r = wh(phigate, "show", "plain", "--store", migrated.url)
    assert r.rc == 0 and "verify token: none" in r.stdout, r
    r = wh(phigate, "list", "--store", migrated.url, "--json", mk=None)
    assert r.rc == 0, r
    assert {s["name"]: s["has_verify_token"] for s in r.json()["sources"]} == \
        {"plain": False, "ring": True}
    no_token(r)

    # set: replaces it, bumps the version
    v0 = int(migrated.value("SELECT version FROM webhook_sources WHERE name = 'ring'"))
    r = wh(phigate, "set-verify-token", "ring", "--verify-token-file", f2, "--store",
           migrated.url, "--json")
    assert r.rc == 0 and r.json() == {"name": "ring", "has_verify_token": True}, r
    no_token(r)
    assert int(migrated.value("SELECT version FROM webhook_sources WHERE name = 'ring'")) > v0
    enc = verify_token_state(migrated, "ring")
    assert Fernet(MK.encode()).decrypt(enc.encode()).decode() == tok2
    r = wh(phigate, "set-verify-token", "plain", "--verify-token-file", f1, "--store",
           migrated.url)
    assert r.rc == 0 and r.stdout == "set the verify token of plain\n", r
    no_token(r)

    # the secrets are untouched by it
    r = wh(phigate, "show", "ring", "--store", migrated.url, "--json")
    assert [s["index"] for s in r.json()["secrets"]] == [0], r

    # clear
    r = wh(phigate, "set-verify-token", "plain", "--clear", "--store", migrated.url, "--json")
    assert r.rc == 0 and r.json() == {"name": "plain", "has_verify_token": False}, r
    assert verify_token_state(migrated, "plain") == ""
    r = wh(phigate, "set-verify-token", "plain", "--clear", "--store", migrated.url)
    assert r.rc == 0 and r.stdout == "cleared the verify token of plain\n", r
    r = wh(phigate, "show", "plain", "--store", migrated.url, "--json")
    assert r.json()["has_verify_token"] is False, r

    # audited, never with the value
    recs = audit_actions(phigate, migrated)
    acts = [(x["action"], x["resource"], x["outcome"]) for x in recs]
    for a in [("webhooks.source.add", "webhook_source:ring", "success"),
              ("webhooks.source.set_verify_token", "webhook_source:ring", "success"),
              ("webhooks.source.set_verify_token", "webhook_source:plain", "success")]:
        assert a in acts, (a, acts)
    sets = [x for x in recs if x["action"] == "webhooks.source.set_verify_token"
            and x["resource"] == "webhook_source:plain"]
    assert sorted(x["details"]["has_verify_token"] for x in sets) == [False, False, True], sets
    adds = [x for x in recs if x["action"] == "webhooks.source.add"
            and x["resource"] == "webhook_source:ring"]
    assert adds[0]["details"]["has_verify_token"] is True, adds
    dumped = json.dumps(recs)
    for t in toks:
        assert t not in dumped and t[4:] not in dumped


def test_verify_token_bad_input(phigate, migrated, tmp_path):
    sec = tmp_path / "oura.secret"
    sec.write_text(OURA_SECRET)
    good = tmp_path / "good"
    good.write_text("SEKRIT-good-token")
    spaced = tmp_path / "spaced"
    spaced.write_text("SEKRIT has a space\n")
    ctrl = tmp_path / "ctrl"
    ctrl.write_bytes(b"SEKRIT\x01ctrl")
    utf8 = tmp_path / "utf8"
    utf8.write_bytes("SEKRIT-\u00e9".encode())
    long = tmp_path / "long"
    long.write_text("K" * 513)
    ok512 = tmp_path / "ok512"
    ok512.write_text("K" * 512 + "\n")
    blank = tmp_path / "blank"
    blank.write_text(" \n\t\n")
    empty = tmp_path / "empty"
    empty.write_text("")
    big = tmp_path / "big"
    big.write_bytes(b"K" * 5000)

    assert add(phigate, migrated, "ring", [sec], scheme="oura").rc == 0

    def quiet(r):
        assert "SEKRIT" not in r.stdout and "SEKRIT" not in r.stderr, r
        assert "KKKKKKKK" not in r.stdout and "KKKKKKKK" not in r.stderr, r

    # refused values: exit 2, with what is wrong and never the value
    for f, msg in [(spaced, "spaces"), (ctrl, "printable"), (utf8, "printable"),
                   (long, "512"), (blank, "empty"), (empty, "empty"), (big, "4096")]:
        r = wh(phigate, "set-verify-token", "ring", "--verify-token-file", f, "--store",
               migrated.url)
        assert_failed(r, 2, msg)
        quiet(r)
        r = add(phigate, migrated, "other", [sec], "--verify-token-file", f, scheme="oura")
        assert_failed(r, 2, msg)
        quiet(r)
    assert verify_token_state(migrated, "ring") == ""
    assert int(migrated.value("SELECT count(*) FROM webhook_sources")) == 1

    # usage
    for args, msg in [
        (["set-verify-token", "ring"], "--clear"),
        (["set-verify-token", "ring", "--clear", "--verify-token-file", good], "either"),
        (["set-verify-token", "ring", "--clear=yes"], "takes no value"),
        (["set-verify-token", "--clear"], "NAME"),
        (["add-secret", "ring", "--secret-file", sec, "--clear"], "does not apply"),
        (["show", "ring", "--verify-token-file", good], "does not apply"),
    ]:
        r = wh(phigate, *args, "--store", migrated.url)
        assert_failed(r, 2, msg)
        quiet(r)
    r = wh(phigate, "set-verify-token", "ring", "--store", migrated.url, "--verify-token-file")
    assert_failed(r, 2, "needs a value")
    # missing file, unknown source, no master key: exit 1
    r = wh(phigate, "set-verify-token", "ring", "--verify-token-file", tmp_path / "missing",
           "--store", migrated.url)
    assert_failed(r, 1, "cannot open the verify token file")
    r = wh(phigate, "set-verify-token", "nosuch", "--verify-token-file", good, "--store",
           migrated.url)
    assert_failed(r, 1, "no webhook source")
    quiet(r)
    r = wh(phigate, "set-verify-token", "nosuch", "--clear", "--store", migrated.url)
    assert_failed(r, 1, "no webhook source")
    r = wh(phigate, "set-verify-token", "ring", "--verify-token-file", good, "--store",
           migrated.url, mk=conftest.NO_MASTER_KEY)
    assert r.rc == 1 and r.out == b"", r
    quiet(r)
    assert verify_token_state(migrated, "ring") == ""
    recs = audit_actions(phigate, migrated)
    assert ("webhooks.source.set_verify_token", "webhook_source:nosuch", "error") in \
        [(x["action"], x["resource"], x["outcome"]) for x in recs]
    assert "SEKRIT" not in json.dumps(recs)

    # 512 bytes is the most
    r = wh(phigate, "set-verify-token", "ring", "--verify-token-file", ok512, "--store",
           migrated.url)
    assert r.rc == 0, r
    quiet(r)
    assert verify_token_state(migrated, "ring").startswith("gAAAAA")
