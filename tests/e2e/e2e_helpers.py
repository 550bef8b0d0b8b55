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


# ---- webhooks (issue 7): signers, the npm reference library, a delivery sink ----------------
#
# The schemes are signed here with Python's hmac/hashlib exactly as
# ../shared/research/webhooks.md and docs/formats.md section 17 describe;
# test_webhooks.py checks these signers against the documented vectors first.

import hashlib  # noqa: E402
import hmac as _hmac  # noqa: E402
import shutil  # noqa: E402
import threading  # noqa: E402
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer  # noqa: E402

NPM_SRC_DIR = os.path.join(HERE, "npm")
NPM_PACKAGE = "standardwebhooks"
NPM_VERSION = "1.1.1"


def _b64(b):
    return base64.b64encode(b).decode()


def _bytes(x):
    return x.encode("utf-8") if isinstance(x, str) else x


def whsec_new():
    """A new Standard Webhooks secret: whsec_ + base64 of 32 random bytes."""
    return "whsec_" + _b64(os.urandom(32))


def sw_signature(secret, msg_id, ts, body):
    """One Standard Webhooks v1 entry: v1,base64(HMAC-SHA256(key, id.ts.body)),
    key = base64-decoded text after whsec_."""
    key = base64.b64decode(secret[6:] if secret.startswith("whsec_") else secret)
    content = ("%s.%s." % (msg_id, ts)).encode() + _bytes(body)
    return "v1," + _b64(_hmac.new(key, content, hashlib.sha256).digest())


def sw_headers(secrets, msg_id, ts, body):
    """webhook-id/-timestamp/-signature for body, signed with each secret (a
    str or a list: entries joined with single spaces, as in a rotation)."""
    if isinstance(secrets, str):
        secrets = [secrets]
    return {"webhook-id": msg_id, "webhook-timestamp": str(ts),
            "webhook-signature": " ".join(sw_signature(s, msg_id, ts, body) for s in secrets)}


def stripe_v1(secret, t, body):
    """Lowercase hex HMAC-SHA256 of "t.body", keyed with the whole whsec_ text."""
    return _hmac.new(secret.encode(), str(t).encode() + b"." + _bytes(body),
                     hashlib.sha256).hexdigest()


def stripe_headers(secret, t, body):
    return {"Stripe-Signature": "t=%s,v1=%s" % (t, stripe_v1(secret, t, body))}


def oura_headers(secret, ts, body):
    """Uppercase hex HMAC-SHA256(secret, ts text || body)."""
    mac = _hmac.new(secret.encode(), str(ts).encode() + _bytes(body), hashlib.sha256)
    return {"x-oura-signature": mac.hexdigest().upper(), "x-oura-timestamp": str(ts)}


def whoop_headers(secret, ts_ms, body):
    """base64 HMAC-SHA256(secret, ms timestamp text || body)."""
    mac = _hmac.new(secret.encode(), str(ts_ms).encode() + _bytes(body), hashlib.sha256)
    return {"X-WHOOP-Signature": _b64(mac.digest()),
            "X-WHOOP-Signature-Timestamp": str(ts_ms)}


def fitbit_headers(secret, body):
    """base64 HMAC-SHA1(secret || "&", body)."""
    mac = _hmac.new(secret.encode() + b"&", _bytes(body), hashlib.sha1)
    return {"X-Fitbit-Signature": _b64(mac.digest())}


def polar_headers(secret, body):
    mac = _hmac.new(secret.encode(), _bytes(body), hashlib.sha256)
    return {"Polar-Webhook-Signature": mac.hexdigest()}


def suunto_headers(secret, body):
    mac = _hmac.new(secret.encode(), _bytes(body), hashlib.sha256)
    return {"X-HMAC-SHA256-Signature": mac.hexdigest()}


