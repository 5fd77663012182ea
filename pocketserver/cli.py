"""The ``pocketserver`` command: ``main(argv) -> int``.

``pocketserver`` with no arguments serves a working homeserver on localhost.
Subcommands: serve, init, register-user, create-registration-token, media,
check-federation.
"""

from __future__ import annotations

import argparse
import getpass
import logging
import sys
from pathlib import Path
from typing import Any

from pocketserver.config import EXAMPLE_CONFIG, Config, ConfigError, load_config


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pocketserver", description="A complete, light Matrix homeserver in one SQLite file."
    )
    p.add_argument("--config", "-c", metavar="FILE", help="TOML configuration file")
    p.add_argument("--data-dir", metavar="DIR", help="folder for the database and keys")
    sub = p.add_subparsers(dest="command")
    sub.add_parser("serve", help="run the homeserver (the default)")
    init = sub.add_parser("init", help="write a commented example configuration")
    init.add_argument("path", nargs="?", default="pocketserver.toml")
    init.add_argument("--force", action="store_true", help="overwrite an existing file")
    reg = sub.add_parser("register-user", help="create a local user")
    reg.add_argument("name", help="localpart (alice) or full user ID (@alice:server)")
    reg.add_argument("--admin", action="store_true", help="make the user a server admin")
    reg.add_argument("--password-file", metavar="F", help="read the password from a file ('-': stdin)")
    tok = sub.add_parser("create-registration-token", help="create a registration token")
    tok.add_argument("token", nargs="?", help="the token (random if omitted)")
    tok.add_argument("--uses", type=int, default=None, help="how many registrations it allows")
    chk = sub.add_parser(
        "check-federation", help="check whether other servers can federate with DOMAIN"
    )
    chk.add_argument("domain", help="a server name (example.org, matrix.example.org:8448)")
    _media_parser(sub)
    return p


