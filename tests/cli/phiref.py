"""An independent Python implementation of phigate's formats.

Written from docs/formats.md (sections 2.2, 3, 4, 5, 6 and 7), not from the C
code, with pyca/cryptography. The CLI tests use it to check that phigate's
output is readable by another implementation and that phigate reads data
written by one.
"""
import base64
import binascii
import json
import os
import re

from cryptography.exceptions import InvalidTag
from cryptography.fernet import Fernet, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

KID_RE = re.compile(r"[a-z0-9]{1,32}")
CREATED_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z")
INFO_PREFIX = b"phigate/phi/v1\x00"


# ---- 2.2 base64 -------------------------------------------------------------------

def b64encode(raw: bytes, url: bool, pad: bool) -> str:
    text = (base64.urlsafe_b64encode if url else base64.b64encode)(raw).decode("ascii")
    return text if pad else text.rstrip("=")


def b64decode_strict(text: str, url: bool, pad: bool) -> bytes:
    data = text
    if not pad:
        if "=" in text:
            raise ValueError("padding not allowed")
        data = text + "=" * (-len(text) % 4)
    try:
        raw = base64.b64decode(data, altchars=b"-_" if url else None, validate=True)
    except binascii.Error as e:
        raise ValueError("bad base64") from e
    if b64encode(raw, url, pad) != text:
        raise ValueError("not the canonical encoding")
    return raw


# ---- 3 / 4: master keys and wrapped DEKs ----------------------------------------------

def master_key_text(raw32: bytes) -> str:
    assert len(raw32) == 32
    return b64encode(raw32, url=True, pad=True)


def wrap_dek(master_key: str, dek: bytes, iv: bytes = None, when: int = None) -> str:
    """A Fernet token of the DEK (section 4.2); fixed iv/when only for vectors."""
    f = Fernet(master_key.encode("ascii"))
    if iv is None and when is None:
        return f.encrypt(dek).decode("ascii")
    # pyca/cryptography's documented-internal helper for fixed parts
    return f._encrypt_from_parts(dek, when, iv).decode("ascii")


def unwrap_dek(master_keys: list, token: str) -> bytes:
    b64decode_strict(token, url=True, pad=True)
    dek = MultiFernet([Fernet(k.encode("ascii")) for k in master_keys]).decrypt(
        token.encode("ascii"))
    if len(dek) != 32:
        raise ValueError("DEK is not 32 bytes")
    return dek


# ---- 5: phi1 ciphertexts ------------------------------------------------------------

class PhiFormatError(Exception):
    pass


class PhiAuthError(Exception):
    pass


def field_key(dek: bytes, context: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                info=INFO_PREFIX + context).derive(dek)


def phi1_encrypt(kid: str, dek: bytes, context: bytes, plaintext: bytes,
                 nonce: bytes = None) -> str:
    if not KID_RE.fullmatch(kid) or len(dek) != 32:
        raise ValueError("bad kid or DEK")
    if not 1 <= len(context) <= 512:
        raise ValueError("context must be 1..512 bytes")
    if nonce is None:
        nonce = os.urandom(12)
    header = "phi1." + kid
    sealed = AESGCM(field_key(dek, context)).encrypt(nonce, plaintext, header.encode("ascii"))
    return header + "." + b64encode(nonce + sealed, url=True, pad=False)


def phi1_decrypt(deks: dict, context: bytes, text: str) -> bytes:
    if not text.startswith("phi1."):
        raise PhiFormatError()
    if not 1 <= len(context) <= 512:
        raise ValueError("context must be 1..512 bytes")
    kid, dot, data = text[5:].partition(".")
    try:
        if not dot or not KID_RE.fullmatch(kid):
            raise ValueError()
        raw = b64decode_strict(data, url=True, pad=False)
        if len(raw) < 28:
            raise ValueError()
        key = field_key(deks[kid], context)
        return AESGCM(key).decrypt(raw[:12], raw[12:], b"phi1." + kid.encode("ascii"))
    except (ValueError, KeyError, InvalidTag):
        raise PhiAuthError() from None


def phi1_kid(text: str) -> str:
    assert text.startswith("phi1.")
    return text[5:].partition(".")[0]


# ---- 6: keyring files -------------------------------------------------------------

class KeyringError(Exception):
    pass


def _no_duplicates(pairs):
    if len({name for name, _ in pairs}) != len(pairs):
        raise KeyringError("duplicate member name")
    return dict(pairs)


def load_keyring(text: bytes, master_keys: list):
    """(primary, {kid: DEK of keys not destroyed}, {kid: state}, doc)."""
    doc = json.loads(text.decode("utf-8"), object_pairs_hook=_no_duplicates)
    if not isinstance(doc, dict) or set(doc) != {"format", "version", "primary", "keys"}:
        raise KeyringError("members")
    if doc["format"] != "phigate-keyring" or type(doc["version"]) is not int \
            or doc["version"] != 1:
        raise KeyringError("format or version")
    keys = doc["keys"]
    if not isinstance(keys, list) or not 1 <= len(keys) <= 4096:
        raise KeyringError("keys")
    states, deks = {}, {}
    for key in keys:
        state = key.get("state")
        if state not in ("active", "decrypt-only", "destroyed"):
            raise KeyringError("state")
        wanted = {"kid", "state", "created"} | (set() if state == "destroyed" else {"wrapped"})
        if set(key) != wanted:
            raise KeyringError("members of a key")
        kid = key["kid"]
        if not KID_RE.fullmatch(kid) or kid in states:
            raise KeyringError("kid")
        if not CREATED_RE.fullmatch(key["created"]):
            raise KeyringError("created")
        states[kid] = state
        if state != "destroyed":
            deks[kid] = unwrap_dek(master_keys, key["wrapped"])
    primary = doc["primary"]
    if states.get(primary) != "active" or list(states.values()).count("active") != 1:
        raise KeyringError("primary")
    return primary, deks, states, doc


def keyring_text(primary: str, keys: list) -> str:
    """keys: [{"kid", "state", "created", "wrapped"?}] in order (section 6.4)."""
    doc = {"format": "phigate-keyring", "version": 1, "primary": primary, "keys": keys}
    return json.dumps(doc, indent=2) + "\n"


def new_kid() -> str:
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    return "k" + "".join(alphabet[b % 36] for b in os.urandom(10))


# ---- 7: JSONL ---------------------------------------------------------------------

def compact_json(value) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def expand_template(template: str, fields: list, record: dict, field: str) -> bytes:
    """Context of section 7.3 from a parsed record (Python values)."""
    out, i = [], 0
    while i < len(template):
        if template.startswith("{{", i) or template.startswith("}}", i):
            out.append(template[i])
            i += 2
        elif template[i] == "{":
            j = template.index("}", i + 1)
            name = template[i + 1:j]
            assert name and name not in fields or name == "field"
            if name == "field":
                out.append(field)
            else:
                v = record[name]
                if isinstance(v, bool):
                    out.append("true" if v else "false")
                elif isinstance(v, str):
                    out.append(v)
                elif isinstance(v, int):
                    out.append(str(v))
                else:
                    raise ValueError("unsupported placeholder value in this helper")
            i = j + 1
        else:
            out.append(template[i])
            i += 1
    return "".join(out).encode("utf-8")
