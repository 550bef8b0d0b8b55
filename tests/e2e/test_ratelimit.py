"""Rate limits end to end (issue 6): the real `phigate serve`, real Redis
servers (tests/redis_server.sh: one node, or a cluster of three masters),
16 concurrent clients.

What the algorithm makes robust, and so what is asserted (docs/formats.md
16.2): a flood on a fresh key admits exactly L at once, then nothing until the
oldest counted sub-window leaves the summed range, so the admitted requests
come in bursts of exactly L about every W + W/10, and no interval of length W
holds more than L. Counts are asserted exactly; times only as "bursts are
apart", with margins of half a sub-window or more (W = 3 s here, bursts 3.3 s
apart, grouped by gaps of more than W/2), never as exact instants.
"""
import http.client
import json
import math
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections import Counter

import pytest

from e2e_helpers import SANITIZER_MARKS, Gateway, assert_error, clean_env

HERE = os.path.dirname(os.path.abspath(__file__))
REDIS_SH = os.environ.get("PHG_REDIS_SERVER") or os.path.normpath(
    os.path.join(HERE, "..", "redis_server.sh"))

L = 20            # requests per window in the floods
W = 3             # the window, seconds: sub-windows of g = 0.3 s, bursts 3.3 s apart
POLICY = "%d/%ds" % (L, W)
FLOOD_S = 7.2     # three bursts: at 0, at 3.0 to 3.3 and at 6.3 to 6.6 s
CLIENTS = 16
GAP_S = W / 2.0   # admitted responses further apart than this start a new burst
# Client-side receive times lag the server's decisions by a variable delay
# (a loaded machine, 16 Python threads); the "no interval of length W holds
# more than L" check allows that much of it.
JITTER_S = 0.25
# The exactness tests are about Redis's decisions: a fallback to the local
# engine (a Redis answer slower than the default 50 ms on a loaded machine)
# would decide on another count. A long timeout makes it unlikely, and
# "closed" makes one visible (503) instead of a silent extra admission.
EXACT_REDIS = "timeout_ms = 2000\nfallback = closed\n"


# ---- Redis --------------------------------------------------------------------------------------

class Redis:
    """Throwaway Redis server(s) in a folder, through tests/redis_server.sh."""

    def __init__(self, folder, cluster=False):
        self.dir = str(folder)
        self.cluster = cluster
        args = ["sh", REDIS_SH, "start", self.dir] + (["--cluster"] if cluster else [])
        r = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120)
        assert r.returncode == 0, "redis_server.sh start failed: %r %r" % (r.stdout, r.stderr)
        self.ports = self._ports()
        assert len(self.ports) == (3 if cluster else 1), self.ports

    def _ports(self):
        with open(os.path.join(self.dir, "ports")) as f:
            return [int(x) for x in f.read().split()]

    @property
    def port(self):
        return self.ports[0]

    @property
    def url(self):
        return "redis://127.0.0.1:%d" % self.port

    def pid(self, port=None):
        with open(os.path.join(self.dir, "redis-%d.pid" % (port or self.port))) as f:
            return int(f.read().strip())

    def cli(self, *args, port=None):
        r = subprocess.run(["redis-cli", "-h", "127.0.0.1", "-p", str(port or self.port)] +
                           [str(a) for a in args], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=30)
        assert r.returncode == 0, r
        return r.stdout.decode().strip()

    def stop(self):
        subprocess.run(["sh", REDIS_SH, "stop", self.dir], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=60)

    def kill(self):
        """Stop the (single) server but keep its folder and port for restart()."""
        pid = self.pid()
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        while os.path.exists("/proc/%d" % pid):
            try:
                with open("/proc/%d/stat" % pid) as f:
                    if f.read().split(") ", 1)[1].startswith("Z"):
                        break  # a zombie: gone, not reaped by us
            except OSError:
                break
            assert time.monotonic() < deadline, "redis-server did not stop"
            time.sleep(0.05)

    def restart(self):
        r = subprocess.run(["sh", REDIS_SH, "restart", self.dir], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=60)
        assert r.returncode == 0, "redis_server.sh restart failed: %r %r" % (r.stdout, r.stderr)
        assert self._ports() == self.ports

    def slot_owner(self, key):
        """The port of the cluster master that holds key's slot."""
        slot = int(self.cli("cluster", "keyslot", key))
        for line in self.cli("cluster", "nodes").splitlines():
            parts = line.split()
            port = int(parts[1].split("@")[0].rsplit(":", 1)[1])
            for rng in parts[8:]:
                if rng.startswith("["):
                    continue
                lo, _, hi = rng.partition("-")
                if int(lo) <= slot <= int(hi or lo):
                    return port
        raise AssertionError("no node holds slot %d" % slot)


@pytest.fixture
def redis_factory(tmp_path):
    # not a skip: without redis-server these tests fail (make test installs it)
    assert shutil.which("redis-server") is not None, "redis-server is not installed"
    made = []

    def make(cluster=False, name=None):
        r = Redis(tmp_path / (name or "redis%d" % len(made)), cluster=cluster)
        made.append(r)
        return r

    yield make
    for r in made:
        r.stop()


