"""Helpers of the end-to-end tests: the gateway process, HTTP clients, the
audit log through the CLI. The fixtures are in conftest.py."""
import base64
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from echo_upstream import EchoUpstream, free_port  # noqa: E402,F401 (re-exported)

DEFAULT_BIN = os.path.normpath(os.path.join(HERE, "..", "..", "build", "phigate"))
ALL_SCOPES = "phi:encrypt phi:decrypt audit:read keys:admin"
SANITIZER_MARKS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:",
                   "ThreadSanitizer", "AddressSanitizer:DEADLYSIGNAL")
START_TIMEOUT = 30
HTTP_TIMEOUT = 15


def phigate_bin():
    return os.environ.get("PHIGATE_BIN") or DEFAULT_BIN


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items()
           if k not in ("PHI_MASTER_KEY", "PHI_MASTER_KEY_FILE") and not k.startswith("PHIGATE_")}
    env["PHIGATE_BIN"] = os.environ.get("PHIGATE_BIN", "")
    for k, v in extra.items():
        if v is not None:
            env[k] = v
    return env


class Result:
    def __init__(self, proc):
        self.rc = proc.returncode
        self.out = proc.stdout
        self.err = proc.stderr

    def json(self):
        return json.loads(self.out.decode("utf-8"))

    def __repr__(self):
        return "Result(rc=%r, stdout=%r, stderr=%r)" % (self.rc, self.out[:600], self.err[:800])


class Resp:
    """An HTTP response: status, headers (list and lower-case dict), body."""

    def __init__(self, status, reason, header_list, body):
        self.status = status
        self.reason = reason
        self.header_list = header_list
        self.headers = {k.lower(): v for k, v in header_list}
        self.body = body

    @property
    def rid(self):
        return self.headers.get("x-request-id")

    def json(self):
        return json.loads(self.body.decode("utf-8"))

    def __repr__(self):
        return "Resp(%d %s, headers=%r, body=%r)" % (self.status, self.reason, self.header_list,
                                                     self.body[:600])


def http_request(port, method, path, headers=None, body=None, timeout=HTTP_TIMEOUT, conn=None):
    """One request (a new connection unless conn is given). headers: dict or
    list of pairs (repeats allowed)."""
    own = conn is None
    if own:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        items = headers.items() if isinstance(headers, dict) else (headers or [])
        for k, v in items:
            conn.putheader(k, v)
        if body is not None:
            if isinstance(body, str):
                body = body.encode("utf-8")
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        r = conn.getresponse()
        data = r.read()
        return Resp(r.status, r.reason, r.getheaders(), data)
    finally:
        if own:
            conn.close()


