"""Configuration: frozen dataclasses loaded from TOML, with zero-config defaults.

``load_config(None)`` gives a working localhost server; ``load_config(path)`` reads a
TOML file in which every key is optional. Unknown keys and wrong types raise
:class:`ConfigError` naming the key (``listeners[1].port``), never a traceback.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """The configuration file is wrong; the message names the key."""


@dataclass(frozen=True, slots=True)
class ListenerConfig:
    address: str = "127.0.0.1"
    port: int = 8008
    tls: bool = False
    # With tls = true and no paths, the server's own self-signed certificate is used.
    tls_cert: str = ""
    tls_key: str = ""
    # Which APIs this listener serves: "client" (client API, media, .well-known) and
    # "federation" (federation API and /_matrix/key).
    resources: tuple[str, ...] = ("client", "federation")


@dataclass(frozen=True, slots=True)
class RegistrationConfig:
    # "open" (no verification), "token" (m.login.registration_token), or "closed".
    # Empty means: open while every listener is on loopback, closed otherwise.
    mode: str = ""
    allow_guests: bool = False
    # reCAPTCHA (v2) for registration (the m.login.recaptcha stage), off while the keys
    # are empty. The server checks each answer with the siteverify API.
    recaptcha_public_key: str = ""
    recaptcha_private_key: str = ""
    recaptcha_siteverify_api: str = "https://www.recaptcha.net/recaptcha/api/siteverify"
    # With the keys set, every registration flow starts with the CAPTCHA. false: the
    # stage is only checked when a client offers it (as Synapse without
    # enable_registration_captcha).
    require_recaptcha: bool = True

    @property
    def recaptcha_enabled(self) -> bool:
        return bool(self.recaptcha_public_key and self.recaptcha_private_key)


@dataclass(frozen=True, slots=True)
class AccountsConfig:
    # Lifetime of access tokens given to clients that accept refresh tokens (refresh_token: true).
    refreshable_access_token_lifetime_ms: int = 5 * 60 * 1000
    # Password hashes (argon2id, 32 MiB each: one per registration and login attempt)
    # computed at once; more requests wait. Each one more adds up to 32 MiB to the
    # server's peak memory under a burst of logins.
    password_hash_threads: int = 1


@dataclass(frozen=True, slots=True)
class RateLimit:
    per_second: float
    burst: int


@dataclass(frozen=True, slots=True)
class RateLimitsConfig:
    enabled: bool = True
    messages: RateLimit = RateLimit(10.0, 50)
    login: RateLimit = RateLimit(1.0, 10)
    registration: RateLimit = RateLimit(1.0, 10)
    to_device: RateLimit = RateLimit(50.0, 500)
    media_upload: RateLimit = RateLimit(2.0, 20)
    # Validation mails (…/requestToken), per e-mail address and per client address.
    threepid_request: RateLimit = RateLimit(0.05, 5)


@dataclass(frozen=True, slots=True)
class MediaConfig:
    max_upload_size: int = 100 * 1024 * 1024
    # Unauthenticated /_matrix/media/v3 download/thumbnail: frozen as the spec allows.
    legacy_unauthenticated: bool = False
    per_user_quota: int = 0  # bytes; 0 = unlimited
    url_preview_enabled: bool = True
    # Addresses URL previews may fetch besides public ones (CIDR); tests add 127.0.0.0/8.
    url_preview_ip_allowlist: tuple[str, ...] = ()
    url_preview_max_size: int = 10 * 1024 * 1024
    url_preview_timeout_seconds: float = 10.0
    # Images larger than these are not thumbnailed (413 M_TOO_LARGE): decoding is the
    # memory peak of the media repository.
    max_thumbnail_source_size: int = 32 * 1024 * 1024
    max_thumbnail_pixels: int = 40_000_000


@dataclass(frozen=True, slots=True)
class TrustedKeyServer:
    """A notary asked for other servers' keys (``POST /_matrix/key/v2/query``)."""

    server_name: str
    # The notary's own keys, key ID -> unpadded base64: its answers must carry a
    # signature by one of them. Empty: any key it publishes itself (trust on first use).
    verify_keys: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class FederationConfig:
    enabled: bool = True
    # Apply to every outbound HTTPS request (push gateways, URL previews, federation).
    verify_tls: bool = True
    extra_ca_file: str = ""
    # Private/loopback ranges outbound requests may reach besides public addresses:
    # federation, push gateways and identity servers (for loopback testing, or a
    # push gateway such as ntfy on the local network).
    allowed_ip_ranges: tuple[str, ...] = ()
    # Nameservers ("1.2.3.4", "[::1]:5353") for server discovery; empty: the system's.
    dns_servers: tuple[str, ...] = ()
    # Notaries asked for a server's keys when the server itself cannot be reached.
    # Synapse's default is matrix.org; pocketserver's is none (ask servers directly).
    trusted_key_servers: tuple[TrustedKeyServer, ...] = ()


