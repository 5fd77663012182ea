"""The SSO service's URL handling: the client's redirectUrl gets the login token
added (an old one replaced, the rest kept byte for byte), and only URLs a browser
leaves the page for are accepted."""

from __future__ import annotations

import pytest

from pocketserver.errors import MatrixError
from pocketserver.services.sso import check_redirect_url, with_login_token


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://c.example/cb", "https://c.example/cb?loginToken=T"),
        ("https://c.example/?p=http%3A%2F%2Fs", "https://c.example/?p=http%3A%2F%2Fs&loginToken=T"),
        ("https://c.example/?loginToken=old&a=1", "https://c.example/?a=1&loginToken=T"),
        ("https://c.example/?a=1#/login?x=2", "https://c.example/?a=1&loginToken=T#/login?x=2"),
        ("im.app://sso?x", "im.app://sso?x&loginToken=T"),
    ],
)
def test_login_token_is_added(url: str, expected: str) -> None:
    assert with_login_token(url, "T") == expected


@pytest.mark.parametrize(
    "url",
    ["", "javascript:alert(1)", "JavaScript:alert(1)", "data:text/html,x", "no-scheme/path",
     "https://c.example/\nSet-Cookie: x", "https://c.example/ x", "https://" + "a" * 3000],
)
def test_bad_redirect_urls(url: str) -> None:
    with pytest.raises(MatrixError) as e:
        check_redirect_url(url)
    assert e.value.errcode in ("M_MISSING_PARAM", "M_INVALID_PARAM")
