"""The upstream of the end-to-end tests: an HTTP/1.1 server in a thread.

Paths:
  /status/NNN        answers NNN with {"upstream_status":NNN} (a 404 to pass through)
  /sleep/MS[/...]    waits MS milliseconds, then echoes
  /stream/BYTES      a chunked response of BYTES bytes, made on the fly
  anything else      echoes what it received as JSON:
                     {"method","path","headers":[[name,value],...],"body":"<base64>"}

Every request's X-Request-Id (as received) is appended to .seen, before the
answer goes out; .hook, if set, is called with (request id, path) before the
answer too. Run alone: python3 echo_upstream.py [PORT].
"""
import base64
import json
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "echo-upstream"

    def log_message(self, fmt, *args):  # quiet
        pass

    def _body(self):
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            data = b""
            while True:
                line = self.rfile.readline(1024)
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass
                    return data
                data += self.rfile.read(size)
                self.rfile.readline(16)
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _send(self, status, obj):
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-Upstream", "echo")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _handle(self):
        body = self._body()
        srv = self.server
        with srv.lock:
            srv.seen.append(self.headers.get("X-Request-Id"))
            srv.requests.append({"method": self.command, "path": self.path,
                                 "headers": list(self.headers.items()), "body": body})
        hook = getattr(srv, "hook", None)
        if hook is not None:
            hook(self.headers.get("X-Request-Id"), self.path)
        path = self.path
        if path.startswith("/status/"):
            code = int(path.split("/")[2].split("?")[0])
            self._send(code, {"upstream_status": code})
            return
        if path.startswith("/sleep/"):
            time.sleep(int(path.split("/")[2].split("?")[0]) / 1000.0)
        if path.startswith("/stream/"):
            total = int(path.split("/")[2].split("?")[0])
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            block = b"x" * 65536
            left = total
            try:
                while left > 0:
                    n = min(left, len(block))
                    self.wfile.write(b"%x\r\n" % n + block[:n] + b"\r\n")
                    left -= n
                self.wfile.write(b"0\r\n\r\n")
            except OSError:
                self.close_connection = True
            return
        self._send(200, {"method": self.command, "path": path,
                         "headers": list(self.headers.items()),
                         "body": base64.b64encode(body).decode()})

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _handle


class EchoUpstream:
    def __init__(self, port=0):
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.lock = threading.Lock()
        self.httpd.seen = []
        self.httpd.requests = []
        self.httpd.hook = None
        self.port = self.httpd.server_address[1]
        self.url = "http://127.0.0.1:%d" % self.port
        self.thread = threading.Thread(target=self.httpd.serve_forever,
                                       kwargs={"poll_interval": 0.1}, daemon=True)
        self.thread.start()

    def set_hook(self, fn):
        self.httpd.hook = fn

    @property
    def seen(self):
        with self.httpd.lock:
            return list(self.httpd.seen)

    @property
    def requests(self):
        with self.httpd.lock:
            return list(self.httpd.requests)

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def free_port():
    """A port nothing listens on (for an upstream that is down)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


if __name__ == "__main__":
    u = EchoUpstream(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
    print(u.url, flush=True)
    try:
        u.thread.join()
    except KeyboardInterrupt:
        u.stop()
