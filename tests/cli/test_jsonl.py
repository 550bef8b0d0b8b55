"""encrypt-jsonl / decrypt-jsonl."""
import json

import pytest

import phiref
from conftest import assert_failed

TEMPLATE = "user={user_id};field={field}"
FIELDS = "hrv,notes"

VALUES = [
    58.0, 61, -7, 0, 1e-7, 12345678901234567890, "plain", "caf\u00e9 \u2764 \U0001F600",
    "esc \" \\ / \b \f \n \r \t \u0000 \u001f", None, True, False, [], {}, [1, [2, [3]]],
    {"a": {"b": [None, True, "x"]}, "n": -0.5}, "",
]


def kr(path):
    return ["--keyring", str(path)]


def jsonl(phigate, mk, keyring, decrypt=False, fields=FIELDS, template=TEMPLATE, extra=(),
          input=b""):
    cmd = "decrypt-jsonl" if decrypt else "encrypt-jsonl"
    return phigate("phi", cmd, *kr(keyring), "--fields", fields, "--context", template,
                   "--no-progress", *extra, input=input, mk=mk)


def record(i):
    v = VALUES[i % len(VALUES)]
    rec = {"id": i, "user_id": "u%d" % (i % 997) if i % 3 else i % 997, "ts": "2026-11-27T07:00:00Z"}
    if i % 11 != 5:  # some records lack a field: left absent
        rec["hrv"] = v
    rec["notes"] = {"i": i, "v": v} if i % 2 else [v, i]
    rec["tail"] = "\u00e9" * (i % 5)
    return rec


def line_of(i):
    return json.dumps(record(i), separators=(",", ":"), ensure_ascii=bool(i % 4 == 0))


def make_input(n):
    return "".join(line_of(i) + "\n" for i in range(n)).encode("utf-8")


@pytest.fixture(scope="module")
def big_input():
    return make_input(50_000)


def lines(data):
    text = data.decode("utf-8")
    assert text == "" or text.endswith("\n"), "output is not whole lines"
    return text.split("\n")[:-1]


# ---- order, round trip, types --------------------------------------------------------

def test_order_and_round_trip_50000(phigate, mk, keyring, big_input):
    enc = jsonl(phigate, mk, keyring, extra=["--threads", "2"], input=big_input)
    assert enc.rc == 0, enc
    assert enc.err == b""
    out = lines(enc.out)
    assert len(out) == 50_000
    assert [json.loads(x)["id"] for x in out] == list(range(50_000))
    # every named field that was present is now a phi1 string; nothing else changed
    for i in (0, 1, 5, 16, 49_999):
        rec, got = record(i), json.loads(out[i])
        for name in rec:
            if name in ("hrv", "notes"):
                assert isinstance(got[name], str) and got[name].startswith("phi1.")
            else:
                assert got[name] == rec[name]
        assert list(got) == list(rec)
    dec = jsonl(phigate, mk, keyring, decrypt=True, extra=["--threads", "2"], input=enc.out)
    assert dec.rc == 0, dec
    assert dec.out == big_input  # byte for byte


def test_types_restored(phigate, mk, keyring):
    src = []
    for i, v in enumerate(VALUES):
        for ascii_only in (True, False):
            src.append(json.dumps({"user_id": i, "hrv": v, "notes": [v, {"k": v}], "x": v},
                                  separators=(",", ":"), ensure_ascii=ascii_only))
    # number spellings that Python would not keep, as literal text
    src += ['{"user_id":1,"hrv":1E2,"notes":-0.0,"x":1}',
            '{"user_id":2,"hrv":58.00,"notes":[1e+5,2E-3,-0],"x":1}',
            '{"user_id":3,"hrv":"\\u00e9\\ud83d\\ude00\\/","notes":"\\"","x":1}']
    data = ("\n".join(src) + "\n").encode("utf-8")
    enc = jsonl(phigate, mk, keyring, input=data)
    assert enc.rc == 0, enc
    for line in lines(enc.out):
        rec = json.loads(line)
        assert rec["hrv"].startswith("phi1.") and rec["notes"].startswith("phi1.")
    dec = jsonl(phigate, mk, keyring, decrypt=True, input=enc.out)
    assert dec.rc == 0, dec
    assert dec.out == data
    for a, b in zip(lines(dec.out), src):
        assert json.loads(a) == json.loads(b)
        assert type(json.loads(a)["hrv"]) is type(json.loads(b)["hrv"])


