"""`python -m gateway keys ...`: create (the key is printed once), list and revoke API keys."""

from __future__ import annotations

import argparse
import sys

import asyncpg
import msgspec

from gateway.apikeys import USER_ID_PATTERN, PgKeyStore
from gateway.config import Settings
from gateway.errors import DatabaseUnavailable


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    keys = commands.add_parser("keys", help="manage API keys in Postgres (needs DATABASE_URL)")
    actions = keys.add_subparsers(dest="keys_command", required=True)
    create = actions.add_parser("create", help="create a key and print it once")
    create.add_argument("--user", required=True, help="the user id the key authenticates as")
    create.add_argument("--admin", action="store_true", help="admin scope: metrics, analytics, traces, keys")
    create.add_argument("--json", action="store_true", help="print {key, key_id, user_id, admin}")
    actions.add_parser("list", help="list keys (ids and owners, never the keys)")
    revoke = actions.add_parser("revoke", help="revoke a key by its id")
    revoke.add_argument("key_id")


async def run(settings: Settings, args: argparse.Namespace) -> int:
    try:
        return await _run(settings, args)
    except (DatabaseUnavailable, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        sys.stderr.write(f"keys: cannot use the database: {exc}\n")  # a line, not a traceback
        return 1


async def _run(settings: Settings, args: argparse.Namespace) -> int:
    if not settings.database_url:
        sys.stderr.write("keys: set DATABASE_URL (keys live in Postgres; env keys go in GATEWAY_API_KEYS)\n")
        return 2
    if args.keys_command == "create" and not USER_ID_PATTERN.match(args.user):
        sys.stderr.write("keys: --user must be 1-128 letters, digits or _.@:|-\n")
        return 2
    async with asyncpg.create_pool(settings.database_url, min_size=1, max_size=1) as pool:
        store = PgKeyStore(pool)
        await store.ensure_schema()
        if args.keys_command == "create":
            new = await store.create(args.user, admin=args.admin)
            if args.json:
                sys.stdout.write(msgspec.json.encode(new).decode() + "\n")
            else:
                scope = "admin" if new.admin else "user"
                sys.stdout.write(f"{new.key}\n")
                sys.stderr.write(f"key {new.key_id} for {new.user_id} ({scope}); it is not shown again\n")
            return 0
        if args.keys_command == "list":
            for info in await store.list():
                state = "revoked" if info.revoked_at else "active"
                admin = "admin" if info.admin else "user"
                created = f"{info.created_at:%Y-%m-%d}"
                sys.stdout.write(f"{info.key_id}  {info.user_id}  {admin}  {state}  {created}\n")
            return 0
        revoked = await store.revoke(args.key_id)
        sys.stdout.write(f"revoked {revoked} key(s)\n")
        return 0 if revoked else 1