class GoogleKey:
    """A P-256 key for the google-health scheme: its Tink JSON public keyset
    (one ENABLED EcdsaPublicKey, SHA256, NIST_P256, DER, output prefix TINK)
    and signatures base64(0x01 || key id (4 bytes, big-endian) || DER)."""

    def __init__(self, key_id=0x1A2B3C4D):
        from cryptography.hazmat.primitives.asymmetric import ec
        self._ec = ec
        self.key_id = key_id
        self.priv = ec.generate_private_key(ec.SECP256R1())

    def keyset_json(self):
        nums = self.priv.public_key().public_numbers()
        x, y = nums.x.to_bytes(32, "big"), nums.y.to_bytes(32, "big")
        params = b"\x08\x03\x10\x02\x18\x02"  # hash SHA256, curve NIST_P256, encoding DER
        proto = (b"\x08\x00" + b"\x12" + bytes([len(params)]) + params
                 + b"\x1a\x20" + x + b"\x22\x20" + y)
        return json.dumps({"primaryKeyId": self.key_id, "key": [{
            "keyData": {"typeUrl": "type.googleapis.com/google.crypto.tink.EcdsaPublicKey",
                        "value": _b64(proto), "keyMaterialType": "ASYMMETRIC_PUBLIC"},
            "status": "ENABLED", "keyId": self.key_id, "outputPrefixType": "TINK"}]})

    def signature(self, body, key_id=None):
        from cryptography.hazmat.primitives import hashes
        der = self.priv.sign(_bytes(body), self._ec.ECDSA(hashes.SHA256()))
        kid = self.key_id if key_id is None else key_id
        return _b64(b"\x01" + kid.to_bytes(4, "big") + der)


