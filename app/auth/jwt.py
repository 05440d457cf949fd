"""JWT bearer tokens, verified with PyJWT against keys loaded once at start-up.

Two kinds of key, each with its own algorithm allow-list, so that a token can
never pick the algorithm a key is used with (``alg: none`` and HS256 tokens
"signed" with an RSA public key are refused):

- ``JWT_HS256_SECRET``: a shared secret, for HS256 only;
- ``JWT_PUBLIC_KEY_FILES`` (PEM files) and ``JWT_JWKS_FILE`` (a JWKS document):
  RSA public keys, for RS256 only. Relative paths are taken from the instance
  folder; nothing is fetched over the network.

``exp`` is required; ``nbf`` and ``iat`` are honoured with ``JWT_LEEWAY``
seconds of clock skew; ``iss`` and ``aud`` must match ``JWT_ISSUER`` and
``JWT_AUDIENCE``. The tenant and the role (``read``, ``write`` or ``admin``)
come from the claims named by ``JWT_TENANT_CLAIM`` and ``JWT_ROLE_CLAIM``.
The principal expires at ``exp``: an API key made with the token expires no later.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from flask import Flask

from app.auth import Principal
from app.auth.models import Role
from app.pipelines.models import is_valid_name

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

HS256 = "HS256"
RS256 = "RS256"
# An HS256 secret shorter than the hash's output weakens it (RFC 7518, 3.2).
MIN_SECRET_BYTES = 32
# Longer bearer tokens are refused unread.
MAX_TOKEN_LENGTH = 8192


class JwtRejected(Exception):
    """The token cannot be accepted; ``reason`` and ``details`` say why."""

    def __init__(self, reason: str, message: str, **details: Any) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.details = details


@dataclass(frozen=True)
class RsaKey:
    """An RSA public key and the ``kid`` it is known by (if any)."""

    kid: str | None
    key: RSAPublicKey


def _instance_path(app: Flask, path: str) -> str:
    """Resolve a configured path; a relative one is taken from the instance folder."""
    return path if os.path.isabs(path) else os.path.join(app.instance_path, path)


def _as_list(value: Any) -> list[str]:
    """Accept a list or a comma-separated string (as environment variables give)."""
    if not value:
        return []
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return [str(part) for part in value]


def _load_pem(path: str) -> RsaKey:
    """Load an RSA public key from a PEM file (it has no ``kid``: it verifies any token)."""
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    with open(path, "rb") as fh:
        key = load_pem_public_key(fh.read())
    if not isinstance(key, RSAPublicKey):
        raise RuntimeError(f"{path} is not an RSA public key; only RS256 is supported")
    return RsaKey(kid=None, key=key)


def _load_jwks(path: str) -> list[RsaKey]:
    """Load the RSA signing keys of a JWKS file."""
    import jwt

    with open(path, encoding="utf-8") as fh:
        document = json.load(fh)
    keys = []
    for entry in document.get("keys", []):
        if entry.get("kty") != "RSA" or entry.get("use", "sig") != "sig":
            continue
        if entry.get("alg", RS256) != RS256:
            continue
        jwk = jwt.PyJWK.from_dict({**entry, "alg": RS256})
        keys.append(RsaKey(kid=entry.get("kid"), key=jwk.key))
    if not keys:
        raise RuntimeError(f"{path} holds no RSA signing key for RS256")
    return keys


class JwtVerifier:
    """Verifies bearer JWTs; built once per app from its configuration."""

    def __init__(
        self,
        *,
        hs256_secret: bytes | None,
        rsa_keys: Sequence[RsaKey],
        issuer: str,
        audience: str | list[str],
        leeway: float,
        tenant_claim: str,
        role_claim: str,
    ) -> None:
        self.hs256_secret = hs256_secret
        self.rsa_keys = list(rsa_keys)
        self.issuer = issuer
        self.audience = audience
        self.leeway = leeway
        self.tenant_claim = tenant_claim
        self.role_claim = role_claim

    @classmethod
    def from_config(cls, app: Flask) -> JwtVerifier | None:
        """Build the verifier from the app's settings; None when JWT is not configured."""
        config = app.config
        secret = config.get("JWT_HS256_SECRET") or None
        rsa_keys = [
            _load_pem(_instance_path(app, p)) for p in _as_list(config.get("JWT_PUBLIC_KEY_FILES"))
        ]
        if config.get("JWT_JWKS_FILE"):
            rsa_keys += _load_jwks(_instance_path(app, config["JWT_JWKS_FILE"]))
        if secret is None and not rsa_keys:
            return None
        if secret is not None:
            secret = secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)
            if len(secret) < MIN_SECRET_BYTES:
                raise RuntimeError(f"JWT_HS256_SECRET must be at least {MIN_SECRET_BYTES} bytes")
        issuer = config.get("JWT_ISSUER")
        audience = config.get("JWT_AUDIENCE")
        if not issuer or not audience:
            # Without them, a token minted for another service would be accepted here.
            raise RuntimeError("JWT keys are configured: JWT_ISSUER and JWT_AUDIENCE must be set")
        return cls(
            hs256_secret=secret,
            rsa_keys=rsa_keys,
            issuer=issuer,
            audience=audience,
            leeway=float(config.get("JWT_LEEWAY", 30)),
            tenant_claim=config.get("JWT_TENANT_CLAIM") or "tenant",
            role_claim=config.get("JWT_ROLE_CLAIM") or "role",
        )

    def verify(self, token: str) -> Principal:
        """Return the principal a token names, or raise :class:`JwtRejected`."""
        import jwt

        if len(token) > MAX_TOKEN_LENGTH:
            raise JwtRejected("malformed", "The bearer token is too long")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise JwtRejected(
                "malformed", "The bearer credential is neither an API key nor a JWT"
            ) from None
        alg = header.get("alg")
        if alg == HS256 and self.hs256_secret is not None:
            claims = self._decode(token, self.hs256_secret, HS256)
        elif alg == RS256 and self.rsa_keys:
            claims = self._decode_rsa(token, header.get("kid"))
        else:
            raise JwtRejected(
                "algorithm_not_allowed",
                f"JWTs signed with {alg!r} are not accepted here",
                allowed_algorithms=self.allowed_algorithms,
            )
        return self._principal(claims)

    @property
    def allowed_algorithms(self) -> list[str]:
        """The algorithms that some configured key verifies."""
        return [alg for alg, on in ((HS256, self.hs256_secret), (RS256, self.rsa_keys)) if on]

    def _decode_rsa(self, token: str, kid: Any) -> dict[str, Any]:
        """Verify with the JWKS key the token's ``kid`` names, or else try each key."""
        keys = [k for k in self.rsa_keys if kid is not None and k.kid == kid]
        if not keys:
            keys = [k for k in self.rsa_keys if k.kid is None or kid is None]
        if not keys:
            raise JwtRejected("bad_signature", "The JWT is signed with a key not trusted here")
        for candidate in keys[:-1]:
            try:
                return self._decode(token, candidate.key, RS256)
            except JwtRejected as exc:
                if exc.reason != "bad_signature":
                    raise
        return self._decode(token, keys[-1].key, RS256)

    def _decode(self, token: str, key: Any, algorithm: str) -> dict[str, Any]:
        """Verify the signature and the registered claims with one key."""
        import jwt

        try:
            return jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                issuer=self.issuer,
                audience=self.audience,
                leeway=self.leeway,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise JwtRejected("expired", "The JWT has expired; get a new one") from None
        except jwt.ImmatureSignatureError:
            raise JwtRejected(
                "not_yet_valid", "The JWT is not valid yet (nbf or iat); check the clocks"
            ) from None
        except jwt.InvalidIssuerError:
            raise JwtRejected(
                "wrong_issuer", "The JWT's issuer is not trusted here", expected=self.issuer
            ) from None
        except jwt.InvalidAudienceError:
            raise JwtRejected(
                "wrong_audience", "The JWT is meant for another audience", expected=self.audience
            ) from None
        except jwt.MissingRequiredClaimError as exc:
            raise JwtRejected(
                "missing_claim", f"The JWT lacks the '{exc.claim}' claim", claim=exc.claim
            ) from None
        except jwt.InvalidSignatureError:
            raise JwtRejected(
                "bad_signature", "The JWT's signature does not verify with a trusted key"
            ) from None
        except jwt.InvalidAlgorithmError:
            raise JwtRejected(
                "algorithm_not_allowed",
                f"JWTs signed with {algorithm!r} are not accepted here",
                allowed_algorithms=self.allowed_algorithms,
            ) from None
        except jwt.InvalidTokenError:
            raise JwtRejected("malformed", "The JWT is malformed") from None

    def _principal(self, claims: dict[str, Any]) -> Principal:
        """Read the tenant and the role from the verified claims."""
        tenant = claims.get(self.tenant_claim)
        if tenant is None:
            raise JwtRejected(
                "missing_claim",
                f"The JWT lacks the '{self.tenant_claim}' claim",
                claim=self.tenant_claim,
            )
        # Tenants are named like pipelines (whole-value match: "B\n" is not "B"),
        # so the command line can act for any of them.
        if not is_valid_name(tenant):
            raise JwtRejected(
                "invalid_claim",
                f"The JWT's '{self.tenant_claim}' claim must be 1 to 100 letters, digits, "
                "'_' or '-'",
                claim=self.tenant_claim,
            )
        role = _role_of(claims.get(self.role_claim))
        if role is None:
            raise JwtRejected(
                "missing_claim" if self.role_claim not in claims else "invalid_claim",
                f"The JWT's '{self.role_claim}' claim must be 'read', 'write' or 'admin'",
                claim=self.role_claim,
            )
        subject = claims.get("sub")
        name = f"jwt:{subject}" if isinstance(subject, str) and subject else "jwt"
        # exp is required and PyJWT has checked that it is a number, not that it is a date.
        try:
            expires_at = dt.datetime.fromtimestamp(int(claims["exp"]), dt.UTC)
        except (OverflowError, OSError, ValueError):
            raise JwtRejected(
                "invalid_claim", "The JWT's 'exp' claim is out of range", claim="exp"
            ) from None
        return Principal(name=name, tenant=tenant, role=role, expires_at=expires_at)


def _role_of(value: Any) -> str | None:
    """Return the strongest role a role claim grants (a string or a list of strings)."""
    values = value if isinstance(value, list) else [value]
    for role in reversed(Role.ALL):
        if role in values:
            return role
    return None
