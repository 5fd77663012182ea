"""Users and tokens made directly through storage, for the media tests.

(The media tests do not depend on /register: they only need an authenticated user.)
"""

from __future__ import annotations

import secrets
from typing import Any

from pocketserver.services.auth import hash_token
from pocketserver.storage import accounts


async def make_user(server: Any, localpart: str | None = None) -> tuple[str, str]:
    """Create a user with one access token on the running server; (user_id, token)."""
    svc = server.services
    localpart = localpart or "u" + secrets.token_hex(4)
    user_id = f"@{localpart}:{svc.config.server_name}"
    token = "syt_" + secrets.token_urlsafe(24)
    now = svc.clock.time_ms()

    def txn(conn: Any) -> None:
        accounts.insert_user(conn, user_id, None, now)
        accounts.insert_access_token(conn, hash_token(token), user_id, "DEVICE", now)

    await svc.db.write(txn)
    return user_id, token


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def png_bytes(width: int, height: int, color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buf, "PNG")
    return buf.getvalue()


def jpeg_bytes(width: int, height: int) -> bytes:
    import io

    from PIL import Image

    img = Image.new("RGB", (width, height))
    for x in range(0, width, max(1, width // 16)):
        for y in range(0, height, max(1, height // 16)):
            img.putpixel((x, y), (x % 256, y % 256, 100))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def gif_animation(width: int, height: int, frames: int = 3) -> bytes:
    import io

    from PIL import Image

    imgs = [Image.new("RGB", (width, height), (i * 60 % 256, 100, 200)) for i in range(frames)]
    buf = io.BytesIO()
    imgs[0].save(buf, "GIF", save_all=True, append_images=imgs[1:], duration=100, loop=0)
    return buf.getvalue()