def _load(args: argparse.Namespace) -> Config:
    overrides: dict[str, Any] = {}
    if args.data_dir:
        overrides["data_dir"] = args.data_dir
    return load_config(args.config, **overrides)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_make-certificate"] and len(argv) == 4:
        # Internal: run by the server in a child process on first start (services/tls.py).
        from pocketserver.services.tls import write_self_signed_certificate

        write_self_signed_certificate(Path(argv[1]), Path(argv[2]), argv[3])
        return 0
    args = _parser().parse_args(argv)
    try:
        if args.command == "init":
            return _init(args)
        cfg = _load(args)
        logging.basicConfig(
            level=cfg.log_level.upper(),
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
        if args.command in (None, "serve"):
            from pocketserver.services.appservices import AppserviceConfigError, load_registrations

            try:
                load_registrations(cfg)
            except AppserviceConfigError as e:
                print(f"pocketserver: {e}", file=sys.stderr)
                return 1
            _reexec_without_docstrings(argv)
            return _serve(cfg)
        if args.command == "register-user":
            return _register_user(cfg, args)
        if args.command == "create-registration-token":
            return _create_token(cfg, args)
        if args.command == "media":
            return _media(cfg, args)
        if args.command == "check-federation":
            return _check_federation(cfg, args)
    except ConfigError as e:
        print(f"pocketserver: configuration error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 2


def _check_federation(cfg: Config, args: argparse.Namespace) -> int:
    import trio

    from pocketserver.federation.checker import check_federation

    logging.getLogger().setLevel(logging.WARNING)
    ok = trio.run(check_federation, cfg, args.domain, lambda line: print(line, flush=True))
    return 0 if ok else 1


def _init(args: argparse.Namespace) -> int:
    path = Path(args.path)
    if path.exists() and not args.force:
        print(f"pocketserver: {path} exists (use --force to overwrite)", file=sys.stderr)
        return 1
    path.write_text(EXAMPLE_CONFIG, encoding="utf-8")
    print(f"wrote {path}; start with: pocketserver --config {path}")
    return 0


def _reexec_without_docstrings(argv: list[str]) -> None:
    """Serve from an interpreter started with ``-OO``.

    Docstrings of everything imported (ours and the libraries') are about 3 MB of an
    idle server's 55 MB budget; ``-OO`` drops them (and asserts, which we use only to
    narrow types). The process is replaced in place (same pid, same signals), once:
    the new interpreter already has the flag. Skipped in a packaged executable, which
    is built optimised; when POCKETSERVER_KEEP_DOCSTRINGS is set (debugging); and when
    Python may not write bytecode (PYTHONDONTWRITEBYTECODE), because an ``-OO``
    interpreter that cannot cache its ``.opt-2.pyc`` files would compile every module
    at every start and double the start-up time.
    """
    import os

    if sys.flags.optimize >= 2 or getattr(sys, "frozen", False) or sys.dont_write_bytecode:
        return
    if os.environ.get("POCKETSERVER_KEEP_DOCSTRINGS"):
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-OO", "-m", "pocketserver", *argv])


def _serve(cfg: Config) -> int:
    import trio

    from pocketserver.server import ListenError, run_server, tune_interpreter

    tune_interpreter()
    try:
        trio.run(run_server, cfg)
    except ListenError as e:
        print(f"pocketserver: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"pocketserver: cannot start: {e}", file=sys.stderr)
        return 1
    return 0


def _register_user(cfg: Config, args: argparse.Namespace) -> int:
    from pocketserver.protocol.identifiers import InvalidIdentifier, UserID, is_valid_localpart
    from pocketserver.server import prepare
    from pocketserver.services.clock import Clock
    from pocketserver.services.passwords import hash_password_sync
    from pocketserver.storage import accounts

    name: str = args.name
    if name.startswith("@"):
        try:
            uid = UserID.parse(name)
        except InvalidIdentifier as e:
            print(f"pocketserver: {e}", file=sys.stderr)
            return 1
        if uid.domain != cfg.server_name:
            print(f"pocketserver: {name} is not on this server ({cfg.server_name})", file=sys.stderr)
            return 1
        localpart = uid.localpart
    else:
        localpart = name
    if not is_valid_localpart(localpart):
        print(
            "pocketserver: a user name may contain only a-z, 0-9, and . _ = - /",
            file=sys.stderr,
        )
        return 1
    if args.password_file:
        if args.password_file == "-":
            password = sys.stdin.readline().rstrip("\n")
        else:
            password = Path(args.password_file).read_text(encoding="utf-8").rstrip("\n")
    else:
        password = getpass.getpass(f"Password for @{localpart}:{cfg.server_name}: ")
        if password != getpass.getpass("Again: "):
            print("pocketserver: the passwords differ", file=sys.stderr)
            return 1
    if not password:
        print("pocketserver: the password is empty", file=sys.stderr)
        return 1
    user_id = f"@{localpart}:{cfg.server_name}"
    db, _key, _notes = prepare(cfg)
    try:
        pw_hash = hash_password_sync(password)
        created = db.write_sync(
            lambda conn: accounts.insert_user(
                conn, user_id, pw_hash, Clock().time_ms(), is_admin=args.admin
            )
        )
    finally:
        db.close()
    if not created:
        print(f"pocketserver: {user_id} already exists", file=sys.stderr)
        return 1
    print(f"created {user_id}{' (admin)' if args.admin else ''}")
    return 0


def _create_token(cfg: Config, args: argparse.Namespace) -> int:
    import secrets

    from pocketserver.server import prepare
    from pocketserver.storage import accounts

    token = args.token or secrets.token_urlsafe(12)
    db, _key, _notes = prepare(cfg)
    try:
        ok = db.write_sync(accounts.insert_registration_token, token, args.uses, None)
    finally:
        db.close()
    if not ok:
        print(f"pocketserver: token {token!r} exists", file=sys.stderr)
        return 1
    print(token)
    return 0


# -- media -----------------------------------------------------------------------------


def _media_parser(sub: Any) -> None:
    media = sub.add_parser("media", help="delete media and reclaim their space")
    msub = media.add_subparsers(dest="media_command", required=True)
    delete = msub.add_parser("delete", help="delete media (and their thumbnails)")
    delete.add_argument("--id", dest="mxc", metavar="MXC", help="one media item: mxc://server/id")
    delete.add_argument("--user", metavar="USER_ID", help="everything a user uploaded")
    delete.add_argument(
        "--before", metavar="DATE", help="media created before DATE (YYYY-MM-DD or ISO 8601, UTC)"
    )
    delete.add_argument("--purge", action="store_true", help="reclaim the space at once")
    msub.add_parser("purge", help="drop unreferenced content and give the space back (VACUUM)")
    msub.add_parser("stats", help="how much media is stored, and what it costs on disk")


def _parse_date_ms(value: str) -> int:
    import datetime

    dt = datetime.datetime.fromisoformat(value)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=datetime.UTC)
    return int(dt.timestamp() * 1000)


def _media(cfg: Config, args: argparse.Namespace) -> int:
    from pocketserver.server import prepare
    from pocketserver.services.media import delete_media_sync
    from pocketserver.storage import media as media_store

    if args.media_command == "delete":
        chosen = [x for x in (args.mxc, args.user, args.before) if x]
        if len(chosen) != 1:
            print("pocketserver: give exactly one of --id, --user, --before", file=sys.stderr)
            return 2
        before = None
        if args.before:
            try:
                before = _parse_date_ms(args.before)
            except ValueError:
                print(f"pocketserver: not a date: {args.before}", file=sys.stderr)
                return 2
    db, _key, _notes = prepare(cfg)
    try:
        if args.media_command == "delete":
            try:
                n = delete_media_sync(
                    db, mxc=args.mxc, user_id=args.user, before_ts=before,
                    server_name=cfg.server_name,
                )
            except ValueError as e:
                print(f"pocketserver: {e}", file=sys.stderr)
                return 2
            print(f"deleted {n} media item(s)")
            if args.purge:
                _media_purge(db, media_store)
            return 0 if n or not args.mxc else 1
        if args.media_command == "purge":
            _media_purge(db, media_store)
            return 0
        stats = db.read_sync(media_store.storage_stats)
        for k, v in stats.items():
            print(f"{k:16} {v}")
        return 0
    finally:
        db.close()


def _media_purge(db: Any, media_store: Any) -> None:
    from pocketserver.storage.database import open_connection

    dropped = db.write_sync(media_store.delete_unreferenced_content)
    path = Path(db.path)
    before = path.stat().st_size
    # VACUUM rewrites the file without its free pages: the space goes back to the disk.
    # (It cannot run inside a transaction, so on a connection of its own.)
    conn = open_connection(path)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.execute("VACUUM")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    after = path.stat().st_size
    print(f"dropped {dropped} unreferenced content item(s); database {before} -> {after} bytes")


if __name__ == "__main__":
    raise SystemExit(main())
