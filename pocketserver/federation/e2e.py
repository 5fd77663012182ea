"""End-to-end encryption keys across servers.

Spec: shared/spec/content/server-server-api.md, "End-to-End Encryption" (``POST
/user/keys/query``, ``POST /user/keys/claim``), "Device Management" (``GET
/user/devices/{userId}``, ``m.device_list_update``, ``m.signing_key_update``), and
client-server-api/modules/end_to_end_encryption.md (``/keys/query`` and ``/keys/claim``
with remote users, ``device_lists``).

Outbound (for local clients): :meth:`FederatedKeys.query` and :meth:`FederatedKeys.claim`
take the remote part of a client's request, ask each server in parallel within the
client's timeout, and report the servers that did not answer under ``failures``. A
remote user who shares a room with a local user is *tracked*: their server tells us of
every device change, so their device list is cached (``remote_device_lists`` /
``remote_devices``) and resynced with ``GET /user/devices`` when the cache is stale or
an ``m.device_list_update`` shows a gap in stream IDs. Every change to a cached list
writes a device-list change row, so local clients see the user in ``device_lists.changed``.

Inbound (for the federation routes, which the transport wires): :meth:`user_devices`,
:meth:`query_local` and :meth:`claim_local` answer for local users;
:meth:`on_device_list_update` and :meth:`on_signing_key_update` are what the inbound
transaction handler calls for those EDUs.

Never forwarded to a client: a remote server's error body (a failure is a status and
a message of ours), or keys of users that are not on the server that sent them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import trio

from pocketserver.errors import BadJson, InvalidParam, NotFound
from pocketserver.federation.interfaces import (
    FederationError,
    FederationRequester,
    FederationUnreachable,
)
from pocketserver.storage import accounts, device_lists, e2e_keys
from pocketserver.storage import remote_devices as store
from pocketserver.storage.database import Conn, Database
from pocketserver.storage.streams import next_stream_pos

if TYPE_CHECKING:
    from pocketserver.services.clock import Clock
    from pocketserver.services.e2ee import E2eeService
    from pocketserver.services.notifier import Notifier

log = logging.getLogger(__name__)

JsonDict = dict[str, Any]
DEFAULT_TIMEOUT_S = 10.0
MAX_TIMEOUT_S = 60.0
# Background resyncs at once (each one GET /user/devices).
MAX_RESYNCS = 8
# Fetches in one resync when updates keep arriving while it is under way.
MAX_RESYNC_ROUNDS = 3
# Devices accepted in one remote user's list.
MAX_REMOTE_DEVICES = 1000


def _domain(user_id: str) -> str:
    return user_id.split(":", 1)[1] if ":" in user_id else ""


def _failure(status: int, message: str) -> JsonDict:
    return {"status": status, "message": message}


def _failure_of(exc: Exception) -> JsonDict:
    if isinstance(exc, FederationError):
        return _failure(exc.status, f"The server answered {exc.status} {exc.errcode}")
    return _failure(503, "The server could not be reached")


def _device_entry(user_id: str, device_id: str, keys: JsonDict, name: str | None) -> JsonDict:
    out = dict(keys)
    unsigned = dict(out.get("unsigned") or {})
    if name is not None:
        unsigned["device_display_name"] = name
    out["unsigned"] = unsigned
    return out


def _valid_device_keys(obj: Any, user_id: str, device_id: str) -> bool:
    return (
        isinstance(obj, dict)
        and obj.get("user_id") == user_id
        and obj.get("device_id") == device_id
        and isinstance(obj.get("keys"), dict)
    )


def _cacheable_device_keys(obj: Any, user_id: str, device_id: str) -> bool:
    """Keys a user's own server publishes for their device in ``GET /user/devices`` or
    ``m.device_list_update``: kept as sent (clients check the signatures), unless they
    name another user or device."""
    return (
        isinstance(obj, dict)
        and obj.get("user_id", user_id) == user_id
        and obj.get("device_id", device_id) == device_id
        and isinstance(obj.get("keys", {}), dict)
    )


def _valid_cross_signing(obj: Any, user_id: str) -> bool:
    return isinstance(obj, dict) and obj.get("user_id") == user_id and isinstance(obj.get("keys"), dict)


class _Resync:
    """One user's resync under way: who waits for it waits for ``done``."""

    __slots__ = ("again", "done", "ok")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.ok = False
        # An update came while the fetch was under way: its answer may predate it.
        self.again = False