def test_same_result_with_one_and_two_threads(phigate, mk, keyring):
    data = make_input(9000)
    for threads in ("1", "2"):
        enc = jsonl(phigate, mk, keyring, extra=["--threads", threads], input=data)
        assert enc.rc == 0, enc
        dec = jsonl(phigate, mk, keyring, decrypt=True, extra=["--threads", threads],
                    input=enc.out)
        assert dec.rc == 0 and dec.out == data


def test_other_bytes_kept_verbatim(phigate, mk, keyring):
    """Non-processed members keep their spacing; the plaintext is the compact value."""
    line = '{ "user_id" : 7 ,  "hrv" : [1, 2,  {"a" : 1.50}] , "z":  true }'
    enc = jsonl(phigate, mk, keyring, fields="hrv", input=line + "\n")
    assert enc.rc == 0, enc
    out = enc.stdout
    start = line.index("[1, 2")
    end = line.index("] ,") + 1
    ct = json.loads(out)["hrv"]
    assert out == line[:start] + '"' + ct + '"' + line[end:] + "\n"
    _, deks, _, _ = phiref.load_keyring(keyring.read_bytes(), [mk])
    assert phiref.phi1_decrypt(deks, b"user=7;field=hrv", ct) == b'[1,2,{"a":1.50}]'
    dec = jsonl(phigate, mk, keyring, decrypt=True, fields="hrv", input=enc.out)
    assert dec.rc == 0, dec
    assert dec.stdout == line[:start] + '[1,2,{"a":1.50}]' + line[end:] + "\n"


def test_field_names_compared_decoded(phigate, mk, keyring):
    line = '{"user_id":1,"h\\u0072v":5,"HRV":6,"hrv2":7}'
    enc = jsonl(phigate, mk, keyring, fields="hrv", input=line)
    assert enc.rc == 0, enc
    rec = json.loads(enc.stdout)
    assert rec["hrv"].startswith("phi1.")
    assert rec["HRV"] == 6 and rec["hrv2"] == 7


def test_absent_fields_and_last_line_without_newline(phigate, mk, keyring):
    data = '{"user_id":1,"other":2}\n{"user_id":2,"hrv":3}'
    enc = jsonl(phigate, mk, keyring, input=data)
    assert enc.rc == 0, enc
    out = lines(enc.out)
    assert len(out) == 2 and out[0] == '{"user_id":1,"other":2}'
    dec = jsonl(phigate, mk, keyring, decrypt=True, input=enc.out)
    assert dec.stdout == data + "\n"


def test_empty_input(phigate, mk, keyring):
    enc = jsonl(phigate, mk, keyring, input=b"")
    assert enc.rc == 0 and enc.out == b""


def test_crlf_input(phigate, mk, keyring):
    src = [line_of(i) for i in range(200)]
    data = ("\r\n".join(src) + "\r\n").encode("utf-8")
    enc = jsonl(phigate, mk, keyring, input=data)
    assert enc.rc == 0, enc
    assert b"\r" not in enc.out
    assert len(lines(enc.out)) == 200
    dec = jsonl(phigate, mk, keyring, decrypt=True, input=enc.out)
    assert dec.rc == 0
    assert dec.stdout == "\n".join(src) + "\n"


def test_context_from_string_members_is_decoded(phigate, mk, keyring):
    data = '{"user_id":"caf\\u00e9\\"x","hrv":1}\n{"user_id":true,"hrv":2}\n{"user_id":-1.5e3,"hrv":3}\n'
    enc = jsonl(phigate, mk, keyring, input=data)
    assert enc.rc == 0, enc
    _, deks, _, _ = phiref.load_keyring(keyring.read_bytes(), [mk])
    ctxs = ["user=caf\u00e9\"x;field=hrv", "user=true;field=hrv", "user=-1.5e3;field=hrv"]
    for line, ctx, v in zip(lines(enc.out), ctxs, (b"1", b"2", b"3")):
        assert phiref.phi1_decrypt(deks, ctx.encode("utf-8"), json.loads(line)["hrv"]) == v


def test_template_braces(phigate, mk, keyring):
    enc = jsonl(phigate, mk, keyring, fields="hrv", template="v1{{x}}:{user_id}/{field}",
                input='{"user_id":42,"hrv":1}\n')
    assert enc.rc == 0, enc
    _, deks, _, _ = phiref.load_keyring(keyring.read_bytes(), [mk])
    assert phiref.phi1_decrypt(deks, b"v1{x}:42/hrv", json.loads(enc.stdout)["hrv"]) == b"1"


