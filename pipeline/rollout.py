"""A/B rollout of AI classification: a stable arm per user, the same in every process."""

from __future__ import annotations

import hashlib

import msgspec

from pipeline.types import Arm


class Rollout(msgspec.Struct, frozen=True):
    enabled: bool = True
    percentage: int = 100  # share of users in the "ai" arm

    def arm(self, user_id: str, *, everyone: bool = False) -> Arm:
        """The user's arm; `everyone`: "ai" whatever the percentage (only the kill switch, `enabled`,
        still says "existing")."""
        if not self.enabled:
            return "existing"
        if everyone or self.percentage >= 100:  # no hash to compute
            return "ai"
        if self.percentage <= 0:
            return "existing"
        # blake2b, not hash(): Python's str hash is salted per process.
        bucket = int.from_bytes(hashlib.blake2b(user_id.encode(), digest_size=8).digest(), "big") % 100
        return "ai" if bucket < self.percentage else "existing"
