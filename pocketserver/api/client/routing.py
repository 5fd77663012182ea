"""Route registration for the client API under its v3 prefix.

Old clients' ``/_matrix/client/r0/...`` requests are served by the same routes: the
app's ASGI wrapper rewrites the prefix to v3 before routing (one URL rule per endpoint
instead of two keeps about a megabyte of werkzeug rule objects out of an idle server).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from quart import Blueprint

PREFIXES = ("/_matrix/client/v3",)


def client_route(
    bp: Blueprint, path: str, methods: list[str], prefixes: tuple[str, ...] = PREFIXES
) -> Callable[[Any], Any]:
    """Register ``fn`` for ``path`` under each client API prefix."""

    def decorator(fn: Any) -> Any:
        for i, prefix in enumerate(prefixes):
            bp.add_url_rule(
                prefix + path, endpoint=f"{fn.__name__}_{i}", view_func=fn, methods=methods
            )
        return fn

    return decorator