# ---- a bad line stops the run ----------------------------------------------------------

def test_stop_at_bad_line_30001_of_50000(phigate, mk, keyring, big_input):
    src = lines(big_input)
    src[30000] = '{"id": 30000, "user_id": "u1", "hrv": '  # invalid JSON
    data = ("\n".join(src) + "\n").encode("utf-8")
    r = jsonl(phigate, mk, keyring, extra=["--threads", "2"], input=data)
    assert r.rc == 1, r
    out = lines(r.out)
    assert len(out) == 30000
    assert [json.loads(x)["id"] for x in out] == list(range(30000))
    assert r.err.startswith(b"phigate: ")
    assert "line 30001" in r.stderr
    assert "line 30002" not in r.stderr and "line 30000:" not in r.stderr
    # the content of the bad line is never in the message
    assert '"hrv": ' not in r.stderr
    dec = jsonl(phigate, mk, keyring, decrypt=True, input=r.out)
    assert dec.rc == 0 and dec.stdout == "\n".join(src[:30000]) + "\n"


BAD_LINES = {
    "invalid-json": '{"user_id": 1, "hrv": tru}',
    "trailing-garbage": '{"user_id":1,"hrv":1} x',
    "not-an-object": '[{"user_id":1,"hrv":1}]',
    "a-string": '"user_id"',
    "empty": "",
    "blank": "   ",
    "missing-placeholder": '{"hrv":1,"notes":2}',
    "placeholder-null": '{"user_id":null,"hrv":1}',
    "placeholder-object": '{"user_id":{"a":1},"hrv":1}',
    "placeholder-array": '{"user_id":[1],"hrv":1}',
    "duplicated-field": '{"user_id":1,"hrv":1,"hrv":2}',
    "duplicated-placeholder": '{"user_id":1,"user_id":2,"hrv":1}',
    "lone-surrogate": '{"user_id":1,"hrv":"\\ud800"}',
    "nan": '{"user_id":1,"hrv":NaN}',
    "leading-zero": '{"user_id":1,"hrv":01}',
    "context-513": '{"user_id":"%s","hrv":1}' % ("x" * (513 - len("user=;field=hrv"))),
}


@pytest.mark.parametrize("kind", sorted(BAD_LINES))
def test_stop_at_bad_line_kinds(phigate, mk, keyring, kind):
    src = [line_of(i) for i in range(9000)]
    src[6000] = BAD_LINES[kind]
    data = ("\n".join(src) + "\n").encode("utf-8")
    r = jsonl(phigate, mk, keyring, extra=["--threads", "2"], input=data)
    assert r.rc == 1, (kind, r)
    out = lines(r.out)
    assert len(out) == 6000
    assert [json.loads(x)["id"] for x in out] == list(range(6000))
    assert r.err.startswith(b"phigate: line 6001: "), (kind, r.err)
    assert r.stderr.count("\n") == 1


def test_bad_line_messages(phigate, mk, keyring):
    cases = {
        "missing-placeholder": 'no member "user_id"',
        "placeholder-null": "null",
        "duplicated-field": "twice",
        "context-513": "512",
        "empty": "empty",
    }
    for kind, words in cases.items():
        r = jsonl(phigate, mk, keyring, input=BAD_LINES[kind] + "\n")
        assert_failed(r, 1, ["line 1: ", words])


def test_context_512_bytes_ok(phigate, mk, keyring):
    ok = '{"user_id":"%s","hrv":1}' % ("x" * (512 - len("user=;field=hrv")))
    r = jsonl(phigate, mk, keyring, input=ok + "\n")
    assert r.rc == 0, r
    _, deks, _, _ = phiref.load_keyring(keyring.read_bytes(), [mk])
    ctx = ("user=%s;field=hrv" % ("x" * (512 - len("user=;field=hrv")))).encode()
    assert len(ctx) == 512
    assert phiref.phi1_decrypt(deks, ctx, json.loads(r.stdout)["hrv"]) == b"1"


