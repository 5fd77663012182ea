"""Single sign-on and the browser pages of user-interactive auth, over HTTP.

The SSO redirects and the CAS ticket callback (services/sso.py), and the fallback
pages of ``m.login.sso`` and ``m.login.recaptcha`` (client-server-api "Fallback").
These are opened by browsers: a browser (which asks for HTML) is shown errors as a
page, anything else gets the JSON error contract.
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from quart import Blueprint, Response, redirect, request

from pocketserver.api.client.routing import client_route
from pocketserver.api.common import services
from pocketserver.errors import MatrixError, MissingParam, NotFound
from pocketserver.services.uia import RECAPTCHA, SSO

if TYPE_CHECKING:
    from pocketserver.services.sso import CasService

bp = Blueprint("client_sso", __name__)

_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>{head}</head>
<body style="font-family: sans-serif; max-width: 36em; margin: 3em auto; padding: 0 1em">
<h1>{title}</h1>
{body}
</body></html>
"""

# The fallback's completion signal (client-server-api "Fallback").
_AUTH_DONE = """<script>
if (window.onAuthDone) {
    window.onAuthDone();
} else if (window.opener && window.opener.postMessage) {
    window.opener.postMessage("authDone", "*");
}
</script>"""

_RECAPTCHA_JS = '<script src="https://www.recaptcha.net/recaptcha/api.js" async defer></script>'


def _page(title: str, body: str, status: int = 200, head: str = "") -> Response:
    text = _PAGE.format(title=html.escape(title), body=body, head=head)
    resp = Response(text, status=status, content_type="text/html; charset=utf-8")
    # The pages hold tokens and confirmations: not to be framed by other sites.
    resp.headers["X-Frame-Options"] = "DENY"
    resp.headers["Content-Security-Policy"] = "frame-ancestors 'none'"
    return resp


def _p(text: str) -> str:
    return f"<p>{html.escape(text)}</p>"


def _browser() -> bool:
    return "text/html" in request.headers.get("Accept", "")


def _error_page(e: MatrixError) -> Response:
    if not _browser():
        raise e
    return _page("Something went wrong", _p(e.message), e.status)


def _cas() -> CasService:
    cas = services().cas
    if cas is None or not cas.enabled:
        raise MatrixError(404, "M_UNRECOGNIZED", "Single sign-on is not configured on this server")
    return cas


# -- login ------------------------------------------------------------------------------


async def _redirect_to_sso(idp_id: str | None) -> Response:
    try:
        url = _cas().login_redirect(request.args.get("redirectUrl"), idp_id)
    except MatrixError as e:
        return _error_page(e)
    return redirect(url, 302)  # type: ignore[return-value]


@client_route(bp, "/login/sso/redirect", ["GET"])
async def sso_redirect() -> Response:
    """GET /_matrix/client/v3/login/sso/redirect?redirectUrl="""
    return await _redirect_to_sso(None)


@client_route(bp, "/login/sso/redirect/<idp_id>", ["GET"])
async def sso_redirect_idp(idp_id: str) -> Response:
    """GET /_matrix/client/v3/login/sso/redirect/{idpId}?redirectUrl="""
    return await _redirect_to_sso(idp_id)


@client_route(bp, "/login/cas/redirect", ["GET"])
async def cas_redirect() -> Response:
    """GET /_matrix/client/v3/login/cas/redirect?redirectUrl= (the deprecated m.login.cas)"""
    return await _redirect_to_sso(None)


