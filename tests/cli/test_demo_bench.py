"""phigate demo and phigate bench phi."""
import json
import numbers
import os
import stat

import phiref


def test_demo(phigate, tmp_path):
    d = tmp_path / "sub" / "demo"
    r = phigate("demo", "--dir", d)
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
    again = phigate("demo", "--dir", d)
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