@pytest.mark.parametrize("count", [86, 256], ids=["172-bytes", "512-bytes"])
def test_context_from_escaped_string_counts_decoded_bytes(phigate, mk, keyring, count):
    """7.3: a string member gives its decoded content; the 1-512 limit is on those bytes.

    count x "\\u00e9" is 6 x count characters of JSON text but 2 x count bytes of context.
    """
    esc = '{"user_id":"%s","hrv":2}' % ("\\u00e9" * count)
    r = jsonl(phigate, mk, keyring, fields="hrv", template="{user_id}", input=esc + "\n")
    assert r.rc == 0, r
    _, deks, _, _ = phiref.load_keyring(keyring.read_bytes(), [mk])
    ct = json.loads(r.stdout)["hrv"]
    assert phiref.phi1_decrypt(deks, ("\u00e9" * count).encode("utf-8"), ct) == b"2"
    dec = jsonl(phigate, mk, keyring, decrypt=True, fields="hrv", template="{user_id}",
                input=r.out)
    assert dec.rc == 0 and dec.stdout == esc + "\n"


@pytest.mark.parametrize("line", [
    '{"user_id":1,"x":1,"x":2,"hrv":1}',
    '{"user_id":1,"hrv":{"a":1,"a":2}}',
    '{"user_id":1,"hrv":1,"o":[{"b":{"a":1,"a":2}}]}',
    '{"user_id":1,"hrv":1,"\\u0078":1,"x":2}',
], ids=["top-level", "inside-field", "nested-elsewhere", "escaped-name"])
def test_repeated_names_outside_fields_and_template_pass_through(phigate, mk, keyring, line):
    """7.1: only repeated --fields / template members are checked; the rest is copied."""
    r = jsonl(phigate, mk, keyring, fields="hrv", input=line + "\n")
    assert r.rc == 0, r
    dec = jsonl(phigate, mk, keyring, decrypt=True, fields="hrv", input=r.out)
    assert dec.rc == 0, dec
    assert dec.stdout == line + "\n"


@pytest.mark.parametrize("line", [
    '{"user_id":1,"hrv":1,"hrv":2}',
    '{"user_id":1,"hrv":1,"h\\u0072v":2}',
    '{"user_id":1,"hrv":1,"user_id":2}',
    '{"user_id":1,"hrv":1,"user\\u005fid":2}',
], ids=["field", "field-escaped", "placeholder", "placeholder-escaped"])
def test_repeated_field_or_placeholder_is_bad_line(phigate, mk, keyring, line):
    r = jsonl(phigate, mk, keyring, fields="hrv", input='{"user_id":0,"hrv":0}\n' + line + "\n")
    assert r.rc == 1, r
    assert len(lines(r.out)) == 1
    assert r.stderr.startswith("phigate: line 2: ") and "twice" in r.stderr
    assert r.stderr.count("\n") == 1


def test_context_over_512_bytes_from_template_text(phigate, mk, keyring):
    r = jsonl(phigate, mk, keyring, fields="hrv", template="x" * 510 + "{user_id}",
              input='{"user_id":123,"hrv":1}\n')
    assert_failed(r, 1, ["line 1", "512"])


def test_placeholder_naming_encrypted_field_is_usage_error(phigate, mk, keyring):
    for fields, template in (("hrv,notes", "user={hrv};f={field}"),
                             ("user_id", TEMPLATE),
                             ("a,b", "{b}")):
        for decrypt in (False, True):
            r = jsonl(phigate, mk, keyring, decrypt=decrypt, fields=fields, template=template,
                      input='{"user_id":1,"hrv":1}\n')
            assert_failed(r, 2, ["--context", "encrypted"])


@pytest.mark.parametrize("template", ["{}", "user={user_id", "user}", "a{b{c}", "", "{{user_id}"])
def test_bad_template_is_usage_error(phigate, mk, keyring, template):
    r = jsonl(phigate, mk, keyring, template=template, input='{"user_id":1,"hrv":1}\n')
    if template == "{{user_id}":  # "{{" is a literal "{", then "user_id}" has a lone "}"
        assert_failed(r, 2, "--context")
    else:
        assert_failed(r, 2)


@pytest.mark.parametrize("fields", ["", "hrv,", ",hrv", "hrv,,notes"])
def test_bad_fields_is_usage_error(phigate, mk, keyring, fields):
    r = jsonl(phigate, mk, keyring, fields=fields, input='{"user_id":1,"hrv":1}\n')
    assert_failed(r, 2)


