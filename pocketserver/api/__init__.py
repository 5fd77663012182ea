"""HTTP route modules, thin over services. Nothing imports ``api``."""

from __future__ import annotations

from typing import Any


def register_blueprints(app: Any) -> None:
    """Register every route module's blueprint on ``app``."""
    from pocketserver.api import discovery
    from pocketserver.api.client import account, account_data, capabilities, presence, profile
    from pocketserver.api.federation import keys as federation_keys

    for module in (account, account_data, capabilities, presence, profile, discovery, federation_keys):
        app.register_blueprint(module.bp)