@dataclass(frozen=True, slots=True)
class WellKnownConfig:
    # Served at /.well-known/matrix/server as {"m.server": ...} when set.
    server: str = ""
    # Served at /.well-known/matrix/client as m.homeserver.base_url; defaults to public_baseurl.
    client_base_url: str = ""


@dataclass(frozen=True, slots=True)
class TurnConfig:
    uris: tuple[str, ...] = ()
    shared_secret: str = ""
    lifetime_seconds: int = 86400


@dataclass(frozen=True, slots=True)
class EmailConfig:
    """Outgoing mail for e-mail addresses on accounts (validation, password reset).

    Off while ``smtp_host`` is empty: the e-mail endpoints then answer that this
    server does not support e-mail addresses (M_THREEPID_MEDIUM_NOT_SUPPORTED)."""

    smtp_host: str = ""
    smtp_port: int = 587
    smtp_user: str = ""
    smtp_pass: str = ""
    # "starttls" (upgrade a plain connection; refused if the server does not offer
    # it), "tls" (TLS from the first byte, usually port 465) or "none".
    tls: str = "starttls"
    # The From: of every mail; empty: "pocketserver <noreply@SERVER_NAME>".
    notif_from: str = ""
    # Offer registration with an e-mail address (the m.login.email.identity stage).
    enable_registration_by_email: bool = True
    # Every new account needs a validated e-mail address.
    require_for_registration: bool = False
    # How long a mailed token stays valid.
    token_lifetime_minutes: int = 60
    # Seconds to connect, talk and send one mail.
    timeout_seconds: float = 30.0

    @property
    def enabled(self) -> bool:
        return bool(self.smtp_host)


@dataclass(frozen=True, slots=True)
class TermsPolicy:
    """One policy users of the identity service accept (GET/POST /_matrix/identity/v2/terms)."""

    id: str
    version: str
    url: str
    name: str = ""
    lang: str = "en"


@dataclass(frozen=True, slots=True)
class IdentityConfig:
    """The built-in identity service (Identity Service API v2 at /_matrix/identity/v2,
    on the client listeners). Off by default."""

    enabled: bool = False
    # The service's public URL (its links in mails, its key_validity_url); empty:
    # https://{server_name}.
    base_url: str = ""
    # Validation sessions and their mailed tokens last this long (the spec's 24 hours).
    session_lifetime_seconds: int = 86400
    # Wrong tokens a validation session takes before it is closed.
    max_token_attempts: int = 10
    # Mails (validation and invites) to one address within an hour; more: M_LIMIT_EXCEEDED.
    mails_per_address_per_hour: int = 5
    # Pending invitations (store-invite) expire after this many days.
    invite_lifetime_days: int = 30
    # Policies a user must accept before using the service (none: nothing to accept).
    terms: tuple[TermsPolicy, ...] = ()