def test_max_line(phigate, mk, keyring):
    def sized(n, uid=1):
        head = '{"user_id":%d,"hrv":"' % uid
        return head + "a" * (n - len(head) - 2) + '"}'
    exact, over = sized(1024, 2), sized(1025, 3)
    assert len(exact) == 1024 and len(over) == 1025
    data = "\n".join([sized(100, 1), exact, over, sized(100, 4)]) + "\n"
    r = jsonl(phigate, mk, keyring, extra=["--max-line", "1K"], input=data)
    assert r.rc == 1, r
    assert len(lines(r.out)) == 2
    assert r.stderr.startswith("phigate: line 3: ") and "1024" in r.stderr
    # a line far longer than the read buffer, then good lines: numbering stays right
    huge = sized(3 << 20, 9)
    data = "\n".join([sized(100, 1), huge, sized(100, 2), over, sized(100, 3)]) + "\n"
    rej = keyring.parent / "rejects.jsonl"
    r = jsonl(phigate, mk, keyring, extra=["--max-line", "1K", "--rejects", rej], input=data)
    assert r.rc == 0, r
    assert [json.loads(x)["user_id"] for x in lines(r.out)] == [1, 2, 3]
    assert "line 2: " in r.stderr and "line 4: " in r.stderr
    assert "not copied" in r.stderr
    assert rej.read_bytes() == b""  # too-long lines are not copied
    r = jsonl(phigate, mk, keyring, extra=["--max-line", "1K"], input=data)
    assert r.rc == 1 and len(lines(r.out)) == 1 and r.stderr.startswith("phigate: line 2: ")


def test_rejects_file(phigate, mk, keyring, tmp_path):
    n = 20_000
    src = [line_of(i) for i in range(n)]
    bad_at = {}
    for k, (kind, text) in enumerate(sorted(BAD_LINES.items())):
        if kind == "empty":
            continue  # an empty line cannot be told apart in a rejects file; tested below
        pos = 37 + k * 1151
        src[pos] = text
        bad_at[pos] = text
    data = ("\n".join(src) + "\n").encode("utf-8")
    rej = tmp_path / "rejects.jsonl"
    r = jsonl(phigate, mk, keyring, extra=["--threads", "2", "--rejects", rej, "--json"],
              input=data)
    assert r.rc == 0, r
    out = lines(r.out)
    good = [i for i in range(n) if i not in bad_at]
    assert [json.loads(x)["id"] for x in out] == good
    assert rej.read_text() == "".join(bad_at[p] + "\n" for p in sorted(bad_at))
    err = r.stderr.splitlines()
    messages = [e for e in err if e.startswith("phigate: line ")]
    assert [int(m.split()[2].rstrip(":")) for m in messages] == [p + 1 for p in sorted(bad_at)]
    summary = json.loads(err[-1])
    assert summary["ok"] is True
    assert summary["records"] == len(good) and summary["rejected"] == len(bad_at)
    dec = jsonl(phigate, mk, keyring, decrypt=True, input=r.out)
    assert dec.rc == 0
    assert dec.stdout == "".join(src[i] + "\n" for i in good)


def test_rejects_empty_line(phigate, mk, keyring, tmp_path):
    rej = tmp_path / "r.jsonl"
    r = jsonl(phigate, mk, keyring, extra=["--rejects", rej],
              input='{"user_id":1,"hrv":1}\n\n{"user_id":2,"hrv":2}\n')
    assert r.rc == 0, r
    assert len(lines(r.out)) == 2
    assert rej.read_bytes() == b"\n"
    assert "line 2: " in r.stderr


def test_json_summary_on_failure(phigate, mk, keyring):
    r = jsonl(phigate, mk, keyring, extra=["--json"],
              input='{"user_id":1,"hrv":1}\n{"hrv":1}\n{"user_id":3,"hrv":1}\n')
    assert r.rc == 1
    assert len(lines(r.out)) == 1
    summary = json.loads(r.stderr.splitlines()[-1])
    assert summary["ok"] is False and summary["records"] == 1


# ---- decrypt-jsonl failures --------------------------------------------------------------

def test_decrypt_jsonl_tampered_field(phigate, mk, keyring):
    src = [line_of(i) for i in range(5000)]
    enc = jsonl(phigate, mk, keyring, input=("\n".join(src) + "\n").encode())
    assert enc.rc == 0
    out = lines(enc.out)
    rec = json.loads(out[3333])
    ct = rec["notes"]
    rec["notes"] = ct[:-5] + ("A" if ct[-5] != "A" else "B") + ct[-4:]
    out[3333] = json.dumps(rec, separators=(",", ":"), ensure_ascii=False)
    r = jsonl(phigate, mk, keyring, decrypt=True, extra=["--threads", "2"],
              input=("\n".join(out) + "\n").encode())
    assert r.rc == 1, r
    assert r.stdout == "".join(x + "\n" for x in src[:3333])
    assert r.stderr.startswith("phigate: line 3334: ")
    assert "decryption failed" in r.stderr and "notes" in r.stderr