@pytest.fixture(autouse=True)
def upstream_backlog(upstream):
    """The echo upstream listens with Python's default backlog of 5: when a
    burst of L admitted requests opens new connections to it at once, SYNs
    are dropped and retried a second later, which would smear a burst over
    a second. A longer backlog (listen again: Linux updates it)."""
    upstream.httpd.socket.listen(256)
    return upstream


# ---- gateways sharing one store ------------------------------------------------------------------

@pytest.fixture
def twins(bin_path, tmp_path, upstream):
    """twin(gw, config, name): a second `phigate serve` on gw's store and
    master key (keys shared), with its own audit chain, INI and log."""
    made = []

    def make(gw, config, name):
        t = Gateway(bin_path, tmp_path / name, upstream.url, config=config, threads=2)
        t.db, t.store, t.mk = gw.db, gw.store, gw.mk
        for attr in ("admin_key", "admin_id", "user_key", "user_id", "plain_key", "plain_id"):
            setattr(t, attr, getattr(gw, attr))
        made.append(t)
        t.start()
        return t

    yield make
    problems = []
    for t in made:
        if t.alive() and t.stop() != 0:
            problems.append("phigate serve (%s) did not exit 0 after SIGTERM" % t.folder)
        text = t.log_text(all_runs=True) if os.path.exists(t.log_path) else ""
        if any(m in text for m in SANITIZER_MARKS):
            problems.append("sanitizer report in %s:\n%s" % (t.log_path, text[-6000:]))
    assert not problems, "\n".join(problems)


def config(policy=POLICY, redis=None, chain=None, extra=""):
    text = "[ratelimit]\n"
    if policy:
        text += "default_user = %s\n" % policy
    if redis:
        text += "redis = %s\n" % redis
    text += extra
    if chain:
        text += "\n[audit]\nchain = %s\n" % chain
    return text


def set_limit(gw, key_id, policy):
    r = gw.cli("keys", "set-limit", key_id, "--limit", policy, "--store", gw.store)
    assert r.rc == 0, r


# ---- the flood -----------------------------------------------------------------------------------

class Hit:
    __slots__ = ("t", "status", "h", "latency", "body", "port")

    def __init__(self, t, status, h, latency, body, port):
        self.t, self.status, self.h, self.latency, self.body, self.port = \
            t, status, h, latency, body, port

    def __repr__(self):
        return "Hit(t=%.3f, %d, %r, %.3fs, %r)" % (self.t, self.status, self.h, self.latency,
                                                  self.body[:200])


def flood(targets, path, clients=CLIENTS, duration=FLOOD_S, timeout=10):
    """clients threads, spread over targets [(port, key), ...], each on a
    keep-alive connection, GET path with its key as fast as they can for
    duration seconds. Returns (hits sorted by receive time, errors)."""
    hits, errors = [], []
    lock = threading.Lock()
    barrier = threading.Barrier(clients)

    def client(i):
        port, key = targets[i % len(targets)]
        mine, errs = [], []
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        hdrs = {"Authorization": "Bearer " + key}
        barrier.wait(30)
        end = time.monotonic() + duration
        while time.monotonic() < end:
            t0 = time.monotonic()
            try:
                conn.request("GET", path, headers=hdrs)
                r = conn.getresponse()
                body = r.read()
                t1 = time.monotonic()
                h = {k.lower(): v for k, v in r.getheaders()}
                mine.append(Hit(t1, r.status, h, t1 - t0, body if r.status != 200 else b"",
                                port))
                if h.get("connection", "").lower() == "close":
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
            except (OSError, http.client.HTTPException) as e:
                errs.append("%s after %.3fs" % (repr(e), time.monotonic() - t0))
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        conn.close()
        with lock:
            hits.extend(mine)
            errors.extend(errs)

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(duration + timeout + 40)
        assert not t.is_alive(), "a flood client is stuck"
    hits.sort(key=lambda x: x.t)
    return hits, errors


def w_plus_g_s(window):
    """W + g in whole seconds, rounded up: the longest a refusal waits."""
    return (window * (10 + 1) + 9) // 10


def bursts_of(times, gap=GAP_S):
    out = []
    for t in sorted(times):
        if out and t - out[-1][-1] <= gap:
            out[-1].append(t)
        else:
            out.append([t])
    return out


def max_in_interval(times, length):
    """The most times in any half-open interval [t, t + length)."""
    times = sorted(times)
    best, j = 0, 0
    for i in range(len(times)):
        while j < len(times) and times[j] < times[i] + length:
            j += 1
        best = max(best, j - i)
    return best


def staircase(remaining):
    """The remaining counts of one burst: a union of runs k-1, ..., 1, 0 (the
    sub-windows that left the range freed k slots each): the count of each
    value does not grow with the value."""
    c = Counter(remaining)
    top = max(remaining)
    return all(c[v] >= c[v + 1] for v in range(top + 1)) and all(v >= 0 for v in c)


def usage(gw, key_id):
    r = gw.get("/admin/keys/%s/ratelimit" % key_id, key=gw.admin_key)
    assert r.status == 200, r
    return r.json()


def burst(gw, key, n, path="/v1/adm"):
    return [gw.get(path, key=key) for _ in range(n)]


def upstream_count(upstream, path):
    return sum(1 for r in upstream.requests if r["path"] == path)