class FederatedKeys:
    def __init__(
        self,
        db: Database,
        clock: Clock,
        notifier: Notifier,
        requester: FederationRequester,
        server_name: str,
        e2ee: E2eeService,
    ) -> None:
        self.db = db
        self.clock = clock
        self.notifier = notifier
        self.requester = requester
        self.server_name = server_name
        self.e2ee = e2ee
        self._nursery: trio.Nursery | None = None
        self._resyncs: dict[str, _Resync] = {}
        self._resync_limit = trio.CapacityLimiter(MAX_RESYNCS)

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Hold the nursery background resyncs run in (nothing runs until one is due)."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    # -- for local clients: /keys/query and /keys/claim with remote users -----------------

    async def query(
        self, requester: str, users: Mapping[str, list[str] | None], timeout_s: float | None = None
    ) -> tuple[JsonDict, JsonDict]:
        """Keys of remote ``users`` (user -> device IDs, None or [] for all):
        ({"device_keys", "master_keys", "self_signing_keys"}, failures by server)."""
        timeout = _timeout(timeout_s)
        plan = await self.db.read(self._plan_query, dict(users))
        out: JsonDict = {"device_keys": {}, "master_keys": {}, "self_signing_keys": {}}
        failures: JsonDict = {}
        by_server: dict[str, tuple[list[str], dict[str, list[str]]]] = {}
        cached: list[str] = []
        answered: set[str] = set()
        for user_id, how in plan.items():
            if how == "cached":
                cached.append(user_id)
                continue
            resync, forward = by_server.setdefault(_domain(user_id), ([], {}))
            if how == "resync":
                resync.append(user_id)
            else:
                forward[user_id] = list(users[user_id] or [])

        async def one_server(server: str, resync: list[str], forward: dict[str, list[str]]) -> None:
            try:
                for user_id in resync:
                    if await self.resync_user(user_id, timeout_s=timeout):
                        cached.append(user_id)
                    else:
                        forward[user_id] = list(users[user_id] or [])
                if forward:
                    answer = await self.requester.post_json(
                        server,
                        "/_matrix/federation/v1/user/keys/query",
                        {"device_keys": forward},
                        timeout_s=timeout,
                    )
                    _merge_query_answer(out, answer, forward, server)
            except (FederationError, FederationUnreachable) as e:
                failures[server] = _failure_of(e)
                return
            answered.add(server)

        with trio.move_on_after(timeout):
            async with trio.open_nursery() as nursery:
                for server, (resync, forward) in by_server.items():
                    nursery.start_soon(one_server, server, resync, forward)
        for server in by_server:
            if server not in answered and server not in failures:
                failures[server] = _failure(504, "The server did not answer in time")
        if cached:
            await self.db.read(self._answer_from_cache, users, cached, out)
        return out, failures

    def _plan_query(self, conn: Conn, users: dict[str, list[str] | None]) -> dict[str, str]:
        plan: dict[str, str] = {}
        for user_id in users:
            if not store.is_tracked(conn, user_id):
                # (A list cached earlier is ignored: we no longer hear of their changes.)
                plan[user_id] = "forward"
                continue
            lst = store.get_list(conn, user_id)
            plan[user_id] = "cached" if _current(conn, user_id, lst) else "resync"
        return plan

    @staticmethod
    def _answer_from_cache(
        conn: Conn, users: Mapping[str, list[str] | None], cached: list[str], out: JsonDict
    ) -> None:
        for user_id in cached:
            lst = store.get_list(conn, user_id)
            if lst is None:
                continue
            devices = store.get_devices(conn, user_id, users.get(user_id) or None)
            out["device_keys"][user_id] = {
                d: _device_entry(user_id, d, keys, name)
                for d, (keys, name) in devices.items()
                if keys is not None
            }
            if lst.master_key is not None:
                out["master_keys"][user_id] = lst.master_key
            if lst.self_signing_key is not None:
                out["self_signing_keys"][user_id] = lst.self_signing_key

    async def claim(
        self, wanted: Mapping[str, Mapping[str, str]], timeout_s: float | None = None
    ) -> tuple[JsonDict, JsonDict]:
        """One-time keys of remote devices (user -> device -> algorithm):
        (user -> device -> {key_id: key}, failures by server)."""
        timeout = _timeout(timeout_s)
        by_server: dict[str, dict[str, dict[str, str]]] = {}
        for user_id, devices in wanted.items():
            by_server.setdefault(_domain(user_id), {})[user_id] = dict(devices)
        claimed: JsonDict = {}
        failures: JsonDict = {}
        answered: set[str] = set()

        async def one_server(server: str, request: dict[str, dict[str, str]]) -> None:
            try:
                answer = await self.requester.post_json(
                    server,
                    "/_matrix/federation/v1/user/keys/claim",
                    {"one_time_keys": request},
                    timeout_s=timeout,
                )
            except (FederationError, FederationUnreachable) as e:
                failures[server] = _failure_of(e)
                return
            answered.add(server)
            keys = answer.get("one_time_keys") if isinstance(answer, dict) else None
            if not isinstance(keys, dict):
                return
            for user_id, per_device in keys.items():
                if user_id not in request or not isinstance(per_device, dict):
                    continue
                for device_id, otk in per_device.items():
                    if device_id in request[user_id] and isinstance(otk, dict):
                        claimed.setdefault(user_id, {})[device_id] = otk

        with trio.move_on_after(timeout):
            async with trio.open_nursery() as nursery:
                for server, request in by_server.items():
                    nursery.start_soon(one_server, server, request)
        for server in by_server:
            if server not in answered and server not in failures:
                failures[server] = _failure(504, "The server did not answer in time")
        return claimed, failures

    # -- device-list cache ----------------------------------------------------------------

    async def resync_user(self, user_id: str, *, timeout_s: float = MAX_TIMEOUT_S) -> bool:
        """Bring a remote user's cached device list up to date (``GET /user/devices``);
        whether that worked within ``timeout_s``. One resync per user at a time: a
        caller that comes while one is under way (started by a gap in the updates, or
        by another client's query) waits for it rather than asking again."""
        if self._nursery is None:
            return await self._fetch_devices(user_id, timeout_s)
        resync = self._start_resync(user_id)
        with trio.move_on_after(timeout_s):
            await resync.done.wait()
        return resync.ok

    def _start_resync(self, user_id: str) -> _Resync:
        resync = self._resyncs.get(user_id)
        if resync is None:
            assert self._nursery is not None
            resync = self._resyncs[user_id] = _Resync()
            self._nursery.start_soon(self._run_resync, user_id, resync)
        return resync

    async def _run_resync(self, user_id: str, resync: _Resync) -> None:
        try:
            async with self._resync_limit:
                for _ in range(MAX_RESYNC_ROUNDS):
                    resync.again = False
                    resync.ok = await self._fetch_devices(user_id, MAX_TIMEOUT_S)
                    if not resync.ok or not resync.again:
                        break
                if resync.ok and resync.again:
                    # Still changing: the next query fetches it again.
                    await self.db.write(store.mark_stale, user_id)
        finally:
            del self._resyncs[user_id]
            resync.done.set()

    async def _fetch_devices(self, user_id: str, timeout_s: float) -> bool:
        """Fetch a remote user's whole device list (``GET /user/devices``) into the cache;
        whether it worked."""
        server = _domain(user_id)
        try:
            answer = await self.requester.get_json(
                server,
                "/_matrix/federation/v1/user/devices/" + quote(user_id, safe=""),
                timeout_s=timeout_s,
            )
        except (FederationError, FederationUnreachable) as e:
            log.info("could not resync %s's devices: %s", user_id, e)
            return False
        if not isinstance(answer, dict) or answer.get("user_id") != user_id:
            return False
        stream_id = answer.get("stream_id")
        raw = answer.get("devices")
        if not isinstance(stream_id, int) or not isinstance(raw, list):
            return False
        devices: dict[str, tuple[JsonDict | None, str | None]] = {}
        for d in raw[:MAX_REMOTE_DEVICES]:
            if not isinstance(d, dict) or not isinstance(d.get("device_id"), str):
                continue
            device_id = d["device_id"]
            keys = d.get("keys")
            name = d.get("device_display_name")
            devices[device_id] = (
                keys if _cacheable_device_keys(keys, user_id, device_id) else None,
                name if isinstance(name, str) else None,
            )
        master = answer.get("master_key")
        ssk = answer.get("self_signing_key")
        pos = await self.db.write(
            self._store_resync,
            user_id,
            stream_id,
            devices,
            master if _valid_cross_signing(master, user_id) else None,
            ssk if _valid_cross_signing(ssk, user_id) else None,
        )
        if pos is not None:
            self.notifier.notify(pos)
        return True

    def _store_resync(
        self,
        conn: Conn,
        user_id: str,
        stream_id: int,
        devices: dict[str, tuple[JsonDict | None, str | None]],
        master: JsonDict | None,
        ssk: JsonDict | None,
    ) -> int | None:
        if not store.is_tracked(conn, user_id):
            store.forget(conn, user_id)
            return None
        before = store.get_list(conn, user_id)
        old_devices = store.get_devices(conn, user_id) if before is not None else None
        store.replace_list(conn, user_id, stream_id, devices, master, ssk, self.clock.time_ms())
        if (
            before is not None
            and old_devices == devices
            and before.master_key == master
            and before.self_signing_key == ssk
        ):
            return None
        pos = next_stream_pos(conn)
        device_lists.add_change(conn, pos, user_id)
        return pos

    def _resync_soon(self, user_id: str) -> None:
        if self._nursery is None:
            return
        under_way = self._resyncs.get(user_id)
        if under_way is not None:
            under_way.again = True
            return
        self._start_resync(user_id)

    # -- inbound EDUs (the transaction handler calls these) --------------------------------

    async def on_device_list_update(self, origin: str, content: Any) -> None:
        """``m.device_list_update`` from ``origin``: apply it to the cached list when it
        follows on from what we have (every ``prev_id`` seen), otherwise mark the list
        stale and resync it in the background."""
        if not isinstance(content, dict):
            return
        user_id = content.get("user_id")
        device_id = content.get("device_id")
        stream_id = content.get("stream_id")
        prev_ids = content.get("prev_id") or []
        if (
            not isinstance(user_id, str)
            or _domain(user_id) != origin
            or not isinstance(device_id, str)
            or not isinstance(stream_id, int)
            or not isinstance(prev_ids, list)
            or not all(isinstance(p, int) for p in prev_ids)
        ):
            return
        keys = content.get("keys")
        name = content.get("device_display_name")
        outcome, pos = await self.db.write(
            self._apply_update,
            user_id,
            device_id,
            stream_id,
            prev_ids,
            bool(content.get("deleted")),
            keys if _cacheable_device_keys(keys, user_id, device_id) else None,
            name if isinstance(name, str) else None,
        )
        if pos is not None:
            self.notifier.notify(pos)
        if outcome == "resync":
            self._resync_soon(user_id)

    def _apply_update(
        self,
        conn: Conn,
        user_id: str,
        device_id: str,
        stream_id: int,
        prev_ids: list[int],
        deleted: bool,
        keys: JsonDict | None,
        name: str | None,
    ) -> tuple[str, int | None]:
        if not store.is_tracked(conn, user_id):
            return "ignored", None
        lst = store.get_list(conn, user_id)
        if lst is None or lst.stream_id is None or not _current(conn, user_id, lst):
            store.mark_stale(conn, user_id)
            return "resync", None
        if stream_id <= lst.stream_id:
            return "old", None
        if any(p > lst.stream_id for p in prev_ids):
            # A change we never heard of came between: the cache cannot be patched.
            store.mark_stale(conn, user_id)
            pos = next_stream_pos(conn)
            device_lists.add_change(conn, pos, user_id)
            return "resync", pos
        if deleted:
            store.delete_device(conn, user_id, device_id)
        else:
            store.upsert_device(conn, user_id, device_id, keys, name)
        store.set_stream_id(conn, user_id, stream_id)
        pos = next_stream_pos(conn)
        device_lists.add_change(conn, pos, user_id)
        return "applied", pos

    async def on_signing_key_update(self, origin: str, content: Any) -> None:
        """``m.signing_key_update`` from ``origin``: the user's new cross-signing keys."""
        if not isinstance(content, dict):
            return
        user_id = content.get("user_id")
        if not isinstance(user_id, str) or _domain(user_id) != origin:
            return
        master = content.get("master_key")
        ssk = content.get("self_signing_key")
        master = master if _valid_cross_signing(master, user_id) else None
        ssk = ssk if _valid_cross_signing(ssk, user_id) else None
        if master is None and ssk is None:
            return

        def txn(conn: Conn) -> int | None:
            if not store.is_tracked(conn, user_id):
                return None
            if store.get_list(conn, user_id) is None:
                store.mark_stale(conn, user_id)
            store.set_cross_signing(conn, user_id, master, ssk)
            pos = next_stream_pos(conn)
            device_lists.add_change(conn, pos, user_id)
            return pos

        pos = await self.db.write(txn)
        if pos is not None:
            self.notifier.notify(pos)

    # -- inbound requests for local users (the federation routes call these) --------------

    async def user_devices(self, origin: str, user_id: str) -> JsonDict:
        """GET /_matrix/federation/v1/user/devices/{userId}"""
        if _domain(user_id) != self.server_name:
            raise InvalidParam("The user is not local to this server")

        def read(conn: Conn) -> JsonDict | None:
            if not accounts.user_exists(conn, user_id):
                return None
            row = conn.execute(
                "SELECT max(stream_pos) FROM device_list_changes"
                " WHERE user_id = ? AND only_for IS NULL",
                (user_id,),
            ).fetchone()
            devices = []
            for device_id, (keys, name) in sorted(
                e2e_keys.query_device_keys(conn, user_id, None).items()
            ):
                entry: JsonDict = {"device_id": device_id, "keys": keys}
                if name is not None:
                    entry["device_display_name"] = name
                devices.append(entry)
            out: JsonDict = {
                "user_id": user_id,
                "stream_id": int(row[0]) if row and row[0] is not None else 0,
                "devices": devices,
            }
            master = e2e_keys.get_cross_signing_key(conn, user_id, "master")
            ssk = e2e_keys.get_cross_signing_key(conn, user_id, "self_signing")
            if master is not None:
                out["master_key"] = master
            if ssk is not None:
                out["self_signing_key"] = ssk
            return out

        answer = await self.db.read(read)
        if answer is None:
            raise NotFound("Unknown user")
        return answer

    async def query_local(self, origin: str, body: Any) -> JsonDict:
        """POST /_matrix/federation/v1/user/keys/query: keys of this server's users (no
        user-signing keys: only their owner sees those)."""
        if not isinstance(body, dict) or not isinstance(body.get("device_keys"), dict):
            raise BadJson("'device_keys' must be an object")
        local = {
            u: d for u, d in body["device_keys"].items() if _domain(u) == self.server_name
        }
        answer = await self.e2ee.query_keys("", local)
        return {
            "device_keys": answer["device_keys"],
            "master_keys": answer["master_keys"],
            "self_signing_keys": answer["self_signing_keys"],
        }

    async def claim_local(self, origin: str, body: Any) -> JsonDict:
        """POST /_matrix/federation/v1/user/keys/claim: one-time keys of this server's
        users' devices, each given out once."""
        if not isinstance(body, dict) or not isinstance(body.get("one_time_keys"), dict):
            raise BadJson("'one_time_keys' must be an object")
        local = {
            u: d for u, d in body["one_time_keys"].items() if _domain(u) == self.server_name
        }
        answer = await self.e2ee.claim_keys(local)
        return {"one_time_keys": answer["one_time_keys"]}


