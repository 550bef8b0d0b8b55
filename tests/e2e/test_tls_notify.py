"""TLS on the listener (TLS 1.2 and up) and the systemd notification protocol
(READY=1, RELOADING=1, STOPPING=1) of `phigate serve`."""
import http.client
import json
import os
import signal
import socket
import ssl
import subprocess
import time

from e2e_helpers import auth


def make_cert(folder):
    key, cert = os.path.join(folder, "tls.key"), os.path.join(folder, "tls.crt")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-subj", "/CN=127.0.0.1", "-days", "1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", key, "-out", cert],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
    return cert, key


def tls_context(cert, version=None):
    ctx = ssl.create_default_context(cafile=cert)
    if version is not None:
        ctx.minimum_version = version
        ctx.maximum_version = version
    return ctx


def test_tls_listener(make_gateway, tmp_path, upstream):
    cert, key = make_cert(str(tmp_path))
    gw = make_gateway(config="[server]\ntls_cert = %s\ntls_key = %s\n" % (cert, key))
    conn = http.client.HTTPSConnection("127.0.0.1", gw.port, timeout=15, context=tls_context(cert))
    conn.request("GET", "/healthz")
    r = conn.getresponse()
    assert r.status == 200 and json.loads(r.read()) == {"status": "ok"}
    # proxied over TLS, on the same keep-alive connection; the upstream is
    # told the client came over https
    conn.request("GET", "/v1/readings?x=1", headers=auth(gw.user_key))
    r = conn.getresponse()
    body = json.loads(r.read())
    assert r.status == 200, body
    seen = {k.lower(): v for k, v in body["headers"]}
    assert seen["x-forwarded-proto"] == "https"
    assert seen["x-phigate-user-id"] == "u1"
    conn.close()
    # TLS 1.1 is refused
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        ctx.minimum_version = ssl.TLSVersion.TLSv1_1
        ctx.maximum_version = ssl.TLSVersion.TLSv1_1
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    except (ValueError, ssl.SSLError):
        ctx = None
    if ctx is not None:
        with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as s:
            try:
                with ctx.wrap_socket(s) as t:
                    t.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                    got = t.recv(100)
                    assert got == b"", "a TLS 1.1 handshake was accepted"
            except (ssl.SSLError, ConnectionResetError, OSError):
                pass
    # plain HTTP on the TLS port gets no HTTP answer, and the server lives on
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        s.settimeout(10)
        try:
            data = s.recv(100)
        except (ConnectionResetError, socket.timeout):
            data = b""
        assert not data.startswith(b"HTTP/1.1 200")
    conn = http.client.HTTPSConnection("127.0.0.1", gw.port, timeout=15, context=tls_context(cert))
    conn.request("GET", "/healthz")
    assert conn.getresponse().status == 200
    conn.close()


def test_tls_needs_both_files(make_gateway, tmp_path):
    cert, _ = make_cert(str(tmp_path))
    gw = make_gateway(config="[server]\ntls_cert = %s\n" % cert, start=False)
    r = subprocess.run([gw.bin, "serve", "--config", gw.config_path, "--listen", "127.0.0.1:0",
                        "--store", gw.store], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=30, env=dict(os.environ, PHI_MASTER_KEY=gw.mk))
    assert r.returncode != 0
    assert b"tls_key" in r.stderr


def recv_all(sock, want, timeout=20):
    """Datagrams until one holds `want`; the list of all received."""
    got = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.1, deadline - time.monotonic()))
        try:
            msg = sock.recv(4096).decode()
        except socket.timeout:
            break
        got.append(msg)
        if want in msg.split("\n"):
            return got
    raise AssertionError("no %s in %r" % (want, got))


def test_systemd_notify(make_gateway, tmp_path):
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    try:
        gw = make_gateway(env={"NOTIFY_SOCKET": path})
        recv_all(sock, "READY=1")
        # ready means listening: a request works right away
        conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=15)
        conn.request("GET", "/healthz")
        assert conn.getresponse().status == 200
        conn.close()
        gw.signal(signal.SIGHUP)
        got = recv_all(sock, "READY=1")
        assert any("RELOADING=1" in m for m in got), got
        gw.signal(signal.SIGTERM)
        recv_all(sock, "STOPPING=1")
        assert gw.proc.wait(timeout=30) == 0
    finally:
        sock.close()
