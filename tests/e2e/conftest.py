"""Fixtures for the end-to-end tests: the real `phigate serve` on loopback.

The binary is $PHIGATE_BIN (set by ctest), or build/phigate of this checkout,
as in tests/cli. Each test gets its own SQLite store, master key, INI file and
log file under tmp_path, an echo upstream (echo_upstream.py) in this process,
and a gateway on a port the system picks (its "listening" log line says which).

Every gateway is stopped at the end of the test; a sanitizer report in its log
(ASan/UBSan/LSan builds) fails the test.
"""
import os

import pytest

from e2e_helpers import (ALL_SCOPES, SANITIZER_MARKS, EchoUpstream, Gateway, HookSink,
                         NodeSigner, npm_dir_default, npm_install, phigate_bin)


@pytest.fixture(scope="session")
def bin_path():
    path = phigate_bin()
    assert os.path.isfile(path) and os.access(path, os.X_OK), \
        "phigate binary not found at %s (set PHIGATE_BIN)" % path
    return path


@pytest.fixture
def upstream():
    u = EchoUpstream()
    yield u
    u.stop()


@pytest.fixture
def make_gateway(bin_path, tmp_path, upstream):
    """make_gateway(config="", upstream_url=<echo>, threads=2, start=True, env=None):
    a migrated store with keys .admin_key (all scopes), .user_key (user u1,
    phi:encrypt phi:decrypt), .plain_key (user u2, no scope), then started."""
    made = []

    def make(config="", upstream_url=None, threads=2, start=True, env=None, name=None):
        folder = tmp_path / (name or "gw%d" % len(made))
        gw = Gateway(bin_path, folder, upstream.url if upstream_url is None else upstream_url,
                     config=config, threads=threads, env=env)
        made.append(gw)
        gw.migrate()
        gw.admin_key, gw.admin_id = gw.create_key("admin", "adm", ALL_SCOPES)
        gw.user_key, gw.user_id = gw.create_key("user", "u1", "phi:encrypt phi:decrypt")
        gw.plain_key, gw.plain_id = gw.create_key("user", "u2")
        if start:
            gw.start()
        return gw

    yield make
    problems = []
    for gw in made:
        if gw.alive():
            rc = gw.stop()
            if rc != 0:
                problems.append("phigate serve exited with %r after SIGTERM" % rc)
        text = gw.log_text(all_runs=True) if os.path.exists(gw.log_path) else ""
        for mark in SANITIZER_MARKS:
            if mark in text:
                problems.append("sanitizer report in %s:\n%s" % (gw.log_path, text[-6000:]))
                break
    assert not problems, "\n".join(problems)


@pytest.fixture
def gw(make_gateway):
    """A gateway with the default configuration in front of the echo upstream."""
    return make_gateway()


# ---- webhooks (issue 7) ----------------------------------------------------------------------

@pytest.fixture(scope="session")
def npm_dir():
    """standardwebhooks 1.1.1 installed from the npm registry (npm install
    --prefix <build folder>/npm, exact pin, no lock file) once per session.
    No registry: the tests that use it fail with a clear message."""
    return npm_install(npm_dir_default())


@pytest.fixture(scope="session")
def node_signer(npm_dir):
    """tests/e2e/npm/sign.js on the installed package."""
    return NodeSigner(npm_dir)


@pytest.fixture
def hook_sink():
    """A delivery target for webhooks (e2e_helpers.HookSink), answering 200."""
    s = HookSink()
    yield s
    s.stop()
