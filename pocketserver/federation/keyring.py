"""The key ring: other servers' signing keys, fetched, checked and cached.

Spec: shared/spec/content/server-server-api.md, "Retrieving server keys".

:meth:`KeyRing.verify_keys` (the :class:`~pocketserver.federation.interfaces.KeyLookup`
the services use) answers from the ``server_keys`` table when it can (the keys last read
from it are kept in memory, bounded, and dropped when that server's keys are stored
again). For keys it does
not have, or that are not valid until the time asked about, it fetches, in order:

1. ``GET /_matrix/key/v2/server`` from the server itself: the answer must be for that
   server and signed by a key it lists (:func:`pocketserver.protocol.server_keys.parse_key_response`);
2. ``POST /_matrix/key/v2/query`` from each ``[federation] trusted_key_servers`` notary
   (none by default): each answer must also be signed by the notary.

Current keys are kept with ``valid_until_ts``, capped at seven days after they were
fetched (room versions 5 and later ask for that); old keys with their ``expired_ts``,
so the key that signed an old event is still found. One fetch per server runs at a
time (the others wait for it), and a server that did not give what was asked is not
asked again for :data:`RETRY_AFTER_S` (no refetch storm from a flood of requests signed
with an unknown key). This server's own key is always known.

The last good key response of each server (bounded) is kept as received, with its
signatures, for the notary endpoints (``/_matrix/key/v2/query``).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Collection, Mapping, Sequence
from typing import Any, Protocol

import trio

from pocketserver.config import TrustedKeyServer
from pocketserver.federation.interfaces import FederationError, FederationUnreachable
from pocketserver.protocol.server_keys import KeyResponseError, ServerKeys, parse_key_response
from pocketserver.protocol.signing import (
    KeyFormatError,
    SignatureError,
    SigningKey,
    decode_verify_key_base64,
    sign_json,
    signature_key_ids,
    verify_json,
)
from pocketserver.services.clock import Clock
from pocketserver.storage import server_keys as store
from pocketserver.storage.database import Database

log = logging.getLogger("pocketserver.federation.keyring")

KEY_PATH = "/_matrix/key/v2/server"
QUERY_PATH = "/_matrix/key/v2/query"
# How long other servers may cache our key response.
OWN_KEY_VALIDITY_MS = 7 * 24 * 3600 * 1000
# Room versions 5+: a key's validity is at most seven days after it was fetched.
MAX_VALIDITY_MS = 7 * 24 * 3600 * 1000
RETRY_AFTER_S = 30.0
FETCH_TIMEOUT_S = 15.0
MAX_KEY_RESPONSE = 256 * 1024
MAX_NOTARY_RESPONSE = 4 * 1024 * 1024
RESPONSES_KEPT = 256
# Responses kept per server (a newer one that lacks a key an older one holds does not
# replace it: a notary must not forget a key because its server did).
RESPONSES_PER_SERVER = 4
# Verify keys kept in memory after a read from the table: checking a big room's
# send_join answer asks for the same key tens of thousands of times.
KEYS_KEPT = 1024


class KeyRequester(Protocol):
    """What the key ring needs of the federation client."""

    async def get_json(
        self, destination: str, path: str, query: Any = None, *, timeout_s: float = ...,
        max_size: int = ..., signed: bool = ...,
    ) -> Any: ...

    async def post_json(
        self, destination: str, path: str, body: Any, query: Any = None, *,
        timeout_s: float = ..., max_size: int = ..., signed: bool = ...,
    ) -> Any: ...


class KeyRing:
    def __init__(
        self,
        db: Database,
        clock: Clock,
        server_name: str,
        signing_key: SigningKey,
        requester: KeyRequester,
        trusted_key_servers: Sequence[TrustedKeyServer] = (),
    ) -> None:
        self.db = db
        self.clock = clock
        self.server_name = server_name
        self.signing_key = signing_key
        self.requester = requester
        self.trusted = list(trusted_key_servers)
        self._fetching: dict[str, trio.Event] = {}
        self._attempted: dict[str, float] = {}  # server -> monotonic time of an unfruitful fetch
        self._responses: OrderedDict[str, list[dict[str, Any]]] = OrderedDict()
        # (server, key ID) -> (raw key, valid_until_ts) as last read from the table
        self._keys: OrderedDict[tuple[str, str], tuple[bytes, int]] = OrderedDict()

    def statistics(self) -> dict[str, int]:
        return {
            "responses_kept": len(self._responses),
            "fetches_in_flight": len(self._fetching),
            "keys_kept": len(self._keys),
        }

    # -- our own keys ------------------------------------------------------------------

    def own_key_response(self) -> dict[str, Any]:
        """``GET /_matrix/key/v2/server``'s answer: our key, self-signed."""
        body = {
            "server_name": self.server_name,
            "verify_keys": {self.signing_key.key_id: {"key": self.signing_key.verify_key_base64}},
            "old_verify_keys": {},
            "valid_until_ts": self.clock.time_ms() + OWN_KEY_VALIDITY_MS,
        }
        return sign_json(body, self.server_name, self.signing_key)

    # -- KeyLookup ---------------------------------------------------------------------

    async def verify_keys(
        self, server_name: str, key_ids: Collection[str], *, minimum_valid_until_ts: int
    ) -> dict[str, bytes]:
        if server_name == self.server_name:
            if self.signing_key.key_id in key_ids:
                return {self.signing_key.key_id: bytes(self.signing_key.verify_key)}
            return {}
        wanted = [k for k in key_ids if isinstance(k, str)]
        found = await self._stored(server_name, wanted, minimum_valid_until_ts)
        if len(found) == len(set(wanted)):
            return found
        await self._fetch_once(server_name, wanted, minimum_valid_until_ts)
        return await self._stored(server_name, wanted, minimum_valid_until_ts)

    async def _stored(self, server_name: str, key_ids: list[str], min_ts: int) -> dict[str, bytes]:
        kept = [self._keys.get((server_name, k)) for k in key_ids]
        if key_ids and all(v is not None and v[1] >= min_ts for v in kept):
            return {k: v[0] for k, v in zip(key_ids, kept, strict=True) if v is not None}
        rows = await self.db.read(store.get_keys, server_name, key_ids)
        for k, row in rows.items():
            self._keys[(server_name, k)] = row
            self._keys.move_to_end((server_name, k))
        while len(self._keys) > KEYS_KEPT:
            self._keys.popitem(last=False)
        return {k: raw for k, (raw, valid_until) in rows.items() if valid_until >= min_ts}

    async def _fetch_once(self, server_name: str, key_ids: list[str], min_ts: int) -> None:
        """Fetch ``server_name``'s keys unless a fetch is running (then wait for it) or
        one was unfruitful less than RETRY_AFTER_S ago."""
        running = self._fetching.get(server_name)
        if running is not None:
            await running.wait()
            return
        last = self._attempted.get(server_name)
        if last is not None and self.clock.monotonic() - last < RETRY_AFTER_S:
            return
        done = self._fetching[server_name] = trio.Event()
        try:
            ok = await self._fetch_direct(server_name)
            if ok:
                ok = len(await self._stored(server_name, key_ids, min_ts)) == len(set(key_ids))
            if not ok:
                for notary in self.trusted:
                    if notary.server_name == server_name:
                        continue
                    if await self._fetch_from_notary(notary, server_name, key_ids, min_ts):
                        ok = len(await self._stored(server_name, key_ids, min_ts)) == len(set(key_ids))
                        if ok:
                            break
            if ok:
                self._attempted.pop(server_name, None)
            else:
                self._attempted[server_name] = self.clock.monotonic()
                if len(self._attempted) > 10_000:
                    self._attempted.clear()
        finally:
            del self._fetching[server_name]
            done.set()

    async def _fetch_direct(self, server_name: str) -> bool:
        try:
            with trio.fail_after(FETCH_TIMEOUT_S):
                response = await self.requester.get_json(
                    server_name, KEY_PATH, timeout_s=FETCH_TIMEOUT_S, max_size=MAX_KEY_RESPONSE, signed=False
                )
            keys = parse_key_response(response, server_name)
        except (FederationError, FederationUnreachable, KeyResponseError, trio.TooSlowError) as e:
            log.info("keys of %s: %s", server_name, e)
            return False
        await self._store(keys, response)
        return True

    async def _fetch_from_notary(
        self, notary: TrustedKeyServer, server_name: str, key_ids: list[str], min_ts: int
    ) -> bool:
        criteria = {k: {"minimum_valid_until_ts": min_ts} for k in key_ids}
        try:
            with trio.fail_after(FETCH_TIMEOUT_S):
                answer = await self.requester.post_json(
                    notary.server_name,
                    QUERY_PATH,
                    {"server_keys": {server_name: criteria}},
                    timeout_s=FETCH_TIMEOUT_S,
                    max_size=MAX_NOTARY_RESPONSE,
                )
        except (FederationError, FederationUnreachable, trio.TooSlowError) as e:
            log.info("keys of %s from notary %s: %s", server_name, notary.server_name, e)
            return False
        listed = answer.get("server_keys") if isinstance(answer, dict) else None
        if not isinstance(listed, list):
            return False
        stored = False
        for response in listed:
            if not isinstance(response, Mapping) or response.get("server_name") != server_name:
                continue
            try:
                keys = parse_key_response(response, server_name)
                await self._check_notary_signature(notary, response)
            except (KeyResponseError, SignatureError) as e:
                log.info("notary %s's copy of %s's keys: %s", notary.server_name, server_name, e)
                continue
            await self._store(keys, dict(response))
            stored = True
        return stored

    async def _check_notary_signature(self, notary: TrustedKeyServer, response: Mapping[str, Any]) -> None:
        key_ids = signature_key_ids(response, notary.server_name)
        for key_id in key_ids:
            if notary.verify_keys:
                b64 = notary.verify_keys.get(key_id)
                if b64 is None:
                    continue
                try:
                    key = decode_verify_key_base64(b64)
                except KeyFormatError:
                    continue
            else:
                raw = (await self.verify_keys(
                    notary.server_name, [key_id], minimum_valid_until_ts=self.clock.time_ms()
                )).get(key_id)
                if raw is None:
                    continue
                key = decode_verify_key_base64_raw(raw)
            verify_json(response, notary.server_name, key_id, key)
            return
        raise SignatureError(f"not signed by notary {notary.server_name} with a key it trusts")

    async def _store(self, keys: ServerKeys, response: dict[str, Any]) -> None:
        now = self.clock.time_ms()
        capped = min(keys.valid_until_ts, now + MAX_VALIDITY_MS)
        rows: list[store.KeyRow] = [(k, raw, capped, None) for k, raw in keys.verify_keys.items()]
        rows += [(k, raw, exp, exp) for k, (raw, exp) in keys.old_verify_keys.items() if k not in keys.verify_keys]
        await self.db.write(store.upsert_keys, keys.server_name, rows, now)
        for key in [k for k in self._keys if k[0] == keys.server_name]:
            del self._keys[key]  # read again from the table, as now stored
        held = set(_key_ids(response))
        kept = [
            r for r in self._responses.get(keys.server_name, [])
            # dropped: those whose keys the new one holds, and is valid as long as
            if not (set(_key_ids(r)) <= held and r.get("valid_until_ts", 0) <= keys.valid_until_ts)
        ]
        kept.append(response)
        self._responses[keys.server_name] = kept[-RESPONSES_PER_SERVER:]
        self._responses.move_to_end(keys.server_name)
        while len(self._responses) > RESPONSES_KEPT:
            self._responses.popitem(last=False)

    # -- the notary --------------------------------------------------------------------

    async def notary_responses(
        self, server_name: str, minimum_valid_until_ts: int, key_ids: Sequence[str] = ()
    ) -> list[dict[str, Any]]:
        """``server_name``'s key responses as received, each also signed by us
        (``/_matrix/key/v2/query``): those kept that hold the keys asked (``key_ids``;
        none: the newest) when valid until the time asked, else a fresh one fetched
        from the server added to them; none when it cannot be had."""
        if server_name == self.server_name:
            return [self.own_key_response()]
        if not self._has(server_name, minimum_valid_until_ts, key_ids):
            running = self._fetching.get(server_name)
            # Backing off per server and keys asked: a key not asked for before is
            # worth one fetch even just after an unfruitful one for others.
            attempt = " ".join([server_name, *sorted(key_ids)])
            last = self._attempted.get(attempt)
            if running is not None:
                await running.wait()
            elif last is None or self.clock.monotonic() - last >= RETRY_AFTER_S:
                done = self._fetching[server_name] = trio.Event()
                try:
                    if await self._fetch_direct(server_name):
                        self._attempted.pop(attempt, None)
                    else:
                        if len(self._attempted) > 10_000:
                            self._attempted.clear()
                        self._attempted[attempt] = self.clock.monotonic()
                finally:
                    del self._fetching[server_name]
                    done.set()
        kept = self._responses.get(server_name, [])
        chosen = [r for r in kept if set(key_ids) & set(_key_ids(r))] if key_ids else []
        if not chosen and kept:
            chosen = [max(kept, key=lambda r: int(r.get("valid_until_ts", 0)))]
        return [sign_json(r, self.server_name, self.signing_key) for r in chosen]

    def _has(self, server_name: str, minimum_valid_until_ts: int, key_ids: Sequence[str]) -> bool:
        valid = [
            r for r in self._responses.get(server_name, [])
            if r.get("valid_until_ts", 0) >= minimum_valid_until_ts
        ]
        if not key_ids:
            return bool(valid)
        return all(any(k in _key_ids(r) for r in valid) for k in key_ids)


def _key_ids(response: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for section in ("verify_keys", "old_verify_keys"):
        keys = response.get(section)
        if isinstance(keys, dict):
            out.extend(keys)
    return out


def decode_verify_key_base64_raw(raw: bytes) -> Any:
    import nacl.signing

    return nacl.signing.VerifyKey(raw)
