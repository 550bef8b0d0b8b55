"""Fixtures for the phigate CLI tests.

The binary is $PHIGATE_BIN (set by ctest), or build/phigate of this checkout.
Every run gets a clean environment: PHI_MASTER_KEY / PHI_MASTER_KEY_FILE are
removed from the inherited one and only set when a test asks for them.
"""
import json
import os
import stat
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import phiref  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_BIN = os.path.normpath(os.path.join(HERE, "..", "..", "build", "phigate"))

# Public test values from docs/formats.md (appendix).
DOC_MASTER_KEY = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
DOC_MASTER_KEY_2 = "YGFiY2RlZmdoaWprbG1ub3BxcnN0dXZ3eHl6e3x9fn8="


def phigate_bin():
    path = os.environ.get("PHIGATE_BIN") or DEFAULT_BIN
    return path


@pytest.fixture(scope="session")
def bin_path():
    path = phigate_bin()
    # Not a skip: a missing binary is a failure of the suite.
    assert os.path.isfile(path) and os.access(path, os.X_OK), \
        "phigate binary not found at %s (set PHIGATE_BIN)" % path
    return path


class Result:
    def __init__(self, proc):
        self.rc = proc.returncode
        self.out = proc.stdout
        self.err = proc.stderr

    @property
    def stdout(self):
        return self.out.decode("utf-8")

    @property
    def stderr(self):
        return self.err.decode("utf-8", "replace")

    def json(self):
        return json.loads(self.out.decode("utf-8"))

    def __repr__(self):
        return "Result(rc=%r, stdout=%r, stderr=%r)" % (self.rc, self.out[:400], self.err[:800])


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items()
           if k not in ("PHI_MASTER_KEY", "PHI_MASTER_KEY_FILE")}
    for k, v in extra.items():
        if v is not None:
            env[k] = v
    return env


class Phigate:
    """Runs the binary. mk= sets PHI_MASTER_KEY; env= adds other variables."""

    def __init__(self, path):
        self.path = path

    def __call__(self, *args, input=b"", mk=None, env=None, timeout=120, cwd=None):
        if isinstance(input, str):
            input = input.encode("utf-8")
        extra = dict(env or {})
        if mk is not None:
            extra["PHI_MASTER_KEY"] = mk
        proc = subprocess.run([self.path] + [str(a) for a in args], input=input,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env=clean_env(**extra), timeout=timeout, cwd=cwd)
        return Result(proc)


@pytest.fixture(scope="session")
def phigate(bin_path):
    return Phigate(bin_path)


@pytest.fixture
def mk():
    """A fresh random master key (made by Python, so independent of phigate)."""
    return phiref.master_key_text(os.urandom(32))


@pytest.fixture
def keyring(phigate, mk, tmp_path):
    """A keyring made by `phigate phi keyring init` under mk."""
    path = tmp_path / "keyring.json"
    r = phigate("phi", "keyring", "init", "--keyring", path, mk=mk)
    assert r.rc == 0, r
    return path


def file_state(path):
    """Bytes and mode of a file, or None when it does not exist."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    with open(path, "rb") as f:
        return (f.read(), stat.S_IMODE(st.st_mode))


def assert_failed(r, rc=1, contains=None):
    """A clean failure: exit code, 'phigate: ' message on stderr, nothing on stdout."""
    assert r.rc == rc, r
    assert r.out == b"", r
    assert r.err.startswith(b"phigate: "), r
    if contains is not None:
        items = [contains] if isinstance(contains, str) else contains
        for c in items:
            assert c in r.stderr, (c, r)
