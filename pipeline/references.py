"""@tag references: "put @sarah in this red dress" names an image the user saved as `sarah`."""

from __future__ import annotations

import re
from typing import Protocol

MENTION = re.compile(r"(?<![\w@])@([A-Za-z0-9][A-Za-z0-9_.-]{0,63})")
# Tags one user may keep: without a bound, one user's saves (thousands a second) filled the
# process's memory, and listing them returned a 118 MB body that stalled every other request.
MAX_TAGS_PER_USER = 500
# And in all, in the memory store (no DATABASE_URL): where callers name themselves (open mode,
# X-User-Id), a new user id per save would otherwise pass the per-user bound.
MAX_TAGS_IN_MEMORY = 100_000


def find_mentions(prompt: str) -> tuple[str, ...]:
    """Tags in order of first appearance, lower-cased, without '@' or trailing dots."""
    if "@" not in prompt:  # most prompts: skip the scan, whose look-behind runs at every character
        return ()
    seen: dict[str, None] = {}
    for match in MENTION.finditer(prompt):
        seen.setdefault(match.group(1).rstrip(".").lower(), None)
    return tuple(seen)


class ReferenceStore(Protocol):
    async def resolve(self, user_id: str, tags: tuple[str, ...]) -> dict[str, str]:
        """Map each known tag of this user to its image URL; unknown tags are left out."""
        ...


class UserTagStore(ReferenceStore, Protocol):
    """Where users save their tags: memory by default, Postgres with DATABASE_URL."""

    async def save(self, user_id: str, tag: str, image_url: str) -> bool:
        """Save or replace one tag; False: a new tag, and the user has MAX_TAGS_PER_USER already."""
        ...

    async def list(self, user_id: str) -> dict[str, str]: ...

    async def delete(self, user_id: str, tag: str) -> bool:
        """Forget one tag; False: the user had no such tag."""
        ...


class MemoryReferenceStore:
    """Per-process tags: the default when no database is configured."""

    def __init__(self) -> None:
        self._tags: dict[str, dict[str, str]] = {}
        self._count = 0

    async def resolve(self, user_id: str, tags: tuple[str, ...]) -> dict[str, str]:
        mine = self._tags.get(user_id, {})
        return {tag: mine[tag] for tag in tags if tag in mine}

    async def save(self, user_id: str, tag: str, image_url: str) -> bool:
        mine = self._tags.get(user_id, {})
        if tag.lower() not in mine:
            if len(mine) >= MAX_TAGS_PER_USER or self._count >= MAX_TAGS_IN_MEMORY:
                return False
            self._count += 1
        self._tags[user_id] = mine
        mine[tag.lower()] = image_url
        return True

    async def list(self, user_id: str) -> dict[str, str]:
        return dict(self._tags.get(user_id, {}))

    async def delete(self, user_id: str, tag: str) -> bool:
        mine = self._tags.get(user_id, {})
        if mine.pop(tag.lower(), None) is None:
            return False
        self._count -= 1
        if not mine:  # a user with no tags left costs no entry
            del self._tags[user_id]
        return True