def metric(gw, name, labels=""):
    text = gw.get("/metrics").body.decode()
    m = re.search(r"^%s%s (\d+)$" % (re.escape(name), re.escape(labels)), text, re.M)
    return int(m.group(1)) if m else 0


def check_exact_flood(hits, errors, upstream, path, limit=L, window=W):
    """The assertions shared by the exactness tests; returns the bursts (lists
    of hits)."""
    assert not errors, errors[:10]
    statuses = Counter(h.status for h in hits)
    assert set(statuses) <= {200, 429}, [h for h in hits if h.status not in (200, 429)][:5]
    ok = [h for h in hits if h.status == 200]
    refused = [h for h in hits if h.status == 429]
    assert refused, "the flood was never refused: %r" % statuses
    # what the clients saw admitted is what reached the upstream
    deadline = time.monotonic() + 5
    while upstream_count(upstream, path) < len(ok) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert upstream_count(upstream, path) == len(ok), (upstream_count(upstream, path), len(ok))

    policy_hdr = '"%ds";q=%d;w=%d' % (window, limit, window)
    for h in refused:
        assert h.h.get("retry-after", "").isdigit(), h
        assert 1 <= int(h.h["retry-after"]) <= w_plus_g_s(window), h
        assert h.h.get("x-ratelimit-limit") == str(limit), h
        assert h.h.get("x-ratelimit-remaining") == "0", h
        assert 1 <= int(h.h["x-ratelimit-reset"]) <= w_plus_g_s(window), h
        assert h.h.get("ratelimit-policy") == policy_hdr, h
        assert h.h.get("ratelimit") == '"%ds";r=0;t=%s' % (window, h.h["x-ratelimit-reset"]), h
        assert h.h.get("content-type", "").startswith("application/json"), h
        assert json.loads(h.body)["error"]["code"] == "rate_limited", h
    for h in ok:
        assert h.h.get("x-ratelimit-limit") == str(limit), h
        assert "retry-after" not in h.h, h
        rem = int(h.h["x-ratelimit-remaining"])
        assert 0 <= rem < limit, h
        reset = int(h.h["x-ratelimit-reset"])
        assert (reset == 0) if rem > 0 else (1 <= reset <= w_plus_g_s(window)), h
        assert h.h.get("ratelimit-policy") == policy_hdr, h
        assert h.h.get("ratelimit") == '"%ds";r=%d;t=%d' % (window, rem, reset), h

    bursts = bursts_of([h.t for h in ok], gap=window / 2.0)
    by_time = {}
    for h in ok:
        by_time.setdefault(h.t, []).append(h)
    groups = []
    for b in bursts:
        g = []
        for t in sorted(set(b)):
            g.extend(by_time[t])
        groups.append(g)
    shape = [(round(g[0].t - ok[0].t, 3), len(g)) for g in groups]
    assert len(groups) >= 3, "expected at least 3 bursts of %d: %r" % (limit, shape)
    for g in groups[:-1]:
        assert len(g) == limit, "a burst did not admit exactly %d: %r" % (limit, shape)
    assert 1 <= len(groups[-1]) <= limit, shape
    # the promise, on the clients' clock (with the jitter it adds)
    worst = max_in_interval([h.t for h in ok], window - JITTER_S)
    assert worst <= limit, "%d admitted within %.2f s: %r" % (worst, window - JITTER_S, shape)
    for a, b in zip(groups, groups[1:]):
        assert b[0].t - a[0].t >= window - JITTER_S, shape
    # Every burst after the first starts right at a sub-window's start (the
    # flood is waiting), and the next one when that sub-window leaves the
    # summed range: W + g later, exactly. Summing one sub-window fewer would
    # make it W (and break the promise by up to g): half a sub-window apart.
    for a, b in zip(groups[1:], groups[2:]):
        assert b[0].t - a[0].t >= window * 1.05, shape
    # a fresh key: the first burst counts down from L-1 to 0, each value once
    assert sorted(int(h.h["x-ratelimit-remaining"]) for h in groups[0]) == \
        list(range(limit)), [h.h["x-ratelimit-remaining"] for h in groups[0]]
    for g in groups[:-1]:
        rem = [int(h.h["x-ratelimit-remaining"]) for h in g]
        assert staircase(rem), sorted(rem)
    return groups


# ---- 1-3: exactness ------------------------------------------------------------------------------

def test_local_engine_admits_exactly_L_per_window_under_16_clients(make_gateway, upstream):
    gw = make_gateway(config())
    path = "/v1/rl/local"
    hits, errors = flood([(gw.port, gw.user_key)], path)
    check_exact_flood(hits, errors, upstream, path)
    ok = sum(1 for h in hits if h.status == 200)
    assert metric(gw, "phigate_ratelimit_decisions_total", '{result="allowed"}') == ok
    assert metric(gw, "phigate_ratelimit_decisions_total", '{result="refused"}') == \
        len(hits) - ok
    # another key of the same role has its own budget, untouched by the flood
    r = gw.get(path + "/other", key=gw.plain_key)
    assert r.status == 200 and r.headers["x-ratelimit-remaining"] == str(L - 1), r


