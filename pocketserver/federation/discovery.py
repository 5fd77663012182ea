"""Server discovery: which address, port, ``Host`` header and TLS name reach a server.

Spec: shared/spec/content/server-server-api.md, "Resolving server names". In order:

1. the hostname is an IP literal: that IP, the given port or 8448; ``Host`` is the
   server name; the certificate must be valid for the IP;
2. an explicit port: the hostname's AAAA/A addresses and that port; ``Host`` is the
   server name; the certificate is checked for the hostname;
3. ``GET https://<hostname>/.well-known/matrix/server`` (redirects followed, loops
   avoided, cached with its expiry, errors cached for less). A valid ``m.server``
   gives ``<delegated_hostname>[:<delegated_port>]``, which then goes through:
   3.1 IP literal, 3.2 explicit port, 3.3 SRV ``_matrix-fed._tcp.<delegated>``,
   3.4 (deprecated) SRV ``_matrix._tcp.<delegated>``, 3.5 the delegated hostname on
   8448 -- ``Host`` and the certificate name are the delegated hostname (with the
   port in ``Host`` for 3.1 and 3.2);
4. no valid well-known: SRV ``_matrix-fed._tcp.<hostname>``;
5. (deprecated) SRV ``_matrix._tcp.<hostname>``;
6. the hostname's addresses on port 8448.

With SRV records (4, 5, 3.3, 3.4) ``Host`` and the certificate name stay the name the
SRV was looked up for, whatever host the record points at.

The decisions are the pure functions at the top (:func:`literal_target`,
:func:`parse_well_known`, :func:`srv_targets`, :func:`well_known_lifetime_s`), table
tested; :class:`ServerResolver` does the I/O around them and remembers what it did
(``Resolution.steps``) for ``pocketserver check-federation``.

DNS: dnspython's *synchronous* resolver run in a worker thread
(``trio.to_thread.run_sync``) with a bounded ``lifetime``. Its asyncio resolver does not
run under trio, and its low-level query functions over trio sockets would mean
re-implementing what the stub resolver already does right (resolv.conf, search
domains, retries over the nameservers, TCP fallback on truncation, its TTL cache); a
lookup is rare (results are cached) and a thread costs nothing while idle. Addresses
(A/AAAA) go through the system's resolver (``getaddrinfo``, which honours
``/etc/hosts``, so ``localhost:8448`` works) unless ``[federation] dns_servers`` names
nameservers, in which case every lookup asks them (tests run one on 127.0.0.1).
dnspython is imported on first use: an idle server never loads it.
"""

from __future__ import annotations

import email.utils
import ipaddress
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import trio

from pocketserver.config import parse_nameserver
from pocketserver.protocol.identifiers import InvalidIdentifier, parse_server_name

log = logging.getLogger("pocketserver.federation.discovery")

DEFAULT_PORT = 8448
WELL_KNOWN_PATH = "/.well-known/matrix/server"
WELL_KNOWN_MAX_BYTES = 50 * 1024
WELL_KNOWN_TIMEOUT_S = 10.0
WELL_KNOWN_MAX_REDIRECTS = 5
# The spec's recommendations: a day when the answer says nothing, at most two days;
# errors for up to an hour (we keep them ten minutes, so a fixed server is seen soon).
WELL_KNOWN_DEFAULT_CACHE_S = 24 * 3600.0
WELL_KNOWN_MIN_CACHE_S = 5 * 60.0
WELL_KNOWN_MAX_CACHE_S = 48 * 3600.0
WELL_KNOWN_ERROR_CACHE_S = 10 * 60.0
DNS_TIMEOUT_S = 5.0
# A resolved target list is reused this long (DNS answers change rarely).
RESOLUTION_CACHE_S = 5 * 60.0
CACHE_ENTRIES = 1000


@dataclass(frozen=True, slots=True)
class Target:
    """Where to connect for a server, and what to present there."""

    host: str  # a DNS name to resolve, or an IP literal (without brackets)
    port: int
    host_header: str  # the Host header
    tls_name: str  # the name the certificate must be valid for (and SNI)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port} (Host: {self.host_header}, TLS name: {self.tls_name})"