@dataclass(frozen=True, slots=True)
class CasConfig:
    """Single sign-on through a CAS server (client-server-api "SSO client login"): the
    m.login.sso (and legacy m.login.cas) login, and the m.login.sso stage of
    user-interactive auth for users who signed in through it. Off by default."""

    enabled: bool = False
    # The CAS server's base URL; /login and /proxyValidate are under it.
    server_url: str = ""
    # This server's public base URL as the CAS server sees it (the ticket callback is
    # <service_url>/_matrix/client/r0/login/cas/ticket); empty: public_baseurl.
    service_url: str = ""
    # A CAS attribute whose value becomes a new user's display name (empty: localpart).
    displayname_attribute: str = ""
    # Attributes a CAS user must have to sign in: name -> required value ("" = any value).
    required_attributes: dict[str, str] = field(default_factory=dict)
    # The name clients show on the sign-in button.
    idp_name: str = "CAS"
    # Client URLs (prefixes) that receive the login token straight away; any other
    # redirectUrl is shown to the user first, who confirms that the site may sign in.
    trusted_client_urls: tuple[str, ...] = ()
    # How long a login token handed to a client stays valid (it is used once).
    login_token_lifetime_seconds: int = 120
    # Seconds to wait for the CAS server's answer to a ticket validation.
    timeout_seconds: float = 15.0


@dataclass(frozen=True, slots=True)
class CacheConfig:
    # Number of events kept decoded in memory.
    event_cache_size: int = 2000
    # SQLite's page cache per database connection (the writer and two readers), in KiB;
    # the operating system's file cache does the rest.
    database_cache_kib: int = 2048


@dataclass(frozen=True, slots=True)
class AppservicesConfig:
    # Registration files (YAML) of application services (bridges, bots); a relative
    # path is relative to the configuration file's folder. Read and checked at start.
    registration_files: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ExperimentalConfig:
    # MSC2228 self-destructing messages: a message whose content holds
    # ``org.matrix.self_destruct_after`` (a timestamp in ms) loses its content then.
    msc2228_self_destruct: bool = False


@dataclass(frozen=True, slots=True)
class Config:
    server_name: str = "localhost"
    public_baseurl: str = ""
    data_dir: str = ""
    database_path: str = ""
    signing_key_path: str = ""
    tls_cert_path: str = ""
    tls_key_path: str = ""
    log_level: str = "info"
    listeners: tuple[ListenerConfig, ...] = (
        ListenerConfig(),
        ListenerConfig(port=8448, tls=True, resources=("federation",)),
    )
    registration: RegistrationConfig = RegistrationConfig()
    accounts: AccountsConfig = AccountsConfig()
    rate_limits: RateLimitsConfig = RateLimitsConfig()
    media: MediaConfig = MediaConfig()
    federation: FederationConfig = FederationConfig()
    well_known: WellKnownConfig = WellKnownConfig()
    turn: TurnConfig = TurnConfig()
    email: EmailConfig = EmailConfig()
    identity: IdentityConfig = IdentityConfig()
    cas: CasConfig = CasConfig()
    caches: CacheConfig = CacheConfig()
    appservices: AppservicesConfig = AppservicesConfig()
    experimental: ExperimentalConfig = ExperimentalConfig()
    # Users created by `register-user --admin` may use the admin API.
    max_event_size: int = 65536

    # -- derived ------------------------------------------------------------

    @property
    def registration_mode(self) -> str:
        if self.registration.mode:
            return self.registration.mode
        return "open" if all(_is_loopback(lst.address) for lst in self.listeners) else "closed"

    @property
    def base_url(self) -> str:
        if self.public_baseurl:
            return self.public_baseurl.rstrip("/") + "/"
        for lst in self.listeners:
            if "client" in lst.resources:
                scheme = "https" if lst.tls else "http"
                host = lst.address
                if host in ("0.0.0.0", "::"):
                    host = "localhost"
                elif ":" in host:
                    host = f"[{host}]"
                return f"{scheme}://{host}:{lst.port}/"
        return f"https://{self.server_name}/"

    def path(self, name: str) -> Path:
        """Resolve one of the file paths (database, signing key, TLS) with defaults."""
        explicit = {
            "database": self.database_path,
            "signing_key": self.signing_key_path,
            "tls_cert": self.tls_cert_path,
            "tls_key": self.tls_key_path,
        }[name]
        if explicit:
            return Path(explicit).expanduser()
        default = {
            "database": "homeserver.db",
            "signing_key": "signing.key",
            "tls_cert": "tls.crt",
            "tls_key": "tls.key",
        }[name]
        return Path(self.data_dir_path) / default

    @property
    def data_dir_path(self) -> Path:
        if self.data_dir:
            return Path(self.data_dir).expanduser()
        xdg = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
        return Path(xdg) / "pocketserver"


