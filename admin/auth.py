"""Who is calling the admin API: bearer tokens, each with a name and a role.

- Tokens come from `admin.tokens` (the secret from `token_env` or `token_file`, read at start and
  on reload) and from SLOTSWITCH_ADMIN_TOKEN, an operator token named "env".
- A secret never leaves this module: not in logs, errors, status output or the audit log. What
  leaves is the token's NAME, which is the actor recorded for every change.
- `identify` hashes the offered credential once and compares the digest with every configured
  token's digest, always all of them, with hmac.compare_digest. Digests have a fixed length, so
  the time taken says neither which token matched nor how long any secret is.
- Roles: a viewer may only read (GET, HEAD); an operator may do everything.
- No token at all is allowed only on a loopback address with `admin.insecure_loopback: true`;
  every caller is then the operator "loopback".
- Tokens on a non-loopback listener need TLS (`admin.tls`), or `admin.allow_plaintext: true`,
  which is logged as a WARNING at every start and reload.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from proxy.settings.model import AdminConfig, TokenConfig
from proxy.settings.paths import resolve
from proxy.settings.types import is_loopback, parse_listen

Role = Literal["viewer", "operator"]

TOKEN_ENV = "SLOTSWITCH_ADMIN_TOKEN"
ENV_TOKEN_NAME = "env"
READ_METHODS = frozenset({"GET", "HEAD"})
_PRINTABLE = re.compile(r"[\x21-\x7e]+")  # a bearer credential: visible ASCII, no spaces

log = logging.getLogger("slotswitch.auth")


class AuthConfigError(ValueError):
    """The tokens cannot be used as configured. The message names tokens, never secrets."""


@dataclass(frozen=True, slots=True)
class Principal:
    name: str
    role: Role

    def may(self, method: str) -> bool:
        return self.role == "operator" or method in READ_METHODS


LOOPBACK = Principal("loopback", "operator")


@dataclass(frozen=True, slots=True)
class Credential:
    principal: Principal
    digest: bytes = field(repr=False)  # sha256 of the secret; the secret itself is not kept


def _digest(secret: bytes) -> bytes:
    return hashlib.sha256(secret).digest()


def _read_secret(token: TokenConfig, config_path: Path | None) -> str:
    where = f"admin token {token.name!r}"
    if token.token_env is not None:
        value = os.environ.get(token.token_env)
        if value is None:
            raise AuthConfigError(f"{where}: environment variable {token.token_env} is not set")
        source = f"environment variable {token.token_env}"
    else:
        assert token.token_file is not None  # TokenConfig requires exactly one of the two
        path = resolve(token.token_file, config_path)
        try:
            value = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise AuthConfigError(f"{where}: cannot read token_file {path}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise AuthConfigError(f"{where}: token_file {path} is not UTF-8 text") from None
        source = f"token_file {path}"
    return _checked(value, where, source)


def _checked(value: str, where: str, source: str) -> str:
    secret = value.strip()
    if not secret:
        raise AuthConfigError(f"{where}: {source} is empty")
    if not _PRINTABLE.fullmatch(secret):
        raise AuthConfigError(f"{where}: {source} holds spaces or non-ASCII characters")
    return secret


def load_credentials(admin: AdminConfig, env_secret: str, config_path: Path | None) -> tuple[Credential, ...]:
    """Read every configured token's secret; raise AuthConfigError listing every problem."""
    named, errors = _read_all(admin, env_secret, config_path)
    seen_names: set[str] = set()
    seen_digests: dict[bytes, str] = {}
    credentials = []
    for principal, secret in named:
        digest = _digest(secret.encode())
        if principal.name in seen_names:
            errors.append(f"admin token {principal.name!r}: the name is used twice")
        elif digest in seen_digests:  # one secret, two roles: which one would it be?
            errors.append(f"admin tokens {seen_digests[digest]!r} and {principal.name!r} have the same secret")
        seen_names.add(principal.name)
        seen_digests.setdefault(digest, principal.name)
        credentials.append(Credential(principal, digest))
    if errors:
        raise AuthConfigError("; ".join(errors))
    return tuple(credentials)


def _read_all(
    admin: AdminConfig, env_secret: str, config_path: Path | None
) -> tuple[list[tuple[Principal, str]], list[str]]:
    named: list[tuple[Principal, str]] = []
    errors = []
    if env_secret:
        try:
            secret = _checked(env_secret, f"admin token {ENV_TOKEN_NAME!r}", f"environment variable {TOKEN_ENV}")
            named.append((Principal(ENV_TOKEN_NAME, "operator"), secret))
        except AuthConfigError as exc:
            errors.append(str(exc))
    for token in admin.tokens:
        try:
            named.append((Principal(token.name, token.role), _read_secret(token, config_path)))
        except AuthConfigError as exc:
            errors.append(str(exc))
    return named, errors


def check_exposure(
    listen: str,
    insecure_loopback: bool,
    credentials: tuple[Credential, ...],
    *,
    tls: bool = False,
    allow_plaintext: bool = False,
) -> None:
    """Without any token the admin API is open: allow that only on loopback, and only on request.
    With tokens off loopback, bearer tokens cross the network: only over TLS, unless allowed."""
    host, _ = parse_listen(listen)
    if credentials:
        if not is_loopback(host) and not tls:
            if not allow_plaintext:
                raise AuthConfigError(
                    f"admin.listen is {listen}, not loopback, without TLS: bearer tokens would cross the network "
                    "in clear text. Set admin.tls: true (with tls on the listener), or admin.allow_plaintext: true"
                )
            log.warning("the admin API on %s takes bearer tokens over plain HTTP (admin.allow_plaintext)", listen)
        return
    if not is_loopback(host):
        raise AuthConfigError(
            f"admin.listen is {listen}, not loopback, and no admin token is configured "
            f"(admin.tokens or {TOKEN_ENV}): refusing to expose an unauthenticated admin API"
        )
    if not insecure_loopback:
        raise AuthConfigError(
            f"no admin token is configured (admin.tokens or {TOKEN_ENV}): configure one, or set "
            f"admin.insecure_loopback: true to serve the admin API on {listen} without authentication"
        )


class Authenticator:
    """Maps an Authorization header to a Principal. `credentials` is replaced whole on reload."""

    def __init__(self, credentials: tuple[Credential, ...]) -> None:
        self.credentials = credentials

    def identify(self, authorization: str | None) -> Principal | None:
        if not self.credentials:  # check_exposure allowed an open API (loopback, opted in)
            return LOOPBACK
        scheme, _, offered = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not offered:
            return None
        digest = _digest(offered.encode("utf-8", "surrogateescape"))
        found = None
        for credential in self.credentials:  # every one, always: no early exit
            if hmac.compare_digest(digest, credential.digest) and found is None:
                found = credential.principal
        return found
