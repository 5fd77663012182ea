"""Every example configuration loads."""

from __future__ import annotations

from pathlib import Path

import pytest

from pocketserver.config import EXAMPLE_CONFIG, config_from_dict, load_config

EXAMPLES = sorted((Path(__file__).resolve().parent.parent / "examples").glob("*.toml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_loads(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.server_name


def test_generated_example_config_loads(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text(EXAMPLE_CONFIG)
    assert load_config(p).server_name == "localhost"


def test_registration_defaults_follow_listeners() -> None:
    assert config_from_dict({}).registration_mode == "open"
    public = config_from_dict({"listeners": [{"address": "0.0.0.0", "port": 8008}]})
    assert public.registration_mode == "closed"
    forced = config_from_dict(
        {"listeners": [{"address": "0.0.0.0", "port": 8008}], "registration": {"mode": "open"}}
    )
    assert forced.registration_mode == "open"


def test_database_cache_size_reaches_every_connection(tmp_path: Path) -> None:
    """caches.database_cache_kib bounds SQLite's page cache on each connection; a
    nonsense value is refused with the key's name."""
    from pocketserver.config import ConfigError
    from pocketserver.server import prepare

    pi = load_config(EXAMPLES[[p.name for p in EXAMPLES].index("raspberry-pi.toml")])
    assert pi.caches.database_cache_kib == 1024
    cfg = config_from_dict({"data_dir": str(tmp_path), "caches": {"database_cache_kib": 512}})
    db, _key, _notes = prepare(cfg, make_certificate=False)
    try:
        conns = [db._writer] + [slot.conn for slot in db._readers]
        assert len(conns) == 3
        for conn in conns:
            assert conn.execute("PRAGMA cache_size").fetchone()[0] == -512
    finally:
        db.close()
    with pytest.raises(ConfigError, match="caches.database_cache_kib"):
        config_from_dict({"caches": {"database_cache_kib": 1}})
    with pytest.raises(ConfigError, match="state_cache_size"):
        config_from_dict({"caches": {"state_cache_size": 100}})


def test_sso_and_captcha_settings_are_checked() -> None:
    """[cas] and the reCAPTCHA keys: off by default; a half-made setting is refused
    with the key's name."""
    from pocketserver.config import ConfigError

    cfg = config_from_dict({})
    assert not cfg.cas.enabled and not cfg.registration.recaptcha_enabled
    cas = config_from_dict({"cas": {"enabled": True, "server_url": "https://cas.example.org/cas"}}).cas
    assert cas.enabled and cas.login_token_lifetime_seconds == 120
    for bad, key in [
        ({"cas": {"enabled": True}}, "cas.server_url"),
        ({"cas": {"service_url": "matrix.example.org"}}, "cas.service_url"),
        ({"cas": {"login_token_lifetime_seconds": 0}}, "cas.login_token_lifetime_seconds"),
        ({"cas": {"required_attributes": {"dept": 1}}}, "cas.required_attributes.dept"),
        ({"registration": {"recaptcha_public_key": "k"}}, "registration.recaptcha_public_key"),
        ({"registration": {"recaptcha_public_key": "k", "recaptcha_private_key": "s",
                           "recaptcha_siteverify_api": "ftp://x"}}, "registration.recaptcha_siteverify_api"),
    ]:
        with pytest.raises(ConfigError, match=key):
            config_from_dict(bad)
