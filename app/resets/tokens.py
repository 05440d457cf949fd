"""Reset tokens: signed, not encrypted, references to one reset.

A token carries the pipeline's internal id, the incarnation it was issued in
and the reset's id. It is signed with the app's ``SECRET_KEY``; keys listed in
``SECRET_KEY_FALLBACKS`` still verify, so a key can be rotated out gently.
"""

from __future__ import annotations

import re
import threading
import uuid
from dataclasses import dataclass
from typing import Any

from cachetools import LRUCache
from flask import Flask, current_app
from itsdangerous import BadPayload, BadSignature, SignatureExpired, URLSafeTimedSerializer

from app.errors import InvalidResetToken

SALT = "pipeline-manager.reset-token.v1"
# Real tokens are about 110 characters; anything far longer is refused unread.
MAX_TOKEN_LENGTH = 512
# Verified tokens each process remembers (about 300 bytes each).
VERIFIED_CACHE_SIZE = 4096
_TOKEN_RE = re.compile(r"^[A-Za-z0-9_\-]*\.?[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+$")

REASON_MESSAGES = {
    "missing": "A reset token is required (the 'token' query parameter of reset_status)",
    "malformed": "The reset token is malformed",
    "bad_signature": "The reset token's signature does not verify",
    "expired": "The reset token has expired; issue the reset again",
    "wrong_pipeline": "The reset token was issued for another pipeline",
    "unknown_incarnation": "The reset token names an incarnation this pipeline never had",
    "unknown_reset": "The reset token names a reset this pipeline never had",
}


def invalid_token(reason: str, **details: Any) -> InvalidResetToken:
    """Build the 400 error of one reason."""
    return InvalidResetToken(REASON_MESSAGES[reason], details={"reason": reason, **details})


@dataclass(frozen=True)
class TokenClaims:
    """What a verified token says."""

    pipeline_id: uuid.UUID
    incarnation: int
    reset_id: uuid.UUID


class ResetTokens:
    """Issues and verifies reset tokens; built once per app."""

    def __init__(self, secret_key: str, fallbacks: list[str], max_age: int) -> None:
        # itsdangerous signs with the last key and verifies with any of them.
        keys = [*[k for k in fallbacks if k], secret_key]
        self._serializer = URLSafeTimedSerializer(keys, salt=SALT)
        self.max_age = max_age
        # Tokens that verified, with when they were signed: only good ones, bounded.
        self._verified: LRUCache[str, tuple[TokenClaims, int]] = LRUCache(VERIFIED_CACHE_SIZE)
        self._lock = threading.Lock()
        # Ages are measured on the signer's clock, as itsdangerous measures them.
        self._clock = self._serializer.make_signer()

    def issue(self, pipeline_id: uuid.UUID, incarnation: int, reset_id: uuid.UUID) -> str:
        """Return a signed token for one reset."""
        return self._serializer.dumps({"p": pipeline_id.hex, "i": incarnation, "r": reset_id.hex})

    def read(self, token: str | None) -> TokenClaims:
        """Verify a token and return its claims, or raise ``InvalidResetToken``.

        A token verified lately is found in a small per-process cache (pollers
        send the same token again and again); its age is checked every time.
        """
        if not token:
            raise invalid_token("missing")
        with self._lock:
            verified = self._verified.get(token)
        if verified is None:
            verified = self._verify(token)
            with self._lock:
                self._verified[token] = verified
        claims, signed_at = verified
        if self._clock.get_timestamp() - signed_at > self.max_age:
            raise invalid_token("expired", max_age_seconds=self.max_age)
        return claims

    def _verify(self, token: str) -> tuple[TokenClaims, int]:
        """Check a token's form and signature; return its claims and when it was signed."""
        if len(token) > MAX_TOKEN_LENGTH or not _TOKEN_RE.match(token):
            raise invalid_token("malformed")
        try:
            payload, signed_at = self._serializer.loads(
                token, max_age=self.max_age, return_timestamp=True
            )
        except SignatureExpired:
            raise invalid_token("expired", max_age_seconds=self.max_age) from None
        except BadPayload:
            raise invalid_token("malformed") from None
        except BadSignature:
            raise invalid_token("bad_signature") from None
        try:
            claims = TokenClaims(
                pipeline_id=_uuid(payload["p"]),
                incarnation=_strict_int(payload["i"]),
                reset_id=_uuid(payload["r"]),
            )
        except (KeyError, TypeError, ValueError):
            raise invalid_token("malformed") from None
        return claims, int(signed_at.timestamp())


def _strict_int(value: Any) -> int:
    """Return ``value`` if it is an int (and not a bool), else raise ``TypeError``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError("not an integer")
    return value


def _uuid(value: Any) -> uuid.UUID:
    """Parse a hex UUID; anything but a string raises ``TypeError``."""
    if not isinstance(value, str):
        raise TypeError("not a string")
    return uuid.UUID(hex=value)


def reset_tokens() -> ResetTokens:
    """Return the current app's token signer."""
    return current_app.extensions["reset_tokens"]


def init_app(app: Flask) -> None:
    """Build the token signer once, from the final configuration."""
    fallbacks = app.config.get("SECRET_KEY_FALLBACKS") or []
    if isinstance(fallbacks, str):
        fallbacks = [k.strip() for k in fallbacks.split(",") if k.strip()]
    app.extensions["reset_tokens"] = ResetTokens(
        app.config["SECRET_KEY"], list(fallbacks), int(app.config["RESET_TOKEN_MAX_AGE"])
    )