def parse_nameserver(spec: str) -> tuple[str, int]:
    """``"1.2.3.4"``, ``"1.2.3.4:5353"``, ``"::1"`` or ``"[::1]:5353"`` -> (ip, port);
    ValueError for anything else."""
    if spec.startswith("["):
        host, _, port = spec[1:].partition("]")
        port = port.lstrip(":")
    elif spec.count(":") == 1:
        host, _, port = spec.partition(":")
    else:
        host, port = spec, ""
    ipaddress.ip_address(host)
    if port and not (port.isdigit() and 0 < int(port) < 65536):
        raise ValueError(f"bad port in {spec!r}")
    return host, int(port) if port else 53


def _is_loopback(address: str) -> bool:
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


# -- loading ---------------------------------------------------------------

_VALID_REG_MODES = ("", "open", "token", "closed")
_VALID_LOG_LEVELS = ("debug", "info", "warning", "error")
_VALID_RESOURCES = ("client", "federation")


def _build(cls: Any, data: Any, where: str) -> Any:
    """Build dataclass ``cls`` from TOML ``data``, checking keys and types."""
    if dataclasses.is_dataclass(cls):
        if not isinstance(data, dict):
            raise ConfigError(f"{where or 'config'}: expected a table")
        hints = typing.get_type_hints(cls)
        names = {f.name for f in dataclasses.fields(cls) if f.init}
        kwargs = {}
        for key, value in data.items():
            name = f"{where}.{key}" if where else key
            if key not in names:
                raise ConfigError(f"unknown configuration key {name!r}")
            kwargs[key] = _build(hints[key], value, name)
        return cls(**kwargs)  # type: ignore[operator]
    origin = typing.get_origin(cls)
    if origin is dict:
        (key_type, value_type) = typing.get_args(cls)
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: expected a table")
        return {
            _build(key_type, k, f"{where}"): _build(value_type, v, f"{where}.{k}")
            for k, v in data.items()
        }
    if origin is tuple:
        (item_type, _) = typing.get_args(cls)
        if not isinstance(data, list):
            raise ConfigError(f"{where}: expected a list")
        return tuple(_build(item_type, v, f"{where}[{i}]") for i, v in enumerate(data))
    if origin is types.UnionType:
        raise ConfigError(f"{where}: unsupported type")
    if cls is float:
        if isinstance(data, bool) or not isinstance(data, (int, float)):
            raise ConfigError(f"{where}: expected a number")
        return float(data)
    if cls is int:
        if isinstance(data, bool) or not isinstance(data, int):
            raise ConfigError(f"{where}: expected an integer")
        return data
    if cls is bool:
        if not isinstance(data, bool):
            raise ConfigError(f"{where}: expected true or false")
        return data
    if cls is str:
        if not isinstance(data, str):
            raise ConfigError(f"{where}: expected a string")
        return data
    raise ConfigError(f"{where}: unsupported type")


