"""Loading application service registrations from the configuration."""

from __future__ import annotations

from pathlib import Path

import pytest

from pocketserver.config import load_config
from pocketserver.services.appservices import AppserviceConfigError, load_registrations
from tests.api.appservice_helpers import write_registration


def _config(tmp_path: Path, files: list[str]) -> Path:
    listed = ", ".join(f'"{f}"' for f in files)
    path = tmp_path / "pocketserver.toml"
    path.write_text(f'server_name = "example.org"\n[appservices]\nregistration_files = [{listed}]\n')
    return path


def test_relative_files_are_found_beside_the_config(tmp_path: Path) -> None:
    write_registration(tmp_path, "http://127.0.0.1:1", as_id="irc")
    (tmp_path / "sub").mkdir()
    write_registration(tmp_path / "sub", None, as_id="bot", as_token="bot-token")
    cfg = load_config(_config(tmp_path, ["irc.yaml", "sub/bot.yaml"]))
    registry = load_registrations(cfg)
    assert [r.id for r in registry.all] == ["irc", "bot"]
    assert registry.by_id("bot").url is None  # type: ignore[union-attr]
    assert registry.by_id("irc").sender == "@_fake_bot:example.org"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("second", "message"),
    [
        ({"as_id": "irc", "as_token": "other"}, "id: 'irc' is also used by"),
        ({"as_id": "tg"}, "as_token: also used by"),
    ],
)
def test_duplicates_across_files_are_refused(tmp_path: Path, second: dict[str, str], message: str) -> None:
    write_registration(tmp_path, None, as_id="irc")
    (tmp_path / "b").mkdir()
    write_registration(tmp_path / "b", None, **second)
    name = second["as_id"]
    cfg = load_config(_config(tmp_path, ["irc.yaml", f"b/{name}.yaml"]))
    with pytest.raises(AppserviceConfigError) as info:
        load_registrations(cfg)
    assert message in str(info.value) and f"b/{name}.yaml" in str(info.value)


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    cfg = load_config(_config(tmp_path, ["nope.yaml"]))
    with pytest.raises(AppserviceConfigError) as info:
        load_registrations(cfg)
    assert "nope.yaml" in str(info.value) and "cannot read" in str(info.value)
