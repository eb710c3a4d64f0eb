"""Joining: a netbooted node asks the neighbour that booted it for the site.

The newcomer presents its hardware identity and a fresh X25519 public key. The
site's policy decides: `manual` (an operator approves it from any node),
`allow` (its hardware identity or a MAC matches a glob of the site's list), or
`auto` (labs). Once approved, it receives the site file sealed to its key
(X25519 + HKDF-SHA256 + ChaCha20-Poly1305), readable by nobody else on the
cable. Approvals between members carry an HMAC made with the site's secret.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import hmac
import json
import os
import re
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

POLICIES = ("manual", "allow", "auto")
NODE_ID = re.compile(r"^[0-9a-f]{16}$")
MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


class JoinError(ValueError):
    """A request or answer that is malformed, or that does not open."""


@dataclass(frozen=True)
class JoinRequest:
    node_id: str  # mesh.plan's, from the hardware identity
    hardware: str  # e.g. "dmi:4c4c4544-…" or "mac:52:54:00:…"
    macs: tuple[str, ...]  # the node's permanent MACs
    public_key: bytes  # X25519, 32 bytes

    @property
    def fingerprint(self) -> str:
        """What an operator compares before approving: the joining PC's console shows
        it, `kubermesh nodes pending` shows what the neighbour received (the first
        80 bits of the key's SHA-256, in five groups)."""
        h = hashlib.sha256(self.public_key).hexdigest()[:20]
        return "-".join(h[i:i + 4] for i in range(0, 20, 4))

    def to_json(self) -> dict[str, Any]:
        return {"node_id": self.node_id, "hardware": self.hardware, "macs": list(self.macs),
                "public_key": base64.b64encode(self.public_key).decode()}

    @classmethod
    def from_json(cls, data: Any) -> JoinRequest:
        """Validated: JoinError names the field at fault."""
        if not isinstance(data, dict):
            raise JoinError("a join request is a JSON object")
        node_id, hardware, macs = data.get("node_id"), data.get("hardware"), data.get("macs")
        if not isinstance(node_id, str) or not NODE_ID.match(node_id):
            raise JoinError("node_id: not 16 hex digits")
        if not isinstance(hardware, str) or not 0 < len(hardware) <= 200:
            raise JoinError("hardware: not a hardware identity")
        if (not isinstance(macs, list) or len(macs) > 64
                or not all(isinstance(m, str) and MAC.match(m) for m in macs)):
            raise JoinError("macs: not a list of MAC addresses")
        try:
            key = base64.b64decode(str(data.get("public_key", "")), validate=True)
        except ValueError:
            key = b""
        if len(key) != 32:
            raise JoinError("public_key: not a base64 X25519 public key")
        return cls(node_id, hardware, tuple(macs), key)


def decide(policy: str, allow: tuple[str, ...], request: JoinRequest) -> str:
    """"approved" or "pending", by the site's policy."""
    if policy == "auto":
        return "approved"
    if policy == "allow" and any(fnmatch.fnmatchcase(x, glob) for glob in allow
                                 for x in (request.hardware, *request.macs)):
        return "approved"
    return "pending"


def new_key() -> tuple[X25519PrivateKey, bytes]:
    key = X25519PrivateKey.generate()
    return key, key.public_key().public_bytes_raw()


def _aead_key(shared: bytes, context: bytes) -> ChaCha20Poly1305:
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                info=b"kubermesh-join\0" + context)
    return ChaCha20Poly1305(hkdf.derive(shared))


def seal(public_key: bytes, plaintext: bytes, context: bytes) -> dict[str, str]:
    """plaintext sealed to public_key: only its private key opens it. `context` (the
    request's node id) is bound in, so a box cannot be replayed to another request."""
    ephemeral = X25519PrivateKey.generate()
    shared = ephemeral.exchange(X25519PublicKey.from_public_bytes(public_key))
    nonce = os.urandom(12)
    box = _aead_key(shared, context).encrypt(nonce, plaintext, context)
    return {"ephemeral": base64.b64encode(ephemeral.public_key().public_bytes_raw()).decode(),
            "nonce": base64.b64encode(nonce).decode(),
            "box": base64.b64encode(box).decode()}


def open_sealed(key: X25519PrivateKey, sealed: Any, context: bytes) -> bytes:
    try:
        ephemeral = X25519PublicKey.from_public_bytes(base64.b64decode(sealed["ephemeral"]))
        nonce, box = base64.b64decode(sealed["nonce"]), base64.b64decode(sealed["box"])
        return _aead_key(key.exchange(ephemeral), context).decrypt(nonce, box, context)
    except (KeyError, TypeError, ValueError, InvalidTag) as e:
        raise JoinError(f"the sealed site does not open with this node's key ({e!r})") from None


def approval_mac(secret: str, node_id: str) -> str:
    """What a member sends with an approval: proof that it holds the site's secrets."""
    key = hashlib.sha256(b"kubermesh-approve\0" + secret.encode()).digest()
    return hmac.new(key, node_id.encode(), hashlib.sha256).hexdigest()


def approval_ok(secret: str, node_id: str, mac: str) -> bool:
    return hmac.compare_digest(approval_mac(secret, node_id), mac)


def dumps(data: Any) -> bytes:
    return json.dumps(data, sort_keys=True).encode()