def test_two_gateways_on_one_redis_admit_exactly_L_in_total(make_gateway, twins, upstream,
                                                            redis_factory):
    redis = redis_factory()
    a = make_gateway(config(redis=redis.url, chain="gw-a", extra=EXACT_REDIS))
    b = twins(a, config(redis=redis.url, chain="gw-b", extra=EXACT_REDIS), "gw-b")
    path = "/v1/rl/redis2"
    hits, errors = flood([(a.port, a.user_key), (b.port, b.user_key)], path)
    for g in (a, b):
        assert "falling back" not in g.log_text(), g.log_text()[-3000:]
    groups = check_exact_flood(hits, errors, upstream, path)
    # both gateways did admit, and refuse: the budget is shared, not split
    ports = Counter(h.port for g in groups for h in g)
    assert ports[a.port] > 0 and ports[b.port] > 0, ports
    assert Counter(h.port for h in hits if h.status == 429).keys() == {a.port, b.port}
    # the counts are on Redis, under the documented key
    assert redis.cli("exists", "phigate:rl:{%s}" % a.user_id) == "1"
    for g in (a, b):
        assert metric(g, "phigate_ratelimit_fallback_total") == 0


def test_redis_cluster_of_three_masters_admits_exactly_L(make_gateway, upstream, redis_factory):
    redis = redis_factory(cluster=True)
    given = redis.ports[0]
    gw = make_gateway(config(redis="redis://127.0.0.1:%d" % given, extra=EXACT_REDIS),
                      start=False)
    # a key whose slot is on another master than the one the gateway is
    # given (it learns of the others from MOVED), and one on that one
    far = near = None
    for i in range(16):
        key, kid = (gw.user_key, gw.user_id) if i == 0 else gw.create_key("user", "c%d" % i)
        owner = redis.slot_owner("phigate:rl:{%s}" % kid)
        if owner != given and far is None:
            far = (key, kid, owner)
        elif owner == given and near is None:
            near = (key, kid, owner)
        if far and near:
            break
    assert far is not None and near is not None, "no key on another node in 16 tries"
    gw.start()
    path = "/v1/rl/cluster"
    hits, errors = flood([(gw.port, far[0])], path)
    assert "falling back" not in gw.log_text(), gw.log_text()[-3000:]
    check_exact_flood(hits, errors, upstream, path)
    key = "phigate:rl:{%s}" % far[1]
    assert redis.cli("exists", key, port=far[2]) == "1"
    # and a key on the node given: a burst of L + 5 admits exactly L
    statuses = [gw.get("/v1/rl/near", key=near[0]).status for _ in range(L + 5)]
    assert statuses.count(200) == L and statuses[L:] == [429] * 5, statuses
    assert redis.cli("exists", "phigate:rl:{%s}" % near[1], port=given) == "1"
    assert "falling back" not in gw.log_text(), gw.log_text()[-3000:]


# ---- 4: Redis away: the fallback -----------------------------------------------------------------

FALLING_BACK = "rate limits: Redis does not answer; falling back"
ANSWERS_AGAIN = "rate limits: Redis answers again"
LONG = "20/1m"      # a window far longer than a phase: counts do not move by themselves
LONG_L = 20
BOUND_S = 1.0       # every decision is answered within this, Redis up or not


def log_count(gw, msg):
    return sum(1 for rec in gw.log_records() if rec.get("msg") == msg)


def wait_for(pred, what, timeout=15, step=0.1):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        assert time.monotonic() < deadline, "timed out waiting for %s" % what
        time.sleep(step)


def redis_gateway(make_gateway, redis, fallback, name, policy=LONG, extra=""):
    gw = make_gateway(config(policy=None, redis=redis.url,
                             extra="fallback = %s\ninstances = 2\n%s" % (fallback, extra)),
                      start=False, name=name)
    set_limit(gw, gw.user_id, policy)
    gw.start()
    return gw


