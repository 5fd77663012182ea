"""HTTP route modules, thin over services. Nothing imports ``api``."""

from __future__ import annotations

from typing import Any


def register_blueprints(app: Any) -> None:
    """Register every route module's blueprint on ``app``."""
    # Single sign-on's and the CAPTCHA's pages only where one is configured.
    sso_svc = app.extensions.get("pocketserver")
    if sso_svc is None or sso_svc.cas is not None or sso_svc.captcha is not None:
        from pocketserver.api.client import sso as client_sso

        app.register_blueprint(client_sso.bp)
    from pocketserver.api import discovery, identity
    from pocketserver.api.client import account, account_data, capabilities, presence, profile
    from pocketserver.api.client import appservice as client_appservice
    from pocketserver.api.client import initial_sync as client_initial_sync
    from pocketserver.api.client import key_backup as client_key_backup
    from pocketserver.api.client import keys as client_keys
    from pocketserver.api.client import media as client_media
    from pocketserver.api.client import openid as client_openid
    from pocketserver.api.client import push as client_push
    from pocketserver.api.client import relations as client_relations
    from pocketserver.api.client import rooms as client_rooms
    from pocketserver.api.client import search as client_search
    from pocketserver.api.client import sliding_sync as client_sliding_sync
    from pocketserver.api.client import spaces as client_spaces
    from pocketserver.api.client import sync as client_sync
    from pocketserver.api.client import thirdparty as client_thirdparty
    from pocketserver.api.client import threepids as client_threepids
    from pocketserver.api.client import to_device as client_to_device
    from pocketserver.api.client import user_directory as client_user_directory
    from pocketserver.api.client import voip as client_voip
    from pocketserver.api.federation import devices as federation_devices
    from pocketserver.api.federation import directory as federation_directory
    from pocketserver.api.federation import events as federation_events
    from pocketserver.api.federation import keys as federation_keys
    from pocketserver.api.federation import media as federation_media
    from pocketserver.api.federation import membership as federation_membership
    from pocketserver.api.federation import openid as federation_openid
    from pocketserver.api.federation import query as federation_query
    from pocketserver.api.federation import third_party_invites as federation_third_party_invites
    from pocketserver.api.federation import transactions as federation_transactions
    from pocketserver.api.federation import version as federation_version

    for module in (client_rooms, client_sync, client_keys, client_to_device, client_key_backup, discovery, federation_keys, account, account_data, capabilities, presence, profile, client_media, client_push, client_relations, client_search, client_spaces, client_user_directory, client_voip, client_initial_sync, client_thirdparty, client_appservice, client_openid, federation_openid, federation_query, federation_version, federation_transactions, federation_membership, federation_media, federation_events, federation_devices, federation_directory, client_threepids, federation_third_party_invites, client_sliding_sync):
        app.register_blueprint(module.bp)
    # The identity service's routes exist only where it runs (20 routes an ordinary
    # homeserver would carry for nothing).
    svc = app.extensions.get("pocketserver")
    if svc is None or svc.config.identity.enabled:
        app.register_blueprint(identity.bp)