@client_route(bp, "/login/cas/ticket", ["GET"])
async def cas_ticket() -> Response:
    """GET /_matrix/client/v3/login/cas/ticket?ticket=&(redirectUrl=|session=): where the
    CAS server sends the browser back, for a login or a user-interactive auth session."""
    args = request.args
    try:
        cas = _cas()
        session = args.get("session")
        if session:
            done = await cas.uia_callback(args.get("ticket"), session)
            return _uia_result_page(done)
        if "redirectUrl" not in args:
            raise MissingParam("Missing 'redirectUrl' or 'session'")
        outcome = await cas.login_callback(args.get("ticket"), args.get("redirectUrl"))
    except MatrixError as e:
        return _error_page(e)
    if outcome.trusted:
        return redirect(outcome.redirect, 302)  # type: ignore[return-value]
    target = urlsplit(outcome.redirect)
    site = target.netloc or f"{target.scheme}:"
    link = html.escape(outcome.redirect, quote=True)
    body = (
        _p(f"You signed in as {outcome.user_id}.")
        + _p(
            f"Continue to {site} to finish signing in there. If you did not start signing "
            f"in to {site}, close this page: that site would get access to your account."
        )
        + f'<p><a href="{link}">Continue to {html.escape(site)}</a></p>'
    )
    return _page("Continue to your client", body)


def _uia_result_page(done: bool) -> Response:
    if done:
        return _page(
            "Confirmed",
            _p("You can close this page and go back to your client.") + _AUTH_DONE,
        )
    # 200: the browser reached the right place; what it learns is that the account it
    # signed in with is not the one the client asked about.
    return _page(
        "Not confirmed",
        _p(
            "You signed in with a different account than the one that asked for this "
            "confirmation, or the request has expired. Nothing was changed."
        ),
    )


# -- fallback pages of user-interactive auth --------------------------------------------


@client_route(bp, "/auth/<auth_type>/fallback/web", ["GET", "POST"])
async def auth_fallback(auth_type: str) -> Response:
    """GET/POST /_matrix/client/v3/auth/{authType}/fallback/web?session="""
    try:
        if auth_type == SSO:
            return await _sso_fallback()
        if auth_type == RECAPTCHA:
            return await _recaptcha_fallback()
        raise MatrixError(404, "M_UNRECOGNIZED", f"No fallback page for {auth_type!r}")
    except MatrixError as e:
        return _error_page(e)


async def _sso_fallback() -> Response:
    cas = _cas()
    page = await cas.uia_page(request.args.get("session"))
    link = html.escape(page.cas_login_url, quote=True)
    idp = html.escape(cas.cfg.idp_name)
    body = (
        _p(
            f"A client is trying to {page.operation}. To allow it, sign in again with "
            f"{cas.cfg.idp_name}. If you did not expect this, do not continue: someone "
            "else may be using your account."
        )
        + f'<p><a href="{link}">Continue with {idp}</a></p>'
    )
    return _page("Confirm it is you", body)


async def _recaptcha_fallback() -> Response:
    svc = services()
    captcha = svc.captcha
    if captcha is None:
        raise MatrixError(404, "M_UNRECOGNIZED", "This server does not use a CAPTCHA")
    if request.method == "POST":
        form = await request.form
        session = form.get("session") or request.args.get("session")
        answer = form.get("g-recaptcha-response")
    else:
        session, answer = request.args.get("session"), None
    if not session:
        raise MissingParam("Missing 'session'")
    if await svc.uia.live_session(session) is None:
        raise NotFound("Unknown or expired session")
    problem = ""
    if answer is not None:
        if await captcha.verify(answer) and await svc.uia.complete_stage(session, RECAPTCHA, as_user=None):
            return _page("Thank you", _p("You can close this page and go back to your client.") + _AUTH_DONE)
        problem = _p("That did not work. Please try again.")
    form_html = (
        '<form method="post">'
        f'<input type="hidden" name="session" value="{html.escape(session, quote=True)}">'
        f'<div class="g-recaptcha" data-sitekey="{html.escape(captcha.public_key, quote=True)}"></div>'
        '<p><input type="submit" value="Continue"></p></form>'
    )
    return _page(
        "Are you a human?",
        problem + _p("Please solve the CAPTCHA to go on with your registration.") + form_html,
        head=_RECAPTCHA_JS,
    )