def test_redis_stopped_and_back_under_each_fallback(make_gateway, upstream, redis_factory):
    redis = redis_factory()
    # a timeout longer than the default: no spurious episode while Redis is up
    gws = {mode: redis_gateway(make_gateway, redis, mode, "gw-" + mode, extra="timeout_ms = 300\n")
           for mode in ("local", "open", "closed")}
    # Redis up: L of L + 3 admitted, counted on Redis
    for mode, gw in gws.items():
        rs = [gw.get("/v1/fb/up", key=gw.user_key) for _ in range(LONG_L + 3)]
        assert [r.status for r in rs] == [200] * LONG_L + [429] * 3, (mode, rs[-4:])
        assert [int(r.headers["x-ratelimit-remaining"]) for r in rs[:LONG_L]] == \
            list(range(LONG_L - 1, -1, -1)), mode
        assert redis.cli("exists", "phigate:rl:{%s}" % gw.user_id) == "1"
        assert log_count(gw, FALLING_BACK) == 0, gw.log_text()[-2000:]

    redis.kill()
    # Redis down: every request is still answered, within the bound, per policy
    targets = [(gw.port, gw.user_key) for gw in gws.values()]
    hits, errors = flood(targets, "/v1/fb/down", clients=6, duration=1.5)
    assert not errors, errors[:10]
    slow = [h for h in hits if h.latency > BOUND_S]
    assert not slow, slow[:5]
    by_mode = {mode: [h for h in hits if h.port == gw.port] for mode, gw in gws.items()}
    # local: the local engine with the limit divided by the 2 instances; a
    # fresh local count, and a phase much shorter than the window: exactly L/2
    local = by_mode["local"]
    assert Counter(h.status for h in local)[200] == LONG_L // 2, Counter(h.status for h in local)
    assert {h.status for h in local} == {200, 429}
    for h in local:
        assert h.h["x-ratelimit-limit"] == str(LONG_L // 2), h
    # open: everything admitted (no limit, so no rate-limit headers)
    assert {h.status for h in by_mode["open"]} == {200}, Counter(h.status for h in by_mode["open"])
    assert not [h for h in by_mode["open"] if "x-ratelimit-limit" in h.h], by_mode["open"][:3]
    # closed: everything refused with 503 ratelimit_unavailable
    closed = by_mode["closed"]
    assert {h.status for h in closed} == {503}, Counter(h.status for h in closed)
    for h in closed[:20]:
        assert json.loads(h.body)["error"]["code"] == "ratelimit_unavailable", h
    ok_down = sum(1 for h in hits if h.status == 200)
    assert upstream_count(upstream, "/v1/fb/down") == ok_down
    for mode, gw in gws.items():
        assert len(by_mode[mode]) >= 5, (mode, len(by_mode[mode]))
        # one warning for the episode, not one per request
        assert log_count(gw, FALLING_BACK) == 1, (mode, gw.log_text()[-3000:])
        assert metric(gw, "phigate_ratelimit_fallback_total") >= len(by_mode[mode]), mode
        # the admin API says Redis does not answer rather than guessing
        r = gw.get("/admin/keys/%s/ratelimit" % gw.user_id, key=gw.admin_key)
        assert_error(r, 503, "unavailable")

    redis.restart()  # the same port, empty (no persistence)
    # picked up without a restart: decisions come from Redis again (its fresh
    # count: the full limit, L - 1 left after the first)
    for mode, gw in gws.items():
        def on_redis(gw=gw):
            r = gw.get("/v1/fb/back", key=gw.user_key)
            assert r.status in (200, 429, 503), r
            return r if r.headers.get("x-ratelimit-limit") == str(LONG_L) else None
        r = wait_for(on_redis, "%s: decisions on Redis again" % mode)
        assert r.status == 200 and r.headers["x-ratelimit-remaining"] == str(LONG_L - 1), (mode, r)
        r = gw.get("/v1/fb/back", key=gw.user_key)
        assert r.status == 200 and r.headers["x-ratelimit-remaining"] == str(LONG_L - 2), (mode, r)
        assert redis.cli("exists", "phigate:rl:{%s}" % gw.user_id) == "1"
        # the usage, read from Redis, and a reset through Redis
        r = gw.get("/admin/keys/%s/ratelimit" % gw.user_id, key=gw.admin_key)
        assert r.status == 200, r
        v = r.json()
        assert v["engine"] == "redis" and v["policy"] == LONG, v
        assert (v["windows"][0]["used"], v["windows"][0]["remaining"]) == (2, LONG_L - 2), v
        r = gw.request("POST", "/admin/keys/%s/ratelimit/reset" % gw.user_id, key=gw.admin_key)
        assert r.status == 200 and r.json() == {"key_id": gw.user_id, "reset": True}, r
        assert redis.cli("exists", "phigate:rl:{%s}" % gw.user_id) == "0"
        r = gw.get("/v1/fb/back", key=gw.user_key)
        assert r.status == 200 and r.headers["x-ratelimit-remaining"] == str(LONG_L - 1), (mode, r)
        assert log_count(gw, ANSWERS_AGAIN) == 1, (mode, gw.log_text()[-3000:])
        assert log_count(gw, FALLING_BACK) == 1, (mode, gw.log_text()[-3000:])


def test_redis_hung_decisions_wait_at_most_the_timeout(make_gateway, upstream, redis_factory):
    """SIGSTOP: Redis accepts but never answers. Each decision gives up after
    timeout_ms and falls back; SIGCONT, and Redis decides again, its counts
    from before the episode still there."""
    redis = redis_factory()
    gw = redis_gateway(make_gateway, redis, "local", "gw-hung", policy="100/1m",
                       extra="timeout_ms = 100\n")
    for i in range(5):
        r = gw.get("/v1/hung/up", key=gw.user_key)
        assert r.status == 200 and r.headers["x-ratelimit-remaining"] == str(99 - i), r
    pid = redis.pid()
    os.kill(pid, signal.SIGSTOP)
    try:
        hits, errors = flood([(gw.port, gw.user_key)], "/v1/hung/down", clients=4, duration=1.5)
    finally:
        os.kill(pid, signal.SIGCONT)
    assert not errors, errors[:10]
    assert len(hits) >= 8, len(hits)
    slow = [h for h in hits if h.latency > BOUND_S]
    assert not slow, slow[:5]
    # the local fallback: 100 / 2 instances, a fresh local count
    st = Counter(h.status for h in hits)
    assert st[200] == min(50, len(hits)) and set(st) <= {200, 429}, st
    assert {h.h["x-ratelimit-limit"] for h in hits} == {"50"}
    assert log_count(gw, FALLING_BACK) == 1, gw.log_text()[-3000:]
    assert metric(gw, "phigate_ratelimit_fallback_total") >= len(hits)

    def on_redis():
        r = gw.get("/v1/hung/back", key=gw.user_key)
        assert r.status in (200, 429), r
        return r if r.headers.get("x-ratelimit-limit") == "100" else None
    r = wait_for(on_redis, "decisions on Redis again")
    # Redis's count goes on from the 5 of before (the requests of the episode
    # that reached the stopped server may have been counted too: never fewer)
    assert int(r.headers["x-ratelimit-remaining"]) <= 100 - 5 - 1, r
    assert log_count(gw, ANSWERS_AGAIN) == 1, gw.log_text()[-3000:]
    assert log_count(gw, FALLING_BACK) == 1, gw.log_text()[-3000:]


# ---- 5: violations ------------------------------------------------------------------------------

def violation_records(gw):
    r = gw.cli("audit", "query", "--store", gw.store, "--action", "ratelimit.violation", "--json",
               "--limit", "1000")
    assert r.rc == 0, r
    return r.json()["records"]


def test_violations_one_record_per_key_per_window_and_exact_sums(make_gateway, upstream):
    gw = make_gateway(config())
    # a few refusals of another key first: it must rank below the flooded one
    rs = [gw.get("/v1/viol/plain", key=gw.plain_key) for _ in range(L + 3)]
    assert [r.status for r in rs] == [200] * L + [429] * 3
    hits, errors = flood([(gw.port, gw.user_key)], "/v1/viol", clients=8, duration=5.0)
    assert not errors, errors[:10]
    refused = [h for h in hits if h.status == 429]
    assert len(refused) > 100, len(refused)
    span = refused[-1].t - refused[0].t

    # while it runs: the key is on top; what is recorded so far is at most
    # what was refused (the rest is counted into the next record)
    def top():
        r = gw.get("/admin/ratelimit/violations", key=gw.admin_key)
        assert r.status == 200, r
        keys = r.json()["keys"]
        return keys if len(keys) == 2 else None
    keys = wait_for(top, "two keys in the violations")
    assert keys[0]["key_id"] == gw.user_id and keys[0]["user_id"] == "u1", keys
    assert 1 <= keys[0]["violations"] <= len(refused), keys
    assert keys[1]["key_id"] == gw.plain_id and 1 <= keys[1]["violations"] <= 3, keys

    # the last counts are written when the gateway stops
    assert gw.stop() == 0
    recs = violation_records(gw)
    mine = [x for x in recs if x["resource"] == "key:" + gw.user_id]
    other = [x for x in recs if x["resource"] == "key:" + gw.plain_id]
    assert len(mine) + len(other) == len(recs), recs
    assert sum(x["details"]["count"] for x in mine) == len(refused), \
        [x["details"] for x in mine]
    assert sum(x["details"]["count"] for x in other) == 3, [x["details"] for x in other]
    # at most one per window while it ran, plus the one written at the stop
    assert 2 <= len(mine) <= math.floor((span + 0.5) / W) + 1 + 1, \
        (span, [x["details"] for x in mine])
    for x in mine + other:
        assert x["action"] == "ratelimit.violation" and x["outcome"] == "denied", x
        assert x["actor"]["key_id"] in (gw.user_id, gw.plain_id), x
        assert x["details"]["count"] >= 1, x
        assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$", x["details"]["first"]), x
        assert x["details"]["first"] <= x["details"]["last"], x
    # the records written while it ran name the policy and the refusing window
    for x in sorted(mine, key=lambda x: x["seq"])[:-1]:
        assert x["details"]["limit"] == POLICY and x["details"]["window_s"] == W, x

    # and the admin API sums them exactly, after a restart
    gw.start()
    r = gw.get("/admin/ratelimit/violations?limit=1", key=gw.admin_key)
    assert r.status == 200, r
    v = r.json()
    assert [k["key_id"] for k in v["keys"]] == [gw.user_id], v
    assert v["keys"][0]["violations"] == len(refused), (v, len(refused))
    assert v["truncated"] is False and v["records_scanned"] == len(recs), v
    r = gw.get("/admin/ratelimit/violations", key=gw.admin_key)
    assert [(k["key_id"], k["violations"]) for k in r.json()["keys"]] == \
        [(gw.user_id, len(refused)), (gw.plain_id, 3)], r


def test_violation_record_written_at_stop_names_the_policy(make_gateway):
    """The last record, written when the gateway stops, has the documented
    details too: the policy and the refusing window (gw.h,
    GW_RL_VIOLATION_ACTION; docs/api.md section 10)."""
    gw = make_gateway(config(policy="3/1m"))
    rs = burst(gw, gw.user_key, 6, path="/v1/viol/stop")
    assert [r.status for r in rs] == [200] * 3 + [429] * 3, rs
    assert gw.stop() == 0
    recs = sorted(violation_records(gw), key=lambda x: x["seq"])
    # the first refusal at once, the two after it at the stop
    assert [x["details"]["count"] for x in recs] == [1, 2], recs
    for x in recs:
        assert (x["details"]["limit"], x["details"]["window_s"]) == ("3/1m", 60), x["details"]


# ---- 6: the admin API, changes without a restart ------------------------------------------------

def test_admin_usage_reset_set_limit_and_reload(make_gateway):
    gw = make_gateway("[log]\nlevel = info\n" + config(policy="5/1m"), start=False)
    set_limit(gw, gw.user_id, "6/1m,100/1h")
    gw.start()
    u = usage(gw, gw.user_id)
    assert u["policy"] == "6/1m,100/1h" and u["source"] == "key" and u["engine"] == "local", u
    assert u["windows"] == [
        {"limit": 6, "window_s": 60, "used": 0, "remaining": 6, "reset_s": 0},
        {"limit": 100, "window_s": 3600, "used": 0, "remaining": 100, "reset_s": 0}], u
    rs = burst(gw, gw.user_key, 4)
    assert [r.status for r in rs] == [200] * 4
    # the binding window is the one with the fewest left; the policy has both
    assert rs[-1].headers["x-ratelimit-limit"] == "6" and rs[-1].headers[
        "x-ratelimit-remaining"] == "2", rs[-1]
    assert rs[-1].headers["ratelimit-policy"] == '"60s";q=6;w=60, "3600s";q=100;w=3600', rs[-1]
    u = usage(gw, gw.user_id)
    assert [(w["used"], w["remaining"], w["reset_s"]) for w in u["windows"]] == \
        [(4, 2, 0), (4, 96, 0)], u
    rs = burst(gw, gw.user_key, 4)
    assert [r.status for r in rs] == [200, 200, 429, 429], rs
    u = usage(gw, gw.user_id)
    assert (u["windows"][0]["used"], u["windows"][0]["remaining"]) == (6, 0), u
    assert 1 <= u["windows"][0]["reset_s"] <= 66 and u["windows"][1]["remaining"] == 94, u
    # reset: the full limit again at once
    r = gw.request("POST", "/admin/keys/%s/ratelimit/reset" % gw.user_id, key=gw.admin_key)
    assert r.status == 200 and r.json() == {"key_id": gw.user_id, "reset": True}, r
    recs = wait_for(lambda: [x for x in gw.audit(r.rid) if x["action"] == "admin.ratelimit.reset"],
                    "the reset's audit record")
    assert recs[0]["resource"] == "key:" + gw.user_id, recs
    rs = burst(gw, gw.user_key, 8)
    assert [r.status for r in rs] == [200] * 6 + [429] * 2, rs
    # a new limit applies to the next request; counts of a window it keeps stay
    r = gw.request("PUT", "/admin/keys/%s/ratelimit" % gw.user_id, key=gw.admin_key,
                   headers={"Content-Type": "application/json"}, body='{"limit":"9/1m"}')
    assert r.status == 200 and r.json()["rate_limit"] == "9/1m", r
    rs = burst(gw, gw.user_key, 5)
    assert [r.status for r in rs] == [200] * 3 + [429] * 2, rs
    assert rs[0].headers["x-ratelimit-limit"] == "9" and rs[0].headers[
        "ratelimit-policy"] == '"60s";q=9;w=60', rs[0]
    # the CLI on the store, while it runs: applied within about a second
    set_limit(gw, gw.user_id, "12/1m")
    r = wait_for(lambda: (lambda r: r if r.headers.get("x-ratelimit-limit") == "12" else None)(
        gw.get("/v1/adm", key=gw.user_key)), "the CLI's new limit", timeout=10)
    assert r.status == 200, r
    # null: the role's default applies again
    r = gw.request("PUT", "/admin/keys/%s/ratelimit" % gw.user_id, key=gw.admin_key,
                   headers={"Content-Type": "application/json"}, body='{"limit":null}')
    assert r.status == 200 and r.json()["rate_limit"] is None, r
    assert usage(gw, gw.user_id)["source"] == "default"
    r = gw.get("/v1/adm", key=gw.user_key)
    assert r.headers.get("x-ratelimit-limit") == "5", r
    # "none": not limited at all, no headers
    r = gw.request("PUT", "/admin/keys/%s/ratelimit" % gw.user_id, key=gw.admin_key,
                   headers={"Content-Type": "application/json"}, body='{"limit":"none"}')
    assert r.status == 200, r
    rs = burst(gw, gw.user_key, 12)
    assert [r.status for r in rs] == [200] * 12 and "x-ratelimit-limit" not in rs[-1].headers

    # SIGHUP: a changed role default applies without a restart
    r = gw.get("/v1/adm/p", key=gw.plain_key)
    assert r.headers.get("x-ratelimit-limit") == "5" and r.headers[
        "x-ratelimit-remaining"] == "4", r
    gw.write_config("[log]\nlevel = info\n" + config(policy="7/1m"))
    gw.signal(signal.SIGHUP)
    wait_for(lambda: log_count(gw, "reloaded: keys, routes and limits"), "the reload")
    r = gw.get("/v1/adm/p", key=gw.plain_key)
    # the 1 m window is kept: 1 counted before, this one the second
    assert r.headers.get("x-ratelimit-limit") == "7" and r.headers[
        "x-ratelimit-remaining"] == "5", r
    u = usage(gw, gw.plain_id)
    assert u["policy"] == "7/1m" and u["source"] == "default", u
    # a bad default on reload: the old configuration stays
    gw.write_config("[log]\nlevel = info\n" + config(policy="0/1m"))
    gw.signal(signal.SIGHUP)
    wait_for(lambda: log_count(gw, "reload: the configuration is not valid; keeping the old one"),
             "the refused reload")
    assert gw.get("/v1/adm/p", key=gw.plain_key).headers.get("x-ratelimit-limit") == "7"
    assert gw.alive()


# ---- 7: bad input --------------------------------------------------------------------------------

def serve_fails(gw, ini, *args):
    """Run `phigate serve` with ini (and args); it must exit non-zero on its
    own, without a crash. Returns its stderr+stdout text."""
    gw.write_config(ini)
    cmd = [gw.bin, "serve", "--config", gw.config_path, "--listen", "127.0.0.1:0", "--store",
           gw.store, "--threads", "1", "--upstream", gw.upstream_url] + list(args)
    try:
        p = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=20,
                           env=clean_env(PHI_MASTER_KEY=gw.mk))
    except subprocess.TimeoutExpired:
        raise AssertionError("phigate serve did not stop on %r %r" % (ini, args))
    text = (p.stderr + p.stdout).decode("utf-8", "replace")
    assert 0 < p.returncode < 128, (p.returncode, ini, args, text)
    assert "listening" not in text, text
    for mark in SANITIZER_MARKS:
        assert mark not in text, text
    return text