@pytest.mark.parametrize("value,words", [
    ("58", "not a phi1 ciphertext"),
    ('"hello"', "not a phi1 ciphertext"),
    ("null", "not a phi1 ciphertext"),
])
def test_decrypt_jsonl_field_not_ciphertext(phigate, mk, keyring, value, words):
    r = jsonl(phigate, mk, keyring, decrypt=True, fields="hrv",
              input='{"user_id":1,"hrv":%s}\n' % value)
    assert_failed(r, 1, ["line 1: ", words])


def test_decrypt_jsonl_wrong_context(phigate, mk, keyring):
    enc = jsonl(phigate, mk, keyring, fields="hrv", input='{"user_id":1,"hrv":1}\n')
    moved = enc.stdout.replace('"user_id":1', '"user_id":2')
    r = jsonl(phigate, mk, keyring, decrypt=True, fields="hrv", input=moved)
    assert_failed(r, 1, ["line 1: ", "decryption failed"])
    r = jsonl(phigate, mk, keyring, decrypt=True, fields="hrv", template="u={user_id}",
              input=enc.out)
    assert_failed(r, 1, ["line 1: ", "decryption failed"])


# ---- documented limits ---------------------------------------------------------------------

def test_nesting_limit_64(phigate, mk, keyring):
    """7.1: nesting at most 64 deep (the record object is level 1)."""
    ok = '{"user_id":1,"hrv":%s%s}' % ("[" * 63, "]" * 63)
    deep = '{"user_id":1,"hrv":%s%s}' % ("[" * 64, "]" * 64)
    r = jsonl(phigate, mk, keyring, fields="hrv", input=ok + "\n")
    assert r.rc == 0, r
    dec = jsonl(phigate, mk, keyring, decrypt=True, fields="hrv", input=r.out)
    assert dec.rc == 0 and dec.stdout == ok + "\n"
    for where in (deep, '{"user_id":1,"hrv":1,"o":%s%s}' % ("{\"a\":" * 64, "}" * 64)):
        r = jsonl(phigate, mk, keyring, fields="hrv", input=ok + "\n" + where + "\n")
        assert r.rc == 1, r
        assert len(lines(r.out)) == 1 and r.stderr.startswith("phigate: line 2: ")


def test_top_level_member_limit_1024(phigate, mk, keyring):
    def rec(n):
        return '{"user_id":1,"hrv":2,' + ",".join('"m%d":%d' % (i, i) for i in range(n - 2)) + "}"
    r = jsonl(phigate, mk, keyring, fields="hrv", input=rec(1024) + "\n")
    assert r.rc == 0, r
    assert json.loads(r.stdout)["hrv"].startswith("phi1.")
    r = jsonl(phigate, mk, keyring, fields="hrv", input=rec(1025) + "\n")
    assert_failed(r, 1, ["line 1: ", "1024"])


def test_rejects_messages_bounded(phigate, mk, keyring, tmp_path):
    """7.6: the first 100 bad lines are reported one by one, then a count."""
    src = []
    for i in range(400):
        src.append('{"hrv":1}' if i % 2 else '{"user_id":%d,"hrv":1}' % i)
    rej = tmp_path / "r.jsonl"
    r = jsonl(phigate, mk, keyring, fields="hrv", extra=["--rejects", rej],
              input="\n".join(src) + "\n")
    assert r.rc == 0, r
    assert len(lines(r.out)) == 200
    assert rej.read_text() == '{"hrv":1}\n' * 200
    msgs = [m for m in r.stderr.splitlines() if m.startswith("phigate: line ")]
    assert len(msgs) == 100
    assert msgs[0].startswith("phigate: line 2: ") and msgs[-1].startswith("phigate: line 200: ")
    assert "100 more" in r.stderr


def test_bad_option_values_before_input(phigate, mk, keyring):
    for extra in (["--threads", "257"], ["--threads", "x"], ["--max-line", "1"],
                  ["--max-line", "1T"]):
        r = jsonl(phigate, mk, keyring, extra=extra, input='{"user_id":1,"hrv":1}\n')
        assert_failed(r, 2)