def _ip_literal(host: str) -> str | None:
    """The address of an IP-literal hostname (brackets removed), else None."""
    inner = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        return str(ipaddress.ip_address(inner))
    except ValueError:
        return None


def literal_target(server_name: str) -> Target | None:
    """Steps 1 and 2 (and 3.1, 3.2 for a delegated name): the target when the name is
    an IP literal or has an explicit port; None when discovery must go on.
    Raises :class:`InvalidIdentifier` for a name that is not a server name."""
    host, port = parse_server_name(server_name)
    ip = _ip_literal(host)
    if ip is not None:
        return Target(ip, port or DEFAULT_PORT, server_name, ip)
    if port is not None:
        return Target(host, port, server_name, host)
    return None


def parse_well_known(status: int, body: bytes) -> str | None:
    """The delegated server name of a ``/.well-known/matrix/server`` answer, or None
    when the answer is invalid (not 200, not JSON, no valid ``m.server``): step 3."""
    if status != 200:
        return None
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    delegated = doc.get("m.server") if isinstance(doc, dict) else None
    if not isinstance(delegated, str):
        return None
    try:
        parse_server_name(delegated)
    except InvalidIdentifier:
        return None
    return delegated


@dataclass(frozen=True, slots=True)
class SrvRecord:
    priority: int
    weight: int
    port: int
    target: str  # without the trailing dot


def srv_targets(records: Sequence[SrvRecord], name: str) -> list[Target]:
    """Targets from the SRV records found for ``name`` (steps 3.3, 3.4, 4, 5): lowest
    priority first, heavier weight first within one priority. A lone record whose
    target is ``.`` says the service is not offered (RFC 2782): no targets."""
    usable = [r for r in records if r.target not in ("", ".")]
    usable.sort(key=lambda r: (r.priority, -r.weight))
    return [Target(r.target, r.port, name, name) for r in usable]


def default_target(hostname: str) -> Target:
    """Steps 3.5 and 6: the hostname itself on port 8448."""
    return Target(hostname, DEFAULT_PORT, hostname, hostname)


def well_known_lifetime_s(headers: Mapping[str, str], ok: bool, now_s: float) -> float:
    """How long a well-known answer is kept. A valid answer: ``Cache-Control: max-age``
    (``no-store``/``no-cache`` mean the minimum), else ``Expires``, else a day; always
    between five minutes and two days. An invalid one: ten minutes."""
    if not ok:
        return WELL_KNOWN_ERROR_CACHE_S
    lifetime: float | None = None
    cache_control = headers.get("cache-control", "").lower()
    directives = [d.strip() for d in cache_control.split(",") if d.strip()]
    if "no-store" in directives or "no-cache" in directives:
        lifetime = 0.0
    else:
        for d in directives:
            name, _, value = d.partition("=")
            if name.strip() == "max-age" and value.strip().isdigit():
                lifetime = float(int(value.strip()))
    if lifetime is None and "expires" in headers:
        try:
            expires = email.utils.parsedate_to_datetime(headers["expires"]).timestamp()
            lifetime = expires - now_s
        except (TypeError, ValueError, IndexError, OverflowError):
            lifetime = 0.0  # an invalid Expires means already expired (RFC 9111 5.3)
    if lifetime is None:
        lifetime = WELL_KNOWN_DEFAULT_CACHE_S
    return min(max(lifetime, WELL_KNOWN_MIN_CACHE_S), WELL_KNOWN_MAX_CACHE_S)


# -- I/O -------------------------------------------------------------------------------


