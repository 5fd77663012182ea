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