def test_bad_rate_limit_settings_refused_at_start(make_gateway):
    gw = make_gateway(start=False)
    cases = [
        ("[ratelimit]\ndefault_user = 0/1m\n", (), "ratelimit.default_user"),
        ("[ratelimit]\ndefault_user = -5/1m\n", (), "ratelimit.default_user"),
        ("[ratelimit]\ndefault_user = 5/0s\n", (), "ratelimit.default_user"),
        ("[ratelimit]\ndefault_user = 5/1x\n", (), "ratelimit.default_user"),
        ("[ratelimit]\ndefault_admin = 5/1m,6/60s\n", (), "ratelimit.default_admin"),
        ("[ratelimit]\nfallback = maybe\n", (), "ratelimit.fallback"),
        ("[ratelimit]\nengine = redis\n", (), "ratelimit.redis"),
        ("[ratelimit]\nengine = memcached\n", (), "ratelimit.engine"),
        ("[ratelimit]\ntimeout_ms = 0\n", (), "ratelimit.timeout_ms"),
        ("[ratelimit]\ninstances = 0\n", (), "ratelimit.instances"),
        ("[ratelimit]\nredis = http://x\n", (), "ratelimit.redis"),
        ("", ("--redis", "http://x"), "ratelimit.redis"),
        ("", ("--redis", "redis://:pw@h:1"), "ratelimit.redis"),
        ("", ("--redis", "redis://h:99999"), "ratelimit.redis"),
        ("", ("--redis", "redis://"), "ratelimit.redis"),
    ]
    for ini, args, name in cases:
        text = serve_fails(gw, ini, *args)
        assert name in text, (ini, args, text)
        assert ":pw@" not in text, text  # no password echoed