def raw_exchange(port, data, timeout=HTTP_TIMEOUT, read_limit=1 << 20):
    """Send bytes, then read until the server closes (or timeout). Returns
    (bytes read, closed_by_server)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    out = b""
    closed = False
    try:
        try:
            s.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(out) < read_limit:
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                break
            except ConnectionResetError:
                closed = True
                break
            if not chunk:
                closed = True
                break
            out += chunk
    finally:
        s.close()
    return out, closed


def parse_raw_response(data):
    """(status, headers dict lower-case, body) of the first response in data."""
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    if "content-length" in headers:
        body = body[:int(headers["content-length"])]
    return status, headers, body


def auth(key):
    return {"Authorization": "Bearer " + key}


def assert_error(resp, status, code=None):
    """A JSON error of phigate: status, error.code, error.request_id = X-Request-Id."""
    assert resp.status == status, resp
    assert resp.headers.get("content-type", "").startswith("application/json"), resp
    err = resp.json()["error"]
    if code is not None:
        assert err["code"] == code, resp
    assert isinstance(err["message"], str) and err["message"], resp
    assert resp.rid and len(resp.rid) == 26, resp
    assert err["request_id"] == resp.rid, resp
    return err


class Gateway:
    def __init__(self, bin_path, folder, upstream_url, config="", threads=2, env=None):
        self.bin = bin_path
        self.folder = str(folder)
        os.makedirs(self.folder, exist_ok=True)
        self.db = os.path.join(self.folder, "gw.db")
        self.store = "sqlite:" + self.db
        self.config_path = os.path.join(self.folder, "gw.ini")
        self.log_path = os.path.join(self.folder, "gw.log")
        self.mk = base64.urlsafe_b64encode(os.urandom(32)).decode()
        self.upstream_url = upstream_url
        self.threads = threads
        self.extra_env = dict(env or {})
        self.proc = None
        self.port = None
        self.log_offset = 0
        self.write_config(config)

    # ---- files and the CLI ----
    def write_config(self, text):
        with open(self.config_path, "w") as f:
            f.write(text)

    def cli(self, *args, timeout=120, input=None):
        proc = subprocess.run([self.bin] + [str(a) for a in args], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, timeout=timeout, input=input,
                              env=clean_env(PHI_MASTER_KEY=self.mk))
        return Result(proc)

    def migrate(self):
        r = self.cli("migrate", "--store", self.store)
        assert r.rc == 0, r

    def create_key(self, role, user, scopes=""):
        """(key text, key id) made with `phigate keys create`."""
        args = ["keys", "create", "--store", self.store, "--role", role, "--user", user, "--json"]
        if scopes:
            args += ["--scopes", scopes]
        r = self.cli(*args)
        assert r.rc == 0, r
        v = r.json()
        rec = v.get("record", v)
        return v["key"], rec["id"]

    # ---- the process ----
    def start(self, timeout=START_TIMEOUT):
        with open(self.log_path, "ab") as f:
            self.log_offset = f.tell()
        args = [self.bin, "serve", "--config", self.config_path, "--listen", "127.0.0.1:0",
                "--store", self.store, "--threads", str(self.threads)]
        if self.upstream_url is not None:
            args += ["--upstream", self.upstream_url]
        logf = open(self.log_path, "ab")
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf,
                                     env=clean_env(PHI_MASTER_KEY=self.mk, **self.extra_env))
        logf.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for rec in self.log_records():
                if rec.get("msg") == "listening":
                    self.port = rec["port"]
                    return self
            if self.proc.poll() is not None:
                raise AssertionError("phigate serve exited with %r: %s"
                                     % (self.proc.returncode, self.log_text()))
            time.sleep(0.02)
        raise AssertionError("phigate serve did not log 'listening' within %ds: %s"
                             % (timeout, self.log_text()))

    @property
    def pid(self):
        return self.proc.pid

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig):
        self.proc.send_signal(sig)

    def stop(self, timeout=30):
        """SIGTERM and wait; the exit status (None if it had to be killed)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
                return None
        return self.proc.returncode

    def kill9(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def log_text(self, all_runs=False):
        with open(self.log_path, "rb") as f:
            if not all_runs:
                f.seek(self.log_offset)
            return f.read().decode("utf-8", "replace")

    def log_records(self):
        out = []
        for line in self.log_text().splitlines():
            line = line.strip()
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except ValueError:
                    pass
        return out

    def rss_kib(self):
        with open("/proc/%d/status" % self.proc.pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise AssertionError("no VmRSS")

    # ---- HTTP ----
    def request(self, method, path, headers=None, body=None, key=None, timeout=HTTP_TIMEOUT,
                conn=None):
        h = dict(headers or {})
        if key is not None:
            h["Authorization"] = "Bearer " + key
        return http_request(self.port, method, path, h, body, timeout=timeout, conn=conn)

    def get(self, path, key=None, **kw):
        return self.request("GET", path, key=key, **kw)

    def post_json(self, path, obj, key=None, **kw):
        body = obj if isinstance(obj, (bytes, str)) else json.dumps(obj)
        return self.request("POST", path, headers={"Content-Type": "application/json"},
                            body=body, key=key, **kw)

    def connection(self, timeout=HTTP_TIMEOUT):
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    # ---- the audit log, through the CLI ----
    def audit(self, request_id):
        r = self.cli("audit", "query", "--store", self.store, "--request-id", request_id,
                     "--json", "--limit", "1000")
        assert r.rc == 0, r
        return r.json()["records"]

    def audit_wait(self, request_id, action=None, timeout=5):
        """Records of a request id; waits for one of action (outcome records
        are written after the response)."""
        deadline = time.monotonic() + timeout
        while True:
            recs = self.audit(request_id)
            if action is None or any(x["action"] == action for x in recs):
                if recs or time.monotonic() > deadline:
                    return recs
            if time.monotonic() > deadline:
                return recs
            time.sleep(0.1)

    def audit_all(self):
        recs, before = [], None
        while True:
            args = ["audit", "query", "--store", self.store, "--json", "--limit", "1000"]
            if before:
                args += ["--before", before]
            r = self.cli(*args)
            assert r.rc == 0, r
            page = r.json()
            recs += page["records"]
            before = page.get("next_before") or page.get("next")
            if not before or not page["records"]:
                return recs

    def verify(self):
        return self.cli("audit", "verify", "--store", self.store, "--json")