def wait_for(fn, what, timeout=10.0, interval=0.05):
    """fn() until it returns something true; its value. Fails after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        v = fn()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError("timed out after %.1fs waiting for %s (last: %r)"
                                 % (timeout, what, v))
        time.sleep(interval)


def metric_value(text, name, labels=""):
    """The value of one sample of a Prometheus text (None if absent)."""
    import re
    m = re.search(r"^%s%s ([0-9.eE+-]+)$" % (re.escape(name), re.escape(labels)), text, re.M)
    return float(m.group(1)) if m else None


# -- npm: the reference library of Standard Webhooks, from the registry --------------------

def npm_dir_default():
    """Where the npm packages are installed: $PHG_NPM_DIR, else <the folder of
    the phigate binary (the build folder)>/npm."""
    return os.environ.get("PHG_NPM_DIR") or os.path.join(
        os.path.dirname(os.path.abspath(phigate_bin())), "npm")


def npm_install(folder, timeout=300):
    """npm install tests/e2e/npm/package.json's exact pins (standardwebhooks
    1.1.1) from the npm registry into folder (no lock file is written or
    committed). Fails, never skips, when node, npm or the registry is missing."""
    node, npm = shutil.which("node"), shutil.which("npm")
    assert node and npm, ("node and npm are needed by the webhook interop tests "
                          "(node 20 and npm come with the build machines)")
    os.makedirs(folder, exist_ok=True)
    shutil.copyfile(os.path.join(NPM_SRC_DIR, "package.json"),
                    os.path.join(folder, "package.json"))
    cmd = [npm, "install", "--no-audit", "--no-fund", "--no-package-lock", "--ignore-scripts",
           "--prefix", folder]
    try:
        p = subprocess.run(cmd, cwd=folder, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError("`%s` did not finish within %ds: the npm registry is not "
                             "reachable, and the webhook interop tests need %s@%s from it"
                             % (" ".join(cmd), timeout, NPM_PACKAGE, NPM_VERSION))
    assert p.returncode == 0, (
        "`%s` failed (exit %d): the webhook interop tests need %s@%s from the npm registry.\n"
        "%s" % (" ".join(cmd), p.returncode, NPM_PACKAGE, NPM_VERSION,
                (p.stderr + p.stdout).decode("utf-8", "replace")[-3000:]))
    meta = os.path.join(folder, "node_modules", NPM_PACKAGE, "package.json")
    assert os.path.isfile(meta), "npm install left no %s in %s" % (NPM_PACKAGE, folder)
    with open(meta) as f:
        got = json.load(f)["version"]
    assert got == NPM_VERSION, "npm installed %s %s, not %s" % (NPM_PACKAGE, got, NPM_VERSION)
    return folder


class NodeSigner:
    """tests/e2e/npm/sign.js: the npm library signs and verifies."""

    def __init__(self, folder):
        self.folder = folder
        self.script = os.path.join(NPM_SRC_DIR, "sign.js")

    def run(self, ops):
        env = dict(os.environ, PHG_NPM_DIR=self.folder)
        p = subprocess.run([shutil.which("node") or "node", self.script],
                           input=json.dumps(ops).encode(), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=60, env=env)
        assert p.returncode == 0, "sign.js failed: %r" % (p.stderr[-2000:],)
        out = json.loads(p.stdout.decode())
        assert len(out) == len(ops), out
        return out

    def sign(self, secret, msg_id, ts, payload):
        return self.run([{"op": "sign", "secret": secret, "id": msg_id, "timestamp": ts,
                          "payload": payload}])[0]

    def verify(self, secret, headers, payload, now):
        return self.run([{"op": "verify", "secret": secret, "headers": headers,
                          "payload": payload, "now": now}])[0]


# -- a delivery target --------------------------------------------------------------------

class _SinkHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "hook-sink"

    def log_message(self, fmt, *args):  # quiet
        pass

    def _handle(self):
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n) if n else b""
        srv = self.server
        status = srv.status(self.path) if callable(srv.status) else srv.status
        with srv.lock:
            srv.requests.append({"method": self.command, "path": self.path,
                                 "headers": list(self.headers.items()),
                                 "h": {k.lower(): v for k, v in self.headers.items()},
                                 "body": body, "status": status, "t": time.time()})
        data = b'{"ok":true}' if 200 <= status < 300 else b'{"ok":false}'
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_POST = do_PUT = do_GET = _handle


class HookSink:
    """Where the gateway delivers webhooks: records every request (method,
    path, headers, body) and answers .status (an int, or a function of the
    path) with a small JSON body."""

    def __init__(self, port=0, status=200):
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), _SinkHandler)
        self.httpd.daemon_threads = True
        self.httpd.lock = threading.Lock()
        self.httpd.requests = []
        self.httpd.status = status
        self.httpd.socket.listen(128)
        self.port = self.httpd.server_address[1]
        self.url = "http://127.0.0.1:%d" % self.port
        self.thread = threading.Thread(target=self.httpd.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def status(self):
        return self.httpd.status

    @status.setter
    def status(self, v):
        self.httpd.status = v

    @property
    def requests(self):
        with self.httpd.lock:
            return list(self.httpd.requests)

    def by_event(self):
        """{X-Phigate-Event-Id: [requests]} of what was received."""
        out = {}
        for r in self.requests:
            out.setdefault(r["h"].get("x-phigate-event-id"), []).append(r)
        return out

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


# -- gateways with webhook sources ----------------------------------------------------------

WH_DEFAULTS = {"workers": 2, "backoff_ms": 50, "backoff_max_ms": 500, "timeout_ms": 2000}
ULID_CHARS = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def webhook_config(folder, sources, webhooks=None, server=None, extra=""):
    """The INI text of a gateway with webhook sources.

    sources: {name: {"scheme", "secrets": [text, ...], "deliver_to", and
    optionally "verify_token", "tolerance_s", "max_body"}}. Each secret is
    written to a file of its own in folder, with surrounding whitespace (the
    gateway trims it). webhooks: [webhooks] settings over WH_DEFAULTS (small
    backoffs, so retries are quick). server: [server] settings."""
    os.makedirs(folder, exist_ok=True)
    text = ""
    if server:
        text += "[server]\n" + "".join("%s = %s\n" % kv for kv in server.items()) + "\n"
    wh = dict(WH_DEFAULTS)
    wh.update(webhooks or {})
    text += "[webhooks]\n" + "".join("%s = %s\n" % kv for kv in wh.items()) + "\n"
    for name, s in sources.items():
        files = []
        for i, sec in enumerate(s["secrets"]):
            p = os.path.join(folder, "%s.secret%d" % (name, i))
            with open(p, "w") as f:
                f.write("  %s \n" % sec)
            files.append(p)
        text += "[webhook:%s]\nscheme = %s\nsecret_file = %s\ndeliver_to = %s\n" % (
            name, s["scheme"], ", ".join(files), s["deliver_to"])
        if s.get("verify_token"):
            p = os.path.join(folder, "%s.verify" % name)
            with open(p, "w") as f:
                f.write(s["verify_token"] + "\n")
            text += "verify_token_file = %s\n" % p
        for k in ("tolerance_s", "max_body"):
            if s.get(k) is not None:
                text += "%s = %s\n" % (k, s[k])
        text += "\n"
    return text + extra


def write_secret_file(folder, name, text):
    os.makedirs(folder, exist_ok=True)
    p = os.path.join(folder, name)
    with open(p, "w") as f:
        f.write(text + "\n")
    return p


def post_webhook(gw, name, headers=None, body=b"", token=None, content_type="application/json",
                 method="POST", path=None):
    """A request to /webhooks/NAME[/TOKEN]; headers a dict or a list of pairs
    (repeats allowed). No API key."""
    if path is None:
        path = "/webhooks/" + name + ("/" + token if token is not None else "")
    items = list(headers.items()) if isinstance(headers, dict) else list(headers or [])
    if content_type is not None and method in ("POST", "PUT"):
        items = [("Content-Type", content_type)] + items
    return http_request(gw.port, method, path, items,
                        body if method in ("POST", "PUT") else None)


def assert_accepted(resp):
    """200 {"id":"<ULID>","status":"accepted"} exactly; the id."""
    assert resp.status == 200, resp
    assert resp.headers.get("content-type", "").startswith("application/json"), resp
    v = resp.json()
    assert set(v) == {"id", "status"} and v["status"] == "accepted", resp
    assert len(v["id"]) == 26 and all(c in ULID_CHARS for c in v["id"]), resp
    return v["id"]


def audit_by_rid(records):
    out = {}
    for rec in records:
        out.setdefault(rec.get("request_id"), []).append(rec)
    return out


def assert_no_leak(gw, secrets, responses=()):
    """No secret (nor the base64 of a whsec_ key) in the audit log (the CLI's
    raw output), the gateway's log (every run), or a response's headers or
    body."""
    texts = {"the gateway log": gw.log_text(all_runs=True)}
    raw, before = [], None
    while True:
        args = ["audit", "query", "--store", gw.store, "--json", "--limit", "1000"]
        if before:
            args += ["--before", before]
        r = gw.cli(*args)
        assert r.rc == 0, r
        raw.append(r.out.decode("utf-8", "replace"))
        page = r.json()
        before = page.get("next_before") or page.get("next")
        if not before or not page["records"]:
            break
    texts["the audit log"] = "\n".join(raw)
    texts["the audit log (decoded)"] = json.dumps(gw.audit_all(), ensure_ascii=False)
    for i, resp in enumerate(responses):
        texts["response %d" % i] = (resp.body.decode("latin-1") + "\n"
                                    + "\n".join("%s: %s" % kv for kv in resp.header_list))
    needles = []
    for s in secrets:
        needles.append(s)
        if s.startswith("whsec_"):
            needles.append(s[6:])
        if s.startswith("Bearer "):
            needles.append(s[7:])
    for where, text in texts.items():
        for n in needles:
            assert n not in text, "a secret (%s...) appears in %s" % (n[:4], where)
