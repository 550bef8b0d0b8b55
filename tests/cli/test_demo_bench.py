"""phigate demo and phigate bench phi."""
import json
import numbers
import os
import stat

import phiref


def test_demo(phigate, tmp_path):
    d = tmp_path / "sub" / "demo"
    r = phigate("demo", "walkthrough", "--dir", d)
    assert r.rc == 0, r
    out = r.stdout
    for n in range(1, 8):
        assert "\n== %d. " % n in out, n
    assert "UNEXPECTED" not in out and "FAILED" not in out
    assert out.count("hrv = 48.2") == 3
    assert "decryption or authentication failed" in out
    # the files it leaves behind are usable, by phigate and by Python
    keyfile, keyring = d / "master.key", d / "keyring.json"
    assert stat.S_IMODE(os.stat(keyfile).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(keyring).st_mode) == 0o600
    mk = keyfile.read_text().strip()
    assert mk not in out  # the demo names the file, never prints the key
    primary, deks, states, _ = phiref.load_keyring(keyring.read_bytes(), [mk])
    assert sorted(states.values()) == ["active", "destroyed"]
    lst = phigate("phi", "keyring", "list", "--keyring", keyring, "--json",
                  env={"PHI_MASTER_KEY_FILE": str(keyfile)})
    assert lst.rc == 0 and lst.json()["primary"] == primary
    # the JSONL step printed ciphertexts under the final primary that Python opens
    outs = [line.split("out: ", 1)[1] for line in out.splitlines() if "out: " in line]
    assert len(outs) == 2
    rec = json.loads(outs[0])
    assert phiref.phi1_decrypt(deks, b"user=42;field=hrv", rec["hrv"]) == b"48.2"
    assert phiref.phi1_decrypt(deks, b"user=42;field=heart_rate", rec["heart_rate"]) == b"61"
    rec = json.loads(outs[1])
    assert phiref.phi1_decrypt(deks, b"user=7;field=hrv", rec["hrv"]) == b"null"
    assert phiref.phi1_decrypt(deks, b"user=7;field=heart_rate", rec["heart_rate"]) == b"[58,60]"
    # running it again over the same folder works
    again = phigate("demo", "walkthrough", "--dir", d)
    assert again.rc == 0, again


def positive(x):
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and x > 0


def test_bench_phi_json(phigate):
    r = phigate("bench", "phi", "--records", "2000", "--json", timeout=300)
    assert r.rc == 0, r
    doc = r.json()
    fields = doc["fields"]
    assert isinstance(fields, list) and len(fields) >= 1
    assert [f["size"] for f in fields] == [64, 1024, 65536]
    for f in fields:
        for k in ("encrypt_warm_ns", "decrypt_warm_ns", "encrypt_cold_ns", "decrypt_cold_ns"):
            assert positive(f[k]), (k, f)
    jl = doc["jsonl"]
    assert jl["records"] == 2000
    for k in ("bytes", "threads", "seconds", "mb_per_s", "records_per_s"):
        assert positive(jl[k]), (k, jl)


def test_demo_gateway(bin_path, tmp_path):
    """phigate demo: the gateway with the sample upstream, keys and curl lines."""
    import re
    import signal
    import subprocess
    import time
    import urllib.error
    import urllib.request

    env = {k: v for k, v in os.environ.items()
           if not k.startswith("PHIGATE_") and not k.startswith("PHI_MASTER")}
    d = tmp_path / "demo"
    p = subprocess.Popen([bin_path, "demo", "--dir", str(d), "--listen", "127.0.0.1:0"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        out = ""
        deadline = time.time() + 30
        while "/metrics" not in out and time.time() < deadline:
            line = p.stdout.readline()
            if not line:
                break
            out += line
        assert "Try these" in out, out + p.stderr.read()
        base = re.search(r"running at (http://127\.0\.0\.1:\d+)", out).group(1)
        admin = re.search(r"admin key:\s+(phg_\w+)", out).group(1)
        user = re.search(r"user key:\s+(phg_\w+)", out).group(1)
        assert out.count("curl ") >= 10

        def call(path, key=None, body=None):
            req = urllib.request.Request(base + path, data=body)
            if key:
                req.add_header("Authorization", "Bearer " + key)
            if body is not None:
                req.add_header("Content-Type", "application/json")
            try:
                with urllib.request.urlopen(req, timeout=10) as r:
                    return r.status, json.loads(r.read())
            except urllib.error.HTTPError as e:
                return e.code, json.loads(e.read())

        st, body = call("/v1/readings", user, b'{"metric":"hrv","value":48.2}')
        assert st == 201 and body["stored"] == 1
        st, body = call("/v1/readings", user)
        assert st == 200 and body["user_id"] == "user-42"
        assert body["readings"] == [{"metric": "hrv", "value": 48.2}]
        st, body = call("/v1/readings")
        assert st == 401 and body["error"]["code"] == "unauthorized"
        st, body = call("/v1/phi/encrypt", user,
                        b'{"context":{"user_id":"user-42","field":"hrv"},"plaintext":"48.2"}')
        assert st == 200 and body["ciphertext"].startswith("phi1.")
        st, body = call("/admin/audit/report?subject=user-42", admin)
        assert st == 200 and body["count"] >= 3
        st, body = call("/admin/audit/verify", admin)
        assert st == 200 and body["ok"] is True
        p.send_signal(signal.SIGINT)
        assert p.wait(timeout=30) == 0
        err = p.stderr.read()
        assert "DEVELOPMENT master key" in err
        mk = (d / "master.key").read_text().strip()
        assert mk not in out and mk not in err
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