class DnsResolver:
    """SRV and address lookups (see the module's docstring for the choices)."""

    def __init__(self, nameservers: Sequence[str] = (), timeout_s: float = DNS_TIMEOUT_S) -> None:
        self.nameservers = [parse_nameserver(s) for s in nameservers]
        self.timeout_s = timeout_s
        self._resolver: Any = None

    def _dns(self) -> Any:
        if self._resolver is None:
            import dns.nameserver
            import dns.resolver

            if self.nameservers:
                r = dns.resolver.Resolver(configure=False)
                r.nameservers = [dns.nameserver.Do53Nameserver(ip, port) for ip, port in self.nameservers]
            else:
                try:
                    r = dns.resolver.Resolver()
                except dns.resolver.NoResolverConfiguration:
                    r = dns.resolver.Resolver(configure=False)
                    r.nameservers = ["127.0.0.1"]
            r.lifetime = self.timeout_s
            r.timeout = min(2.0, self.timeout_s)
            r.cache = dns.resolver.LRUCache(CACHE_ENTRIES)
            self._resolver = r
        return self._resolver

    async def _query(self, name: str, rdtype: str) -> list[Any]:
        import dns.exception
        import dns.resolver

        resolver = self._dns()

        def lookup() -> list[Any]:
            try:
                answer = resolver.resolve(name, rdtype, search=False, lifetime=self.timeout_s)
            except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer, dns.resolver.NoNameservers):
                return []
            except dns.exception.Timeout:
                log.info("DNS %s %s timed out", rdtype, name)
                return []
            except dns.exception.DNSException as e:
                log.info("DNS %s %s failed: %s", rdtype, name, e)
                return []
            return list(answer)

        with trio.move_on_after(self.timeout_s + 1.0):
            return await trio.to_thread.run_sync(lookup, abandon_on_cancel=True)
        return []

    async def srv(self, name: str) -> list[SrvRecord]:
        records = await self._query(name, "SRV")
        return [
            SrvRecord(r.priority, r.weight, r.port, r.target.to_text(omit_final_dot=True))
            for r in records
        ]

    async def addresses(self, host: str, port: int) -> list[str]:
        """The IP addresses of ``host`` (an IP literal gives itself), IPv6 first."""
        ip = _ip_literal(host)
        if ip is not None:
            return [ip]
        if self.nameservers:
            v6 = [r.address for r in await self._query(host, "AAAA")]
            v4 = [r.address for r in await self._query(host, "A")]
            return list(dict.fromkeys(v6 + v4))
        try:
            with trio.fail_after(self.timeout_s):
                infos = await trio.socket.getaddrinfo(host, port, type=trio.socket.SOCK_STREAM)
        except (OSError, UnicodeError, trio.TooSlowError):
            return []
        return list(dict.fromkeys(str(info[4][0]) for info in infos))


@dataclass
class Resolution:
    server_name: str
    targets: list[Target]
    steps: list[str] = field(default_factory=list)


# (status, lower-cased headers, body) of an HTTPS GET of a URL, following no redirect.
WellKnownFetch = Callable[[str, str], Awaitable[tuple[int, dict[str, str], bytes]]]