def test_bad_limits_at_the_admin_api_and_the_cli(make_gateway):
    gw = make_gateway(config(policy="5/1m"))
    path = "/admin/keys/%s/ratelimit" % gw.user_id
    for bad in ("0/1m", "5/0s", "abc", "-5/1m", "5/1x", "1/1m,2/60s", "1/1s,1/2s,1/3s,1/4s,1/5s",
                "1/101d", "1000000000/1h", "1" * 200):
        r = gw.request("PUT", path, key=gw.admin_key, headers={"Content-Type": "application/json"},
                       body=json.dumps({"limit": bad}))
        err = assert_error(r, 400, "invalid_parameter")
        assert bad not in err["message"] or len(bad) < 20, err
    for body in ('{}', '{"limit":5}', '{"limit":"5/1m","x":1}', 'nope'):
        r = gw.request("PUT", path, key=gw.admin_key, headers={"Content-Type": "application/json"},
                       body=body)
        assert_error(r, 400)
    r = gw.request("PUT", "/admin/keys/ak_nosuchkey00000000/ratelimit", key=gw.admin_key,
                   headers={"Content-Type": "application/json"}, body='{"limit":"5/1m"}')
    assert r.status in (400, 404), r
    # nothing changed: the role default still applies
    u = usage(gw, gw.user_id)
    assert u["source"] == "default" and u["policy"] == "5/1m", u
    r = gw.request("POST", path + "/reset", key=gw.admin_key, body="x")
    assert_error(r, 400, "invalid_request")
    # the CLI
    for bad in ("0/1m", "5/0s", "abc"):
        r = gw.cli("keys", "create", "--store", gw.store, "--role", "user", "--user", "u9",
                   "--limit", bad)
        assert r.rc == 2 and b"rate limit" in r.err and not r.out, r
        r = gw.cli("keys", "set-limit", gw.user_id, "--store", gw.store, "--limit", bad)
        assert r.rc == 2 and b"rate limit" in r.err, r
    assert usage(gw, gw.user_id)["source"] == "default"
    assert gw.alive()
