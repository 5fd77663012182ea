"""URL previews: fetch a page (bounded in size and time), read its OpenGraph data, cache.

Spec: authed-content-repo.yaml, ``GET /_matrix/client/v1/media/preview_url``: the answer
is the page's OpenGraph properties, with ``og:image`` replaced by an ``mxc://`` URI of a
copy stored in the media repository and ``matrix:image:size`` its size.

Outbound requests are the server acting for a user, so they must not reach the server's
own network: every address a name resolves to must be public (or inside
``media.url_preview_ip_allowlist``), and the connection is made to the checked address
itself, so a DNS answer cannot change between check and use. Each redirect hop is
checked again.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import Any
from urllib.parse import urljoin, urlsplit

import trio

from pocketserver.config import Config
from pocketserver.errors import Forbidden, InvalidParam, MatrixError
from pocketserver.services.clock import Clock
from pocketserver.services.outbound import OUTBOUND_ERRORS, IpPolicy, Outbound, OutboundError
from pocketserver.services.params import digits
from pocketserver.storage import media as store
from pocketserver.storage.database import Database

log = logging.getLogger("pocketserver.url_preview")

CACHE_MS = 3600 * 1000
MAX_REDIRECTS = 5
MAX_HEADER_BYTES = 64 * 1024
USER_AGENT = "pocketserver URL preview (Matrix homeserver)"


class FetchError(OutboundError):
    pass


class BlockedAddress(FetchError):
    pass


@dataclass(frozen=True, slots=True)
class Fetched:
    url: str
    status: int
    content_type: str
    body: bytes
    truncated: bool


class UrlPreviewService:
    def __init__(
        self, config: Config, db: Database, clock: Clock, media: Any, outbound: Outbound
    ) -> None:
        self.cfg = config.media
        self.outbound = outbound
        self.db = db
        self.clock = clock
        self.media = media
        self.policy = IpPolicy(self.cfg.url_preview_ip_allowlist)

    async def preview(self, url: str, user_id: str) -> dict[str, Any]:
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 - raises ValueError for a port that is not one
        except ValueError:
            raise InvalidParam("url is not a valid URL") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InvalidParam("url must be an absolute http(s) URL")
        now = self.clock.time_ms()
        cached = await self.db.read(store.get_url_preview, url, now)
        if cached is not None:
            return cached
        try:
            with trio.fail_after(self.cfg.url_preview_timeout_seconds):
                page = await self.fetch(url, self.cfg.url_preview_max_size, allow_truncate=True)
        except BlockedAddress:
            raise Forbidden("This URL's address may not be fetched") from None
        except OUTBOUND_ERRORS as e:
            log.info("preview of %s failed: %s", url, e)
            raise MatrixError(502, "M_UNKNOWN", "Failed to fetch the URL") from None
        if page.status >= 400:
            raise MatrixError(502, "M_UNKNOWN", f"The URL answered HTTP {page.status}")
        og: dict[str, Any]
        ctype = page.content_type.split(";", 1)[0].strip().lower()
        if ctype.startswith("image/"):
            if page.truncated:
                og = {}
            else:
                og = {"og:title": page.url.rsplit("/", 1)[-1] or page.url}
                await self._attach_image(og, page, user_id)
        elif ctype in ("text/html", "application/xhtml+xml"):
            og = parse_html(page.body, _charset(page.content_type))
            image = og.pop("og:image", None)
            if isinstance(image, str) and image:
                await self._fetch_image(og, page.url, image, user_id)
        else:
            og = {}
        await self.db.write(store.upsert_url_preview, url, og, now, now + CACHE_MS)
        return og

    async def _fetch_image(self, og: dict[str, Any], page_url: str, image: str, user_id: str) -> None:
        try:
            url = urljoin(page_url, image)
            if urlsplit(url).scheme not in ("http", "https"):
                return
        except ValueError:  # the page's og:image is no URL
            return
        try:
            with trio.fail_after(self.cfg.url_preview_timeout_seconds):
                img = await self.fetch(url, self.cfg.url_preview_max_size, allow_truncate=False)
        except OUTBOUND_ERRORS as e:
            log.info("preview image %s failed: %s", url, e)
            return
        if img.status < 400 and img.content_type.lower().startswith("image/"):
            await self._attach_image(og, img, user_id)

    async def _attach_image(self, og: dict[str, Any], img: Fetched, user_id: str) -> None:
        ctype = img.content_type.split(";", 1)[0].strip().lower()
        dims = await trio.to_thread.run_sync(_image_size, img.body)
        if dims is None:
            return
        filename = urlsplit(img.url).path.rsplit("/", 1)[-1] or None
        mxc, size = await self.media.store_bytes(user_id, img.body, ctype, filename)
        og["og:image"] = mxc
        og["og:image:type"] = ctype
        og["og:image:width"], og["og:image:height"] = dims
        og["matrix:image:size"] = size

    # -- the HTTP fetch --------------------------------------------------------------

    async def fetch(self, url: str, max_size: int, *, allow_truncate: bool) -> Fetched:
        """GET ``url`` following redirects; the body up to ``max_size`` bytes."""
        for _ in range(MAX_REDIRECTS + 1):
            result, location = await self._fetch_once(url, max_size, allow_truncate)
            if location is None:
                assert result is not None
                return result
            try:
                url = urljoin(url, location)
                scheme = urlsplit(url).scheme
            except ValueError:
                raise FetchError(f"redirect to a malformed URL {location!r}") from None
            if scheme not in ("http", "https"):
                raise FetchError("redirect to a non-HTTP URL")
        raise FetchError("too many redirects")

    async def _connect(self, host: str, port: int, tls: bool) -> trio.abc.Stream:
        infos = await trio.socket.getaddrinfo(host, port, type=trio.socket.SOCK_STREAM)
        ips = list(dict.fromkeys(str(info[4][0]) for info in infos))
        if not ips:
            raise FetchError(f"{host} does not resolve")
        if not all(self.policy.allows(ip) for ip in ips):
            raise BlockedAddress(f"{host} resolves to a non-public address")
        return await self.outbound.open_stream(ips[0], port, tls=tls, server_hostname=host)

    async def _fetch_once(
        self, url: str, max_size: int, allow_truncate: bool
    ) -> tuple[Fetched | None, str | None]:
        import h11

        try:
            parts = urlsplit(url)
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise FetchError(f"malformed URL {url!r}") from None
        tls = parts.scheme == "https"
        host = parts.hostname or ""
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        stream = await self._connect(host, port, tls)
        async with stream:
            conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEADER_BYTES)
            host_header = parts.netloc.rsplit("@", 1)[-1]
            req = h11.Request(
                method="GET",
                target=target.encode("ascii", "strict") if target.isascii() else _quote(target),
                headers=[
                    ("Host", host_header),
                    ("User-Agent", USER_AGENT),
                    ("Accept", "text/html,application/xhtml+xml,image/*;q=0.9,*/*;q=0.5"),
                    ("Accept-Encoding", "identity"),
                    ("Connection", "close"),
                ],
            )
            await stream.send_all(conn.send(req) or b"")
            await stream.send_all(conn.send(h11.EndOfMessage()) or b"")
            response: Any = None
            body = bytearray()
            truncated = False
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = await stream.receive_some(65536)
                    conn.receive_data(bytes(data))
                    continue
                if isinstance(event, h11.Response):
                    response = event
                    if 300 <= event.status_code < 400:
                        for k, v in event.headers:
                            if k == b"location":
                                return None, v.decode("latin-1")
                elif isinstance(event, h11.InformationalResponse):
                    continue
                elif isinstance(event, h11.Data):
                    body += event.data
                    if len(body) > max_size:
                        if not allow_truncate:
                            raise FetchError("response is too large")
                        del body[max_size:]
                        truncated = True
                        break
                elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                    break
                else:
                    raise FetchError(f"unexpected HTTP event {event!r}")
        if response is None:
            raise FetchError("no response")
        ctype = ""
        for k, v in response.headers:
            if k == b"content-type":
                ctype = v.decode("latin-1")
        return Fetched(url, response.status_code, ctype, bytes(body), truncated), None


def _quote(target: str) -> bytes:
    from urllib.parse import quote

    return quote(target, safe="/?&=%:+,;@!$'()*~#[]-._").encode("ascii")


def _charset(content_type: str) -> str | None:
    m = re.search(r"charset=\"?([A-Za-z0-9_.:-]+)", content_type)
    return m.group(1) if m else None


def _image_size(data: bytes) -> tuple[int, int] | None:
    import io

    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            return int(img.size[0]), int(img.size[1])
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return None


class _OpenGraphParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.og: dict[str, str] = {}
        self.title: str | None = None
        self.description: str | None = None
        self._in_title = False
        self._title_parts: list[str] = []
        self.meta_charset: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k.lower(): (v or "") for k, v in attrs}
        if tag == "meta":
            if "charset" in a:
                self.meta_charset = a["charset"]
            key = a.get("property") or a.get("name") or ""
            content = a.get("content")
            if content is None:
                return
            key = key.strip()
            if key.startswith("og:") and key not in self.og and len(self.og) < 50:
                self.og[key] = content[:2000]
            elif key.lower() == "description" and self.description is None:
                self.description = content[:2000]
        elif tag == "title" and self.title is None:
            self._in_title = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "title" and self._in_title:
            self._in_title = False
            self.title = " ".join("".join(self._title_parts).split())[:500]

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self._title_parts.append(data)


def parse_html(body: bytes, charset: str | None) -> dict[str, Any]:
    """The OpenGraph properties of a page, with <title> and description as fallbacks."""
    text: str | None = None
    for enc in (charset, _sniff_charset(body), "utf-8"):
        if not enc:
            continue
        try:
            text = body.decode(enc, errors="replace")
            break
        except LookupError:
            continue
    parser = _OpenGraphParser()
    try:
        parser.feed(text or "")
        parser.close()
    except (AssertionError, ValueError):
        pass
    og: dict[str, Any] = dict(parser.og)
    if "og:title" not in og and parser.title:
        og["og:title"] = parser.title
    if "og:description" not in og and parser.description:
        og["og:description"] = parser.description
    for k in ("og:image:width", "og:image:height"):
        v = og.get(k)
        if isinstance(v, str):
            size = digits(v.strip(), max_digits=9)
            if size is not None:
                og[k] = size
            else:
                del og[k]
    return og


def _sniff_charset(body: bytes) -> str | None:
    m = re.search(rb"<meta[^>]+charset=[\"']?([A-Za-z0-9_.:-]+)", body[:4096], re.IGNORECASE)
    return m.group(1).decode("ascii") if m else None
