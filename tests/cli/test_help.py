"""Help, usage errors, version and keygen."""
import json
import os

import pytest
from cryptography.fernet import Fernet

import phiref
from conftest import assert_failed

COMMANDS = [
    [],
    ["phi"],
    ["phi", "keygen"],
    ["phi", "keyring"],
    ["phi", "keyring", "init"],
    ["phi", "keyring", "rotate"],
    ["phi", "keyring", "destroy"],
    ["phi", "keyring", "rewrap"],
    ["phi", "keyring", "list"],
    ["phi", "encrypt"],
    ["phi", "decrypt"],
    ["phi", "rewrap"],
    ["phi", "encrypt-jsonl"],
    ["phi", "decrypt-jsonl"],
    ["bench"],
    ["bench", "phi"],
    ["demo"],
    ["version"],
]


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: " ".join(c) or "phigate")
def test_every_command_has_help(phigate, cmd, tmp_path):
    # No master key in the environment: help must not need one.
    r = phigate(*cmd, "--help", cwd=tmp_path)
    assert r.rc == 0, r
    assert r.err == b"", r
    assert r.stdout.startswith("Usage: phigate"), r
    words = " ".join(["phigate"] + cmd)
    assert r.stdout.splitlines()[0].startswith("Usage: " + words), r
    assert os.listdir(tmp_path) == []  # help has no side effect (demo, keyring init)


@pytest.mark.parametrize("cmd", [["phi"], ["bench"], ["demo"], ["version"]])
def test_help_subcommand_is_command_help(phigate, cmd):
    a = phigate("help", *cmd)
    b = phigate(*cmd, "--help")
    assert a.rc == 0 and a.out == b.out, (a, b)


def test_help_lists_commands(phigate):
    r = phigate("help")
    assert r.rc == 0 and r.err == b""
    for name in ("phi", "bench", "demo", "version", "help"):
        assert "  " + name in r.stdout
    assert "Exit status" in r.stdout
    assert phigate("--help").out == r.out
    assert phigate("-h").out == r.out


def test_no_command_is_usage_error(phigate):
    r = phigate()
    assert r.rc == 2
    assert r.out == b""
    assert b"Usage: phigate" in r.err


@pytest.mark.parametrize("cmd", [
    ["nope"],
    ["phi", "nope"],
    ["phi", "keyring", "nope"],
    ["bench", "nope"],
    ["help", "nope"],
], ids=lambda c: " ".join(c))
def test_unknown_command(phigate, cmd):
    r = phigate(*cmd)
    assert_failed(r, rc=2, contains="nope")
    assert "unknown command" in r.stderr


@pytest.mark.parametrize("cmd", [c for c in COMMANDS if c not in ([], ["phi"], ["phi", "keyring"],
                                                                   ["bench"])],
                         ids=lambda c: " ".join(c))
def test_unknown_option(phigate, mk, cmd, tmp_path):
    # With a master key set and every required option given, so that only the
    # unknown option is wrong; no file may be created.
    kr = tmp_path / "kr.json"
    takes_keyring = cmd[0] == "phi" and cmd[1] != "keygen"
    extra = ["--keyring", kr] if takes_keyring else []
    r = phigate(*cmd, *extra, "--bogus-opt", mk=mk, cwd=tmp_path)
    assert_failed(r, rc=2, contains="--bogus-opt")
    assert "unknown option" in r.stderr
    assert not kr.exists()
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("args,what", [
    (["phi", "encrypt", "--keyring", "k"], "--context"),
    (["phi", "encrypt", "--context", "c"], "--keyring"),
    (["phi", "decrypt", "--context", "c"], "--keyring"),
    (["phi", "keyring", "init"], "--keyring"),
    (["phi", "keyring", "list"], "--keyring"),
    (["phi", "keyring", "destroy", "--keyring", "k"], "--kid"),
    (["phi", "encrypt-jsonl", "--keyring", "k", "--context", "c"], "--fields"),
    (["phi", "decrypt-jsonl", "--keyring", "k", "--fields", "a"], "--context"),
    (["phi", "encrypt", "--keyring"], "needs a value"),
    (["phi", "keygen", "--json=1"], "takes no value"),
    (["phi", "keygen", "extra"], "unexpected argument"),
    (["phi", "encrypt-jsonl", "--keyring", "k", "--fields", "a", "--context", "c",
      "--threads", "0"], "--threads"),
    (["phi", "encrypt-jsonl", "--keyring", "k", "--fields", "a", "--context", "c",
      "--max-line", "abc"], "--max-line"),
    (["bench", "phi", "--records", "0"], "--records"),
], ids=lambda x: x if isinstance(x, str) else " ".join(x[:3]))
def test_missing_or_bad_option_is_usage_error(phigate, mk, args, what, tmp_path):
    r = phigate(*args, mk=mk, cwd=tmp_path)
    assert_failed(r, rc=2, contains=what)
    assert "--help" in r.stderr  # points at the usage text
    assert os.listdir(tmp_path) == []


def test_version(phigate):
    r = phigate("version")
    assert r.rc == 0 and r.err == b""
    assert r.stdout.startswith("phigate ")
    j = phigate("version", "--json")
    assert j.rc == 0 and j.err == b""
    doc = j.json()
    assert isinstance(doc, dict)
    assert isinstance(doc["version"], str) and doc["version"]
    assert r.stdout.strip() == "phigate " + doc["version"]
    assert phigate("--version").out == r.out


def test_keygen_makes_fernet_keys(phigate):
    a = phigate("phi", "keygen")
    b = phigate("phi", "keygen")
    assert a.rc == 0 and b.rc == 0 and a.err == b""
    ka, kb = a.stdout.strip(), b.stdout.strip()
    assert a.stdout == ka + "\n"
    assert ka != kb
    for k in (ka, kb):
        assert len(k) == 44
        assert len(phiref.b64decode_strict(k, url=True, pad=True)) == 32
        f = Fernet(k.encode())
        assert f.decrypt(f.encrypt(b"x")) == b"x"
    j = phigate("phi", "keygen", "--json")
    assert j.rc == 0
    doc = j.json()
    assert set(doc) == {"master_key"}
    assert len(phiref.b64decode_strict(doc["master_key"], url=True, pad=True)) == 32


def test_keygen_key_works_with_phigate(phigate, tmp_path):
    key = phigate("phi", "keygen").stdout.strip()
    kr = tmp_path / "k.json"
    assert phigate("phi", "keyring", "init", "--keyring", kr, mk=key).rc == 0
    primary, deks, _, _ = phiref.load_keyring(kr.read_bytes(), [key])
    assert len(deks[primary]) == 32
    json.loads(kr.read_text())