def _current(conn: Conn, user_id: str, lst: store.RemoteList | None) -> bool:
    """A cached list that can be trusted: not stale, and fetched while the user was in a
    room with us (so no change of theirs went unheard since)."""
    return (
        lst is not None
        and not lst.stale
        and store.tracked_since(conn, user_id, lst.fetched_ts)
    )


def _timeout(timeout_s: float | None) -> float:
    if timeout_s is None:
        return DEFAULT_TIMEOUT_S
    return max(0.0, min(float(timeout_s), MAX_TIMEOUT_S))


def _merge_query_answer(
    out: JsonDict, answer: Any, asked: Mapping[str, list[str]], server: str
) -> None:
    """Take what ``server`` answered for the users asked of it, nothing else."""
    if not isinstance(answer, dict):
        return
    device_keys = answer.get("device_keys")
    if isinstance(device_keys, dict):
        for user_id, devices in device_keys.items():
            if user_id not in asked or not isinstance(devices, dict):
                continue
            wanted = set(asked[user_id])
            out["device_keys"][user_id] = {
                d: keys
                for d, keys in devices.items()
                if (not wanted or d in wanted) and _valid_device_keys(keys, user_id, d)
            }
    for section in ("master_keys", "self_signing_keys"):
        keys = answer.get(section)
        if not isinstance(keys, dict):
            continue
        for user_id, key in keys.items():
            if user_id in asked and _valid_cross_signing(key, user_id):
                out[section][user_id] = key
