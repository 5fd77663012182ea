"""A fake end-to-end-encryption device for tests and benchmarks: real Ed25519 keys and
signatures (PyNaCl), so the server's signature checks are exercised, without an Olm
library. Cross-signing keys too.
"""

from __future__ import annotations

import base64
import os
from typing import Any

import httpx
import nacl.signing

from pocketserver.protocol.canonical_json import encode_canonical_json

JsonDict = dict[str, Any]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def sign(obj: JsonDict, user_id: str, key_id: str, key: nacl.signing.SigningKey) -> JsonDict:
    """A copy of ``obj`` with ``user_id``'s signature by ``key_id`` added."""
    unsigned = {k: v for k, v in obj.items() if k not in ("signatures", "unsigned")}
    sig = b64(key.sign(encode_canonical_json(unsigned)).signature)
    sigs = {u: dict(s) for u, s in (obj.get("signatures") or {}).items()}
    sigs.setdefault(user_id, {})[key_id] = sig
    return {**obj, "signatures": sigs}


class FakeDevice:
    def __init__(self, user_id: str, device_id: str, token: str = "") -> None:
        self.user_id = user_id
        self.device_id = device_id
        self.token = token
        self.ed = nacl.signing.SigningKey.generate()
        self.ed_pub = b64(bytes(self.ed.verify_key))
        self.curve_pub = b64(os.urandom(32))
        self._next_key = 0

    @property
    def ed_key_id(self) -> str:
        return f"ed25519:{self.device_id}"

    def device_keys(self) -> JsonDict:
        return sign(
            {
                "user_id": self.user_id,
                "device_id": self.device_id,
                "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
                "keys": {
                    f"curve25519:{self.device_id}": self.curve_pub,
                    self.ed_key_id: self.ed_pub,
                },
            },
            self.user_id,
            self.ed_key_id,
            self.ed,
        )

    def signed_key(self, fallback: bool = False) -> tuple[str, JsonDict]:
        self._next_key += 1
        key_id = f"AAAA{self._next_key:04d}{'F' if fallback else ''}"
        obj: JsonDict = {"key": b64(os.urandom(32))}
        if fallback:
            obj["fallback"] = True
        return f"signed_curve25519:{key_id}", sign(obj, self.user_id, self.ed_key_id, self.ed)

    def one_time_keys(self, n: int) -> JsonDict:
        return dict(self.signed_key() for _ in range(n))

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    async def upload(self, http: httpx.AsyncClient, otks: int = 0, fallback: bool = False) -> JsonDict:
        body: JsonDict = {"device_keys": self.device_keys()}
        if otks:
            body["one_time_keys"] = self.one_time_keys(otks)
        if fallback:
            body["fallback_keys"] = dict([self.signed_key(fallback=True)])
        r = await http.post("/_matrix/client/v3/keys/upload", json=body, headers=self.headers())
        assert r.status_code == 200, r.text
        return dict(r.json())


class CrossSigning:
    """A user's master, self-signing and user-signing keys."""

    def __init__(self, user_id: str) -> None:
        self.user_id = user_id
        self.master = nacl.signing.SigningKey.generate()
        self.ssk = nacl.signing.SigningKey.generate()
        self.usk = nacl.signing.SigningKey.generate()

    @staticmethod
    def pub(key: nacl.signing.SigningKey) -> str:
        return b64(bytes(key.verify_key))

    def key_obj(self, usage: str, key: nacl.signing.SigningKey) -> JsonDict:
        p = self.pub(key)
        return {"user_id": self.user_id, "usage": [usage], "keys": {f"ed25519:{p}": p}}

    def master_key(self) -> JsonDict:
        return self.key_obj("master", self.master)

    def self_signing_key(self) -> JsonDict:
        mp = self.pub(self.master)
        return sign(self.key_obj("self_signing", self.ssk), self.user_id, f"ed25519:{mp}", self.master)

    def user_signing_key(self) -> JsonDict:
        mp = self.pub(self.master)
        return sign(self.key_obj("user_signing", self.usk), self.user_id, f"ed25519:{mp}", self.master)

    def upload_body(self) -> JsonDict:
        return {
            "master_key": self.master_key(),
            "self_signing_key": self.self_signing_key(),
            "user_signing_key": self.user_signing_key(),
        }

    def sign_device(self, device_keys: JsonDict) -> JsonDict:
        sp = self.pub(self.ssk)
        return sign(device_keys, self.user_id, f"ed25519:{sp}", self.ssk)

    def sign_other_master(self, master: JsonDict) -> JsonDict:
        up = self.pub(self.usk)
        return sign(master, self.user_id, f"ed25519:{up}", self.usk)
