"""Async orchestration over storage and the protocol core.

:func:`build_services` wires every service explicitly; each receives what it uses.
There is no god object: :class:`Services` is only the bag the API layer reads from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pocketserver.config import Config
from pocketserver.federation.e2e import FederatedKeys
from pocketserver.federation.edus import FederationEdus
from pocketserver.federation.sender import FederationSender
from pocketserver.services.accounts import AccountsService
from pocketserver.services.appservices import AppserviceService, load_registrations
from pocketserver.services.auth import AuthService
from pocketserver.services.clock import Clock
from pocketserver.services.e2ee import E2eeService
from pocketserver.services.ephemeral import ReceiptService, TypingTracker
from pocketserver.services.events import EventPipeline
from pocketserver.services.hierarchy import HierarchyService
from pocketserver.services.key_backup import KeyBackupService
from pocketserver.services.mailer import Mailer
from pocketserver.services.media import MediaService
from pocketserver.services.member_profiles import MemberProfiles
from pocketserver.services.notifier import Notifier
from pocketserver.services.openid import OpenIdService
from pocketserver.services.outbound import IpPolicy, Outbound
from pocketserver.services.passwords import PasswordHasher
from pocketserver.services.presence import PresenceService
from pocketserver.services.push import PushService
from pocketserver.services.ratelimit import RateLimiter
from pocketserver.services.relations import RelationsService
from pocketserver.services.room_reader import RoomReader
from pocketserver.services.rooms import RoomService
from pocketserver.services.search import SearchService
from pocketserver.services.server_keys import ServerSigningKey
from pocketserver.services.sync import SyncService, e2ee_extension
from pocketserver.services.third_party_invites import IdentityClient, ThirdPartyInviteService
from pocketserver.services.threepids import ThreepidService
from pocketserver.services.uia import UIAService
from pocketserver.services.upgrade import UpgradeService
from pocketserver.services.user_directory import UserDirectoryService
from pocketserver.services.voip import VoipService
from pocketserver.storage import events as ev_store
from pocketserver.storage.database import Database

if TYPE_CHECKING:  # made only where configured: imported in build_services
    from pocketserver.services.captcha import RecaptchaVerifier
    from pocketserver.services.sso import CasService

if TYPE_CHECKING:  # federation/ imports services.outbound: imported in build_services
    from pocketserver.federation.client import FederationClient
    from pocketserver.federation.hosting import RoomFederation
    from pocketserver.federation.keyring import KeyRing
    from pocketserver.federation.profiles import RemoteProfiles
    from pocketserver.services.expiry import EventExpiry
    from pocketserver.services.identity import IdentityService
    from pocketserver.services.sliding_sync import SlidingSyncService


@dataclass
class Services:
    config: Config
    db: Database
    signing_key: ServerSigningKey
    # fed-transport: signed requests out, other servers' keys, remote users' profiles.
    federation_client: FederationClient
    keyring: KeyRing
    remote_profiles: RemoteProfiles
    clock: Clock
    notifier: Notifier
    auth: AuthService
    ratelimiter: RateLimiter
    uia: UIAService
    accounts: AccountsService
    presence: PresenceService
    media: MediaService
    e2ee: E2eeService
    key_backup: KeyBackupService
    pipeline: EventPipeline
    rooms: RoomService
    reader: RoomReader
    typing: TypingTracker
    receipts: ReceiptService
    sync: SyncService
    relations: RelationsService
    search: SearchService
    upgrades: UpgradeService
    third_party_invites: ThirdPartyInviteService
    threepids: ThreepidService
    hierarchy: HierarchyService
    user_directory: UserDirectoryService
    voip: VoipService
    push: PushService
    openid: OpenIdService
    appservices: AppserviceService
    federation_sender: FederationSender | None
    federation_keys: FederatedKeys | None
    # Outgoing mail ([email]): the homeserver's 3PID mails and the identity service's.
    mailer: Mailer
    # Background tasks each service wants run in the root nursery: (name, async fn).
    background: list[Any]
    # fed-rooms: the inbound room services (intake, transactions, hosting) the
    # federation routes call; None when federation is off.
    room_federation: RoomFederation | None = None
    # Single sign-on ([cas]) and registration's reCAPTCHA; None where not configured.
    cas: CasService | None = None
    captcha: RecaptchaVerifier | None = None
    identity: IdentityService | None = None
    # MSC2228 self-destructing messages ([experimental]); None while off.
    expiry: EventExpiry | None = None
    _sliding_sync: SlidingSyncService | None = None

    @property
    def sliding_sync(self) -> SlidingSyncService:
        """Made on the first sliding-sync request: a server whose clients all use
        ``/sync`` never loads it."""
        if self._sliding_sync is None:
            from pocketserver.services.sliding_sync import SlidingSyncService

            self._sliding_sync = SlidingSyncService(self.sync, self.e2ee, self.push)
        return self._sliding_sync


def build_services(
    config: Config, db: Database, signing_key: ServerSigningKey, clock: Clock | None = None
) -> Services:
    from pocketserver.federation.client import FederationClient
    from pocketserver.federation.keyring import KeyRing
    from pocketserver.federation.media import RemoteMedia
    from pocketserver.federation.profiles import RemoteProfiles

    clock = clock or Clock()
    notifier = Notifier()
    registry = load_registrations(config)
    auth = AuthService(db, clock, registry)
    ratelimiter = RateLimiter(config.rate_limits, clock)
    if registry:
        ratelimiter.exempt = registry.exempt_from_rate_limits
    passwords = PasswordHasher(config.accounts.password_hash_threads)
    uia = UIAService(db, clock, config.server_name, passwords)
    accounts = AccountsService(config, db, clock, notifier, uia, ratelimiter, passwords)
    accounts.appservices = registry
    presence = PresenceService(db, clock, notifier)
    # The one opener of outbound connections: one TLS context from [federation].
    outbound = Outbound(config.federation)
    outbound.check_tls_files()
    federation_client = FederationClient(config.server_name, signing_key, outbound, config.federation)
    keyring = KeyRing(
        db, clock, config.server_name, signing_key, federation_client, config.federation.trusted_key_servers
    )
    remote_media = (
        RemoteMedia(federation_client, config.media.max_upload_size) if config.federation.enabled else None
    )
    media = MediaService(config, db, clock, outbound=outbound, remote=remote_media)
    e2ee = E2eeService(db, clock, notifier, config.server_name, ratelimiter)
    accounts.on_device_created.append(e2ee.on_device_created)
    accounts.on_device_deleted.append(e2ee.on_device_deleted)
    accounts.on_device_updated.append(e2ee.on_device_updated)
    key_backup = KeyBackupService(db)
    ev_store.configure_event_cache(config.caches.event_cache_size)
    pipeline = EventPipeline(
        db,
        clock,
        notifier,
        config.server_name,
        signing_key,
        max_event_size=config.max_event_size,
        cache_size=config.caches.event_cache_size,
    )
    rooms = RoomService(db, config, clock, notifier, pipeline)
    reader = RoomReader(db, clock)
    typing = TypingTracker(clock, notifier)
    receipts = ReceiptService(db, clock, notifier)
    sync = SyncService(db, clock, notifier, typing)
    sync.extensions.append(e2ee_extension(e2ee))
    push = PushService(
        db, clock, notifier, outbound=outbound, policy=IpPolicy(config.federation.allowed_ip_ranges)
    )
    sync.unread_counter = push.unread_counts
    sync.extensions.append(push.sync_extension())
    accounts.on_device_deleted.append(push.on_device_deleted)
    relations = RelationsService(db, clock)
    rooms.before_send.append(relations.check_new_relation)
    member_profiles = MemberProfiles(db, rooms)
    upgrades = UpgradeService(db, rooms, pipeline)
    rooms.on_membership.append(upgrades.on_membership)
    accounts.on_profile_changed.append(member_profiles.on_profile_changed)
    accounts.on_deactivate.append(member_profiles.on_deactivate)
    identity_client = IdentityClient(outbound, config.federation.allowed_ip_ranges)
    mailer = Mailer(config.email, config.server_name, outbound)
    threepids = ThreepidService(
        config, db, clock, mailer, ratelimiter, identity_client,
        federation_client.authorization,
    )
    uia.email_identity = threepids.auth_stage
    captcha = cas = None
    if config.registration.recaptcha_enabled:
        from pocketserver.services.captcha import RecaptchaVerifier

        captcha = RecaptchaVerifier(config.registration, outbound)
        uia.recaptcha = captcha.verify
    if config.cas.enabled:
        from pocketserver.services.sso import CasService

        cas = CasService(config, db, clock, outbound, uia, accounts)
        uia.sso_enabled = True
        accounts.extra_login_flows.extend(cas.login_flows())
    background: list[Any] = [("media", media.run), ("push", push.run), ("rooms", rooms.run)]
    expiry: EventExpiry | None = None
    if config.experimental.msc2228_self_destruct:
        from pocketserver.services.expiry import EventExpiry

        expiry = EventExpiry(db, clock, pipeline.cache.pop)
        pipeline.in_persist_txn.append(expiry.in_persist_txn)
        pipeline.on_persisted.append(expiry.on_persisted)
        background.append(("expiry", expiry.run))
    appservices = AppserviceService(db, clock, notifier, outbound, registry, config.server_name)
    if registry:
        appservices.ensure_user = accounts.ensure_appservice_user
        auth.on_appservice_request = appservices.mark_alive
        receipts.in_receipt_txn.append(appservices.receipt_in_txn)
        presence.in_presence_txn.append(appservices.presence_in_txn)
        typing.on_typing.append(appservices.on_typing)
        appservices.typing_users = lambda room_id: typing.typing_since(room_id, None) or []
        rooms.appservices = registry
        rooms.query_alias = appservices.query_alias
        rooms.query_user = appservices.query_user
        accounts.query_user = appservices.query_user
        background.append(("appservices", appservices.run))
    sender = fed_keys = edus = None
    if config.federation.enabled:
        sender = FederationSender(db, clock, federation_client, config.server_name)
        edus = FederationEdus(db, sender, config.server_name)
        edus.attach(pipeline, typing, receipts, presence, e2ee)
        e2ee.remote_keys = fed_keys = FederatedKeys(
            db, clock, notifier, federation_client, config.server_name, e2ee
        )
        background += [("federation-sender", sender.run), ("federation-keys", fed_keys.run)]
    svc = Services(
        config=config,
        db=db,
        signing_key=signing_key,
        federation_client=federation_client,
        keyring=keyring,
        remote_profiles=RemoteProfiles(federation_client, clock),
        clock=clock,
        notifier=notifier,
        auth=auth,
        ratelimiter=ratelimiter,
        uia=uia,
        accounts=accounts,
        presence=presence,
        media=media,
        e2ee=e2ee,
        key_backup=key_backup,
        pipeline=pipeline,
        rooms=rooms,
        reader=reader,
        typing=typing,
        receipts=receipts,
        sync=sync,
        relations=relations,
        search=SearchService(db, clock),
        upgrades=upgrades,
        third_party_invites=ThirdPartyInviteService(config, rooms, identity_client),
        threepids=threepids,
        hierarchy=HierarchyService(db),
        user_directory=UserDirectoryService(db),
        voip=VoipService(config.turn, clock),
        push=push,
        openid=OpenIdService(db, clock, config.server_name),
        appservices=appservices,
        federation_sender=sender,
        federation_keys=fed_keys,
        mailer=mailer,
        background=background,
        cas=cas,
        captcha=captcha,
        expiry=expiry,
    )
    if config.federation.enabled:
        svc.third_party_invites.federation = federation_client
    if config.identity.enabled:
        from pocketserver.services.identity import IdentityService, homeserver_calls

        userinfo, onbind = homeserver_calls(
            config.server_name, svc.openid, svc.third_party_invites.on_bind,
            federation_client if config.federation.enabled else None,
        )
        svc.identity = IdentityService(config, db, clock, signing_key, svc.mailer, userinfo, onbind)
    if fed_keys is not None:
        from pocketserver.federation.hosting import build_room_federation

        rf = svc.room_federation = build_room_federation(svc, federation_client, keyring)
        rf.transactions.device_list_edu = fed_keys.on_device_list_update
        rf.transactions.signing_key_edu = fed_keys.on_signing_key_update
        if edus is not None:
            rf.intake.on_persisted.append(edus.on_remote_join)
            rf.remote.in_join_txn.append(edus.presence_on_join_in_txn)
        if expiry is not None:
            rf.intake.in_persist_txn.append(expiry.in_persist_txn)
            rf.intake.on_persisted.append(expiry.on_persisted)
        rf.intake.on_persisted.append(rooms.on_remote_event)
    return svc
