"""API keys: generated once, stored only as SHA-256 hashes (env list and Postgres table).

Keys are 256-bit random tokens, so a plain SHA-256 is enough: there is no password to guess
offline, and a fast hash keeps the per-request check cheap. A leaked table or env dump of
hashes does not let anyone authenticate.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import re
import secrets
import time
from datetime import datetime
from typing import Any

import asyncpg
import jwt
import msgspec

from gateway.analytics.pool import database_call
from gateway.analytics.schema import migrate
from gateway.config import ConfigError
from gateway.errors import DatabaseUnavailable, Unauthorized

log = logging.getLogger(__name__)

KEY_PREFIX = "igw_"
# What generate_key() makes: only a token of this shape can be in the Postgres table.
ISSUED_KEY = re.compile(r"igw_[A-Za-z0-9_-]{43}")
# "|": auth providers' subjects ("auth0|64f1c2", "google-oauth2|1057..."). \Z: "$" also matches
# before a final newline.
USER_ID_PATTERN = re.compile(r"^[A-Za-z0-9_.@:|-]{1,128}\Z")



class Principal(msgspec.Struct, frozen=True, kw_only=True):
    """Who a request is from and what it may do."""

    user_id: str
    admin: bool = False
    via: str = "key"  # key | jwt | open


class KeyInfo(msgspec.Struct, frozen=True, kw_only=True):
    key_id: str  # the first 12 hex digits of the hash: names a key without revealing it
    user_id: str
    admin: bool
    created_at: datetime
    revoked_at: datetime | None = None


class NewKey(msgspec.Struct, frozen=True, kw_only=True):
    key: str  # shown once
    key_id: str
    user_id: str
    admin: bool


def hash_key(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def parse_static_keys(value: str) -> tuple[tuple[bytes, Principal], ...]:
    """GATEWAY_API_KEYS: "user:key" or "user:key:admin", comma-separated; kept only as hashes."""
    keys: list[tuple[bytes, Principal]] = []
    for entry in filter(None, (e.strip() for e in value.split(","))):
        parts = entry.split(":")
        if len(parts) not in (2, 3) or not parts[0] or not parts[1] or parts[2:] not in ([], ["admin"]):
            raise ConfigError("GATEWAY_API_KEYS entries are user:key or user:key:admin")
        if len(parts[1]) < 16:
            raise ConfigError(f"GATEWAY_API_KEYS: the key of {parts[0]!r} is shorter than 16 characters")
        keys.append((hash_key(parts[1]), Principal(user_id=parts[0], admin=len(parts) == 3)))
    return tuple(keys)


class PgKeyStore:
    """Keys in Postgres, with a short positive cache so most requests never touch the database.

    Revocation takes effect within CACHE_SECONDS. While Postgres is down, a key seen within
    STALE_SECONDS still authenticates (stale-if-error), so an outage is not a lock-out; a key
    not seen is a 503 (the client retries), not a 401 (the client drops its key). After a
    failed lookup, Postgres is left alone for RETRY_SECONDS: a hung database would otherwise
    cost every request LOOKUP_TIMEOUT.
    """

    CACHE_SECONDS = 60.0
    STALE_SECONDS = 3600.0
    UNKNOWN_SECONDS = 10.0  # a client retrying a revoked or mistyped key asks Postgres once
    RETRY_SECONDS = 5.0
    MAX_CACHED = 10_000
    LOOKUP_TIMEOUT = 1.0  # for a connection and the query together
    # A flood of random key-shaped tokens used to queue for the pool's two connections until
    # lookups timed out, which marked the store down: valid keys got 503, and revoked ones passed
    # as stale for an hour. Now each connection has its own kind of lookup (keys seen before, and
    # tokens never seen, where a flood lands), a lookup waits at most SLOT_WAIT for its slot, and
    # one that does not get it is a 503 that marks nothing down.
    SLOT_WAIT = 0.5
    ADMIN_TIMEOUT = 5.0  # the key management endpoints: an admin waits, a request does not
    SCHEMA_TIMEOUT = 30.0  # migrations, the first time

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self._cache: dict[bytes, tuple[Principal, float]] = {}
        self._unknown: dict[bytes, float] = {}
        self._down_until = 0.0  # monotonic: no lookup reaches Postgres before then
        self._seen_slot = asyncio.Semaphore(1)  # re-checks of keys that passed before
        self._unseen_slot = asyncio.Semaphore(1)  # tokens never seen: new keys, and any flood
        self._abandoned: set[asyncio.Future[Any]] = set()  # timed-out queries still winding down
        self.queries = 0  # lookups that reached Postgres

    async def ensure_schema(self) -> None:
        """Apply the migrations (the keys table is 0004), so the CLI works before the gateway ran."""
        await database_call("prepare the keys table", self._migrate(), self.SCHEMA_TIMEOUT)

    async def _migrate(self) -> None:
        async with self.pool.acquire() as conn:
            await migrate(conn)

    async def count_active(self) -> int:
        """How many keys are active, or DatabaseUnavailable (within LOOKUP_TIMEOUT: a hung database
        must not hold start-up for asyncpg's 60 s connect timeout)."""
        if time.monotonic() < self._down_until:
            raise DatabaseUnavailable("cannot check credentials now: the key store is unavailable")
        try:
            return await database_call("count the API keys", self._count(), self.LOOKUP_TIMEOUT)
        except DatabaseUnavailable as exc:
            self._went_down(exc.__cause__)
            raise

    def _went_down(self, why: object) -> None:
        """No lookup reaches Postgres for RETRY_SECONDS (answers from the cache meanwhile)."""
        log.warning("key store unavailable, asking again in %g s: %r", self.RETRY_SECONDS, why)
        self._down_until = time.monotonic() + self.RETRY_SECONDS

    async def _count(self) -> int:
        try:
            value = await self.pool.fetchval("SELECT count(*) FROM gateway_api_keys WHERE revoked_at IS NULL")
        except asyncpg.UndefinedTableError:
            return 0
        return int(value or 0)

    async def lookup(self, digest: bytes) -> Principal | None:
        now = time.monotonic()
        cached = self._cache.get(digest)
        if cached is not None and now - cached[1] < self.CACHE_SECONDS:
            return cached[0]
        if now - self._unknown.get(digest, -self.UNKNOWN_SECONDS) < self.UNKNOWN_SECONDS:
            return None
        if now < self._down_until:
            return self._stale(cached, now)
        slot = self._seen_slot if cached is not None else self._unseen_slot
        try:
            async with asyncio.timeout(self.SLOT_WAIT):
                await slot.acquire()
        except TimeoutError:
            if self._abandoned:  # the slot is held by a query that already timed out: down, not busy
                self._went_down("a timed-out lookup still holds the connection")
                return self._stale(cached, now)
            # busy, not down: no stale answer, no mark (see SLOT_WAIT)
            raise DatabaseUnavailable("cannot check the API key now: too many checks at once") from None
        again = self._cache.get(digest)  # another request may have checked it while this one waited
        if again is not None and time.monotonic() - again[1] < self.CACHE_SECONDS:
            slot.release()
            return again[0]
        self.queries += 1
        # The slot goes with the query, not with this request: a request that gives up leaves its
        # query winding down on the connection (database_call), and the slot stays taken until then.
        fetch = asyncio.ensure_future(self._fetch(digest))
        fetch.add_done_callback(lambda _: slot.release())
        try:
            # One bound for the query: a hung database must not hold this request while asyncpg
            # winds the cancelled query down (database_call).
            row = await database_call("check the API key", fetch, self.LOOKUP_TIMEOUT)
        except DatabaseUnavailable as exc:
            self._went_down(exc.__cause__)
            if not fetch.done():  # still winding down on its connection, holding the slot
                self._abandoned.add(fetch)
                fetch.add_done_callback(self._abandoned.discard)
            return self._stale(cached, now)
        if row is None:
            self._cache.pop(digest, None)
            if len(self._unknown) >= self.MAX_CACHED:
                self._unknown.clear()
            self._unknown[digest] = now
            return None
        principal = Principal(user_id=row["user_id"], admin=row["admin"])
        if len(self._cache) >= self.MAX_CACHED:
            self._cache.clear()
        self._cache[digest] = (principal, now)
        return principal

    async def _fetch(self, digest: bytes) -> asyncpg.Record | None:
        async with self.pool.acquire() as conn:
            return await conn.fetchrow(
                "SELECT user_id, admin FROM gateway_api_keys WHERE key_hash = $1 AND revoked_at IS NULL",
                digest.hex(),
            )

    def _stale(self, cached: tuple[Principal, float] | None, now: float) -> Principal:
        if cached is not None and now - cached[1] < self.STALE_SECONDS:
            return cached[0]
        raise DatabaseUnavailable("cannot check the API key now: the key store is unavailable")

    async def create(self, user_id: str, *, admin: bool = False) -> NewKey:
        key = generate_key()
        digest = hash_key(key).hex()
        await database_call("create the key", self.pool.execute(
            "INSERT INTO gateway_api_keys (key_hash, user_id, admin) VALUES ($1, $2, $3)",
            digest, user_id, admin,
        ), self.ADMIN_TIMEOUT)
        return NewKey(key=key, key_id=digest[:12], user_id=user_id, admin=admin)

    async def list(self) -> list[KeyInfo]:
        rows = await database_call("list the keys", self.pool.fetch(
            "SELECT key_hash, user_id, admin, created_at, revoked_at"
            " FROM gateway_api_keys ORDER BY created_at"
        ), self.ADMIN_TIMEOUT)
        return [
            KeyInfo(
                key_id=row["key_hash"][:12],
                user_id=row["user_id"],
                admin=row["admin"],
                created_at=row["created_at"],
                revoked_at=row["revoked_at"],
            )
            for row in rows
        ]

    async def revoke(self, key_id: str) -> int:
        """Revoke every active key whose id (hash prefix, at least 12 hex digits) matches."""
        if len(key_id) < 12 or any(c not in "0123456789abcdef" for c in key_id):
            return 0
        result = await database_call("revoke the key", self.pool.execute(
            "UPDATE gateway_api_keys SET revoked_at = now()"
            " WHERE key_hash LIKE $1 || '%' AND revoked_at IS NULL",
            key_id,
        ), self.ADMIN_TIMEOUT)
        # Only the revoked key's entries: clearing all made every key "unseen" at once, to queue
        # behind whatever flood of random tokens the unseen slot was serving.
        self._cache = {d: entry for d, entry in self._cache.items() if not d.hex().startswith(key_id)}
        return int(result.split()[-1])


class Authenticator:
    """Checks a bearer credential against the env keys, the Postgres keys and the JWT secret."""

    def __init__(
        self,
        *,
        static_keys: tuple[tuple[bytes, Principal], ...] = (),
        store: PgKeyStore | None = None,
        jwt_secret: str | None = None,
        jwt_audience: str | None = None,
        jwt_issuer: str | None = None,
        open_access: bool = False,
        open_if_no_keys: bool | None = None,
        loopback_only: bool = False,
        cors_origins: frozenset[str] = frozenset(),
    ) -> None:
        self.static_keys = static_keys
        self.store = store
        self.jwt_secret = jwt_secret
        self.jwt_audience = jwt_audience
        # Set it where one secret signs tokens of several issuers (projects, environments sharing
        # a secret): a token the other issued would otherwise pass here.
        self.jwt_issuer = jwt_issuer
        self.open = open_access
        self.loopback_only = loopback_only  # open, only for requests addressed to loopback (Host)
        self.cors_origins = cors_origins  # the pages on other sites that may have browsers call
        # Set when the keys table was the only key source and could not be read at start-up:
        # whether no key exists is not known, so the gateway stays closed (not open, as "no
        # keys" would make it) until `decide` can ask. The value: whether it may open then.
        self.open_if_no_keys = open_if_no_keys
        self._deciding = asyncio.Lock()  # one request asks; those arriving meanwhile wait for it
        self._decision: asyncio.Task[None] | None = None  # /health's, run to its end

    def deciding(self) -> asyncio.Task[None]:
        """`decide` in a task of its own (one at a time): /health waits for it only so long."""
        if self._decision is None or self._decision.done():
            self._decision = asyncio.ensure_future(self.decide())
            # Its outcome is read by whoever still waits; a failure nobody waited for is no news.
            self._decision.add_done_callback(lambda task: task.cancelled() or task.exception())
        return self._decision

    async def decide(self) -> None:
        """Ask the keys table whether any key exists, and open or stay closed for good
        (DatabaseUnavailable, a 503, while it cannot say)."""
        async with self._deciding:
            may_open = self.open_if_no_keys
            if may_open is None:  # decided while this request waited
                return
            assert self.store is not None
            keys = await self.store.count_active()
            self._settle(keys, may_open)

    def _settle(self, keys: int, may_open: bool) -> None:
        if keys == 0 and may_open:
            log.warning("the keys table answered with no active key: the gateway is now OPEN (any caller, "
                        "admin included)")
            self.open = True
        elif keys == 0:
            log.error("the keys table has no active key: every request that needs one is refused until a "
                      "key is created (python -m gateway keys create)")
        else:
            log.info("the keys table answered: authentication on, %d active keys", keys)
        self.open_if_no_keys = None

    async def authenticate(self, token: str) -> Principal | None:
        if self.jwt_secret and token.count(".") == 2:
            return self.verify_jwt(token)
        digest = hash_key(token)
        principal = self.match_static(digest)
        if principal is None and self.store is not None and ISSUED_KEY.fullmatch(token):
            principal = await self.store.lookup(digest)
        return principal

    def match_static(self, digest: bytes) -> Principal | None:
        """Compare against EVERY configured hash, in constant time, with no early exit.

        Comparing hashes (not keys) also means the time cannot depend on a shared prefix.
        """
        found: Principal | None = None
        for candidate, principal in self.static_keys:
            if hmac.compare_digest(candidate, digest):
                found = principal
        return found

    def verify_jwt(self, token: str) -> Principal | None:
        """The token's subject, if it is a valid JWT of the app's auth provider (None without
        GATEWAY_JWT_SECRET)."""
        if not self.jwt_secret:
            return None
        try:
            claims = jwt.decode(
                token,
                self.jwt_secret,
                algorithms=["HS256"],  # never "none", never an algorithm the token picks
                audience=self.jwt_audience,
                issuer=self.jwt_issuer,
                options={"require": ["exp", "sub"], "verify_aud": self.jwt_audience is not None,
                         "verify_iss": self.jwt_issuer is not None},
                leeway=30,
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("the token has expired: refresh it, then send the new one",
                               expired=True) from None
        except jwt.InvalidTokenError as exc:
            log.info("rejected JWT: %s", exc)
            return None
        subject = claims.get("sub")
        if not isinstance(subject, str) or not USER_ID_PATTERN.match(subject):
            log.info("rejected JWT: its sub is not 1-128 letters, digits or _.@:|-")
            return None
        # The auth provider's tokens carry users; admin scope comes only from admin API keys.
        return Principal(user_id=subject, via="jwt")