class ServerResolver:
    """Resolves server names with caches: well-known answers for their lifetime,
    whole target lists for five minutes (both bounded)."""

    def __init__(
        self,
        dns: DnsResolver,
        fetch: WellKnownFetch,
        now: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        well_known_port: int = 443,
    ) -> None:
        self.well_known_port = well_known_port
        self.dns = dns
        self.fetch = fetch
        self.now = now
        self.wall_clock = wall_clock
        self._well_known: OrderedDict[str, tuple[str | None, float, str]] = OrderedDict()
        self._resolutions: OrderedDict[str, tuple[Resolution, float]] = OrderedDict()

    def statistics(self) -> dict[str, int]:
        return {"well_known_cached": len(self._well_known), "resolutions_cached": len(self._resolutions)}

    async def resolve(self, server_name: str) -> Resolution:
        """The targets to try, in order, for ``server_name`` (raises
        :class:`InvalidIdentifier` for a malformed name)."""
        cached = self._resolutions.get(server_name)
        if cached is not None and cached[1] > self.now():
            return cached[0]
        res = await self._resolve(server_name)
        self._resolutions[server_name] = (res, self.now() + RESOLUTION_CACHE_S)
        self._resolutions.move_to_end(server_name)
        while len(self._resolutions) > CACHE_ENTRIES:
            self._resolutions.popitem(last=False)
        return res

    def forget(self, server_name: str) -> None:
        """Drop the cached targets (after every one of them failed)."""
        self._resolutions.pop(server_name, None)

    async def _resolve(self, server_name: str) -> Resolution:
        res = Resolution(server_name, [])
        direct = literal_target(server_name)
        if direct is not None:
            step = "1: IP literal" if _ip_literal(direct.host) else "2: explicit port"
            res.steps.append(f"step {step}: {direct}")
            res.targets = [direct]
            return res
        hostname = server_name
        delegated, note = await self.well_known(hostname)
        res.steps.append(f"step 3: GET https://{hostname}{WELL_KNOWN_PATH}: {note}")
        if delegated is not None:
            direct = literal_target(delegated)
            if direct is not None:
                step = "3.1: delegated IP literal" if _ip_literal(direct.host) else "3.2: delegated explicit port"
                res.steps.append(f"step {step}: {direct}")
                res.targets = [direct]
                return res
            res.targets = await self._srv_or_default(delegated, "3.3", "3.4", "3.5", res.steps)
            return res
        res.targets = await self._srv_or_default(hostname, "4", "5", "6", res.steps)
        return res

    async def _srv_or_default(
        self, name: str, fed_step: str, legacy_step: str, default_step: str, steps: list[str]
    ) -> list[Target]:
        for service, step in (("_matrix-fed._tcp", fed_step), ("_matrix._tcp", legacy_step)):
            records = await self.dns.srv(f"{service}.{name}")
            targets = srv_targets(records, name)
            if targets:
                listed = ", ".join(f"{t.host}:{t.port}" for t in targets)
                steps.append(f"step {step}: SRV {service}.{name}: {listed}")
                return targets
            steps.append(f"step {step}: SRV {service}.{name}: none")
        target = default_target(name)
        steps.append(f"step {default_step}: default port: {target}")
        return [target]

    async def well_known(self, hostname: str) -> tuple[str | None, str]:
        """Step 3: the delegated name (or None) and what happened, cached."""
        cached = self._well_known.get(hostname)
        if cached is not None and cached[1] > self.now():
            return cached[0], cached[2] + " (cached)"
        delegated: str | None = None
        note = ""
        headers: dict[str, str] = {}
        port = "" if self.well_known_port == 443 else f":{self.well_known_port}"
        url = f"https://{hostname}{port}{WELL_KNOWN_PATH}"
        seen = {url}
        try:
            with trio.fail_after(WELL_KNOWN_TIMEOUT_S):
                for _ in range(WELL_KNOWN_MAX_REDIRECTS + 1):
                    status, headers, body = await self.fetch(url, hostname)
                    location = headers.get("location")
                    if status in (301, 302, 303, 307, 308) and location:
                        from urllib.parse import urljoin, urlsplit

                        url = urljoin(url, location)
                        if urlsplit(url).scheme != "https":
                            note = f"redirect to a non-HTTPS URL {url}"
                            break
                        if url in seen:
                            note = f"redirect loop at {url}"
                            break
                        seen.add(url)
                        continue
                    delegated = parse_well_known(status, body)
                    note = (
                        f"m.server = {delegated}" if delegated is not None
                        else f"HTTP {status}, no valid m.server"
                    )
                    break
                else:
                    note = "too many redirects"
        except trio.TooSlowError:
            note = "timed out"
        except Exception as e:  # every failure means "no delegation" (Cancelled is not one)
            note = f"failed: {e}"
        lifetime = well_known_lifetime_s(headers, delegated is not None, self.wall_clock())
        self._well_known[hostname] = (delegated, self.now() + lifetime, note)
        self._well_known.move_to_end(hostname)
        while len(self._well_known) > CACHE_ENTRIES:
            self._well_known.popitem(last=False)
        return delegated, note