def _validate(cfg: Config) -> None:
    from pocketserver.protocol.identifiers import (
        InvalidIdentifier,
        is_valid_server_name,
        parse_server_name,
    )
    from pocketserver.protocol.signing import (
        KeyFormatError,
        decode_verify_key_base64,
        parse_key_id,
    )

    try:
        parse_server_name(cfg.server_name)
    except InvalidIdentifier:
        raise ConfigError(f"server_name: {cfg.server_name!r} is not a valid server name") from None
    if cfg.registration.mode not in _VALID_REG_MODES:
        raise ConfigError("registration.mode: must be one of open, token, closed")
    if cfg.log_level.lower() not in _VALID_LOG_LEVELS:
        raise ConfigError(f"log_level: must be one of {', '.join(_VALID_LOG_LEVELS)}")
    if not cfg.listeners:
        raise ConfigError("listeners: at least one listener is needed")
    for i, lst in enumerate(cfg.listeners):
        if not 0 <= lst.port <= 65535:
            raise ConfigError(f"listeners[{i}].port: must be 0-65535")
        for r in lst.resources:
            if r not in _VALID_RESOURCES:
                raise ConfigError(f"listeners[{i}].resources: unknown resource {r!r}")
        if bool(lst.tls_cert) != bool(lst.tls_key):
            raise ConfigError(f"listeners[{i}]: tls_cert and tls_key go together")
    for i, cidr in enumerate(cfg.federation.allowed_ip_ranges):
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            raise ConfigError(f"federation.allowed_ip_ranges[{i}]: not a CIDR range") from None
    for i, ns in enumerate(cfg.federation.dns_servers):
        try:
            parse_nameserver(ns)
        except ValueError:
            raise ConfigError(f"federation.dns_servers[{i}]: not an IP address (with an optional port)") from None
    for i, tks in enumerate(cfg.federation.trusted_key_servers):
        if not is_valid_server_name(tks.server_name):
            raise ConfigError(f"federation.trusted_key_servers[{i}].server_name: not a server name")
        for key_id, key in tks.verify_keys.items():
            try:
                parse_key_id(key_id)
                decode_verify_key_base64(key)
            except KeyFormatError:
                raise ConfigError(f"federation.trusted_key_servers[{i}].verify_keys.{key_id}: not an ed25519 key") from None
    for i, cidr in enumerate(cfg.media.url_preview_ip_allowlist):
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            raise ConfigError(f"media.url_preview_ip_allowlist[{i}]: not a CIDR range") from None
    if cfg.accounts.refreshable_access_token_lifetime_ms < 1000:
        raise ConfigError("accounts.refreshable_access_token_lifetime_ms: must be at least 1000")
    if not 1 <= cfg.accounts.password_hash_threads <= 64:
        raise ConfigError("accounts.password_hash_threads: must be 1-64")
    if cfg.email.tls not in ("starttls", "tls", "none"):
        raise ConfigError("email.tls: must be one of starttls, tls, none")
    if not 0 < cfg.email.smtp_port <= 65535:
        raise ConfigError("email.smtp_port: must be 1-65535")
    if cfg.email.require_for_registration and not cfg.email.enabled:
        raise ConfigError("email.require_for_registration: needs email.smtp_host")
    if cfg.email.token_lifetime_minutes < 1:
        raise ConfigError("email.token_lifetime_minutes: must be at least 1")
    if cfg.email.timeout_seconds <= 0:
        raise ConfigError("email.timeout_seconds: must be positive")
    if cfg.identity.session_lifetime_seconds < 60:
        raise ConfigError("identity.session_lifetime_seconds: must be at least 60")
    if cfg.identity.max_token_attempts < 1:
        raise ConfigError("identity.max_token_attempts: must be at least 1")
    if cfg.identity.mails_per_address_per_hour < 1:
        raise ConfigError("identity.mails_per_address_per_hour: must be at least 1")
    if cfg.identity.invite_lifetime_days < 1:
        raise ConfigError("identity.invite_lifetime_days: must be at least 1")
    if cfg.identity.base_url and not cfg.identity.base_url.startswith(("https://", "http://")):
        raise ConfigError("identity.base_url: must be an http(s) URL")
    reg = cfg.registration
    if bool(reg.recaptcha_public_key) != bool(reg.recaptcha_private_key):
        raise ConfigError("registration.recaptcha_public_key and recaptcha_private_key go together")
    if reg.recaptcha_enabled and not reg.recaptcha_siteverify_api.startswith(("https://", "http://")):
        raise ConfigError("registration.recaptcha_siteverify_api: must be an http(s) URL")
    cas = cfg.cas
    if cas.enabled and not cas.server_url.startswith(("https://", "http://")):
        raise ConfigError("cas.server_url: must be an http(s) URL when cas.enabled")
    if cas.service_url and not cas.service_url.startswith(("https://", "http://")):
        raise ConfigError("cas.service_url: must be an http(s) URL")
    if not 1 <= cas.login_token_lifetime_seconds <= 3600:
        raise ConfigError("cas.login_token_lifetime_seconds: must be 1-3600")
    if cas.timeout_seconds <= 0:
        raise ConfigError("cas.timeout_seconds: must be positive")
    if cfg.caches.event_cache_size < 1:
        raise ConfigError("caches.event_cache_size: must be at least 1")
    if cfg.caches.database_cache_kib < 64:
        raise ConfigError("caches.database_cache_kib: must be at least 64")
    if cfg.max_event_size < 1024:
        raise ConfigError("max_event_size: too small")


def config_from_dict(data: dict[str, Any], **overrides: Any) -> Config:
    cfg: Config = _build(Config, data, "")
    if overrides:
        cfg = dataclasses.replace(cfg, **overrides)
    _validate(cfg)
    return cfg


def load_config(path: str | os.PathLike[str] | None, **overrides: Any) -> Config:
    """Load the TOML file at ``path`` (None: defaults) and apply keyword overrides."""
    if path is None:
        return config_from_dict({}, **overrides)
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read config file {p}: {e.strerror}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{p}: not valid TOML: {e}") from None
    cfg = config_from_dict(data, **overrides)
    files = cfg.appservices.registration_files
    if any(not Path(f).expanduser().is_absolute() for f in files):
        resolved = tuple(str((p.parent / Path(f).expanduser()).resolve()) for f in files)
        cfg = dataclasses.replace(
            cfg, appservices=dataclasses.replace(cfg.appservices, registration_files=resolved)
        )
    return cfg


EXAMPLE_CONFIG = """\
# pocketserver configuration. Every key is optional; the values shown are the defaults.

# The name in your users' IDs (@alice:example.org). Cannot change once users exist.
server_name = "localhost"

# The URL clients use to reach this server (used in .well-known and messages).
# public_baseurl = "https://matrix.example.org/"

# Where the database, signing key and TLS certificate live.
# data_dir = "~/.local/share/pocketserver"
# database_path = ""      # default: <data_dir>/homeserver.db
# signing_key_path = ""   # default: <data_dir>/signing.key
# tls_cert_path = ""      # default: <data_dir>/tls.crt (self-signed, made on first start)
# tls_key_path = ""       # default: <data_dir>/tls.key

log_level = "info"        # debug, info, warning, error
max_event_size = 65536

# Client API on plain HTTP (put a reverse proxy with TLS in front for the internet).
[[listeners]]
address = "127.0.0.1"
port = 8008
tls = false
resources = ["client", "federation"]

# Federation over HTTPS. With no tls_cert/tls_key the self-signed certificate is used.
[[listeners]]
address = "127.0.0.1"
port = 8448
tls = true
resources = ["federation"]

[registration]
# "open", "token" (tokens from `pocketserver create-registration-token`) or "closed".
# Unset: open while every listener is on loopback, closed otherwise.
# mode = "token"
allow_guests = false
# reCAPTCHA for registration (https://www.google.com/recaptcha/admin): off while empty.
recaptcha_public_key = ""
recaptcha_private_key = ""
recaptcha_siteverify_api = "https://www.recaptcha.net/recaptcha/api/siteverify"
require_recaptcha = true  # false: checked only when a client offers it

[accounts]
refreshable_access_token_lifetime_ms = 300000
# Password hashes computed at once (each takes 32 MiB while it runs).
password_hash_threads = 1

[rate_limits]
enabled = true
messages = { per_second = 10.0, burst = 50 }
login = { per_second = 1.0, burst = 10 }
registration = { per_second = 1.0, burst = 10 }
threepid_request = { per_second = 0.05, burst = 5 }   # validation mails, per address and per client

[media]
max_upload_size = 104857600
legacy_unauthenticated = false
per_user_quota = 0
url_preview_enabled = true
url_preview_ip_allowlist = []
url_preview_max_size = 10485760
url_preview_timeout_seconds = 10.0
max_thumbnail_source_size = 33554432
max_thumbnail_pixels = 40000000

[federation]
enabled = true
# TLS for every outbound request (push gateways, URL previews): verify certificates,
# also trusting the CAs in extra_ca_file (a PEM file) besides the system's.
verify_tls = true
extra_ca_file = ""
# Outbound requests (federation, push gateways, identity servers) reach only public
# addresses, and these private or loopback ranges: e.g. ["127.0.0.0/8", "::1/128"] to
# federate on loopback, ["192.168.1.0/24"] for a push gateway (ntfy) on the LAN.
allowed_ip_ranges = []
dns_servers = []          # e.g. ["127.0.0.1:5353"]; empty: the system's resolver
# Notaries for other servers' keys (Synapse's default is matrix.org); none by default:
# trusted_key_servers = [{ server_name = "matrix.org", verify_keys = { "ed25519:auto" = "Noi6WqcDj0QmPxCNQqgezwTlBKrfqehY1u2FyWP9uYw" } }]
trusted_key_servers = []

[well_known]
# server = "matrix.example.org:443"           # delegation: /.well-known/matrix/server
# client_base_url = "https://matrix.example.org/"

[turn]
# uris = ["turn:turn.example.org:3478?transport=udp"]
# shared_secret = "the coturn static-auth-secret"
lifetime_seconds = 86400

[email]
# Mail for e-mail addresses on accounts: validation links, password resets. Off while
# smtp_host is empty (then no e-mail addresses can be added).
smtp_host = ""
smtp_port = 587
smtp_user = ""
smtp_pass = ""
tls = "starttls"          # "starttls", "tls" (e.g. port 465) or "none"
notif_from = ""           # default: pocketserver <noreply@SERVER_NAME>
enable_registration_by_email = true
require_for_registration = false
token_lifetime_minutes = 60
timeout_seconds = 30.0


[identity]
# The built-in identity service (/_matrix/identity/v2): e-mail validation, lookups,
# bindings and invitations by e-mail, in the same database. It needs [email].
enabled = false
# base_url = "https://matrix.example.org"   # default: https://<server_name>
session_lifetime_seconds = 86400
max_token_attempts = 10
mails_per_address_per_hour = 5
invite_lifetime_days = 30
# Policies users accept before using it:
# terms = [{ id = "privacy_policy", version = "1.0", name = "Privacy Policy", url = "https://example.org/privacy-1.0.html" }]

[cas]
# Single sign-on through a CAS server: clients offer "Sign in with CAS"; a CAS user
# "jo.smith" becomes @jo.smith:<server_name> (made on first sign-in).
enabled = false
server_url = ""           # e.g. "https://cas.example.org/cas"
service_url = ""          # default: public_baseurl
displayname_attribute = ""
required_attributes = {}  # e.g. { department = "staff", email = "" }
idp_name = "CAS"
trusted_client_urls = []  # e.g. ["https://app.element.io/"]: no confirmation page
login_token_lifetime_seconds = 120
timeout_seconds = 15.0

[caches]
event_cache_size = 2000
database_cache_kib = 2048     # per connection; three connections

[appservices]
# Application services (bridges to IRC, Telegram, ...; bots): the registration file
# (YAML) each one generates. Relative paths are relative to this file's folder. A file
# that is missing or wrong stops the server at start with the file and field named.
# registration_files = ["heisenbridge.yaml"]
registration_files = []

[experimental]
# Features from proposals not yet in the spec, off until they are.
# MSC2228 self-destructing messages: a message event whose content holds
# "org.matrix.self_destruct_after" (a time, in ms since 1970) loses its content then
# (as a redaction would take it), here and in the copies that come over federation.
msc2228_self_destruct = false
"""

__all__ = [
    "Config",
    "ConfigError",
    "ListenerConfig",
    "load_config",
    "config_from_dict",
    "EXAMPLE_CONFIG",
    "field",
]
