"""What Python's ssl module cannot set on the listener's SSLContext, set through libssl itself:

- session ticket keys shared by every worker, so a client resumes on whichever worker it lands on
  (SSL_CTX_ctrl with SSL_CTRL_SET_TLSEXT_TICKET_KEYS: 16 bytes of key name, 32 of HMAC key, 32 of AES key);
- the key exchange groups of Mozilla's intermediate profile, X25519, P-256 and P-384 (OpenSSL's
  default list also offers P-521 and X448), with SSL_CTRL_SET_GROUPS_LIST. Without libssl the listener
  offers P-256 alone (ssl's set_ecdh_curve), still within the profile.

Both apply to the listener's first context (`ServerTLS.front`): OpenSSL takes a connection's groups and
its ticket keys from the context it was created with, whichever context SNI then moves it to.

This module calls SSL_CTX_ctrl through ctypes on the listener's SSL_CTX, which it reaches only when every check passes:
CPython with the usual object header, the libssl that this process has mapped (the one `_ssl` uses),
and SSL_CTX_get_options on the pointer read back equal to the context's own `options` (so the pointer
is the SSL_CTX of that context). When a check fails, `install` returns False and says why, and each
worker keeps OpenSSL's own random keys: a client then resumes only when it lands on the same worker.

The master makes the keys (`new_keys`) and sends them to the workers at start and at every rotation
(`tls.ticket_key_rotation`). OpenSSL holds one key set at a time, so a rotation ends the tickets issued
before it: their clients make one full handshake.
"""

from __future__ import annotations

import ctypes
import logging
import os
import ssl
import sys
from functools import cache

log = logging.getLogger("slotswitch.tls")

KEYS_LENGTH = 80
_SET_KEYS = 59  # SSL_CTRL_SET_TLSEXT_TICKET_KEYS
_GET_KEYS = 58  # SSL_CTRL_GET_TLSEXT_TICKET_KEYS
_SET_GROUPS_LIST = 92  # SSL_CTRL_SET_GROUPS_LIST
GROUPS = b"X25519:P-256:P-384"


def new_keys() -> bytes:
    return os.urandom(KEYS_LENGTH)


@cache
def _libssl() -> ctypes.CDLL | None:
    try:
        with open("/proc/self/maps", encoding="ascii", errors="replace") as maps:
            paths = sorted({line.split()[-1] for line in maps if "/libssl.so" in line})
    except OSError:
        return None
    if len(paths) != 1:
        return None
    lib = ctypes.CDLL(paths[0])
    lib.SSL_CTX_get_options.argtypes = [ctypes.c_void_p]
    lib.SSL_CTX_get_options.restype = ctypes.c_uint64
    lib.SSL_CTX_ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_void_p]
    lib.SSL_CTX_ctrl.restype = ctypes.c_long
    return lib


def _ssl_ctx(ctx: ssl.SSLContext) -> tuple[ctypes.CDLL, int] | str:
    """libssl and the SSL_CTX pointer of `ctx`, or why they cannot be had safely."""
    if sys.implementation.name != "cpython" or object.__basicsize__ != 16:
        return "not CPython with the standard object header"
    if not ssl.OPENSSL_VERSION.startswith("OpenSSL "):
        return f"not OpenSSL ({ssl.OPENSSL_VERSION})"
    lib = _libssl()
    if lib is None:
        return "cannot tell which libssl this process uses"
    # PySSLContext: PyObject_HEAD, then `SSL_CTX *ctx` (Modules/_ssl.c, unchanged since Python 3.x began)
    pointer = ctypes.c_void_p.from_address(id(ctx) + object.__basicsize__).value
    if not pointer or lib.SSL_CTX_get_options(pointer) != ctx.options:
        return "the context's SSL_CTX could not be confirmed"
    return lib, pointer


def install(ctx: ssl.SSLContext, keys: bytes) -> bool:
    """Make `ctx` issue and accept tickets under `keys`; False (logged) when that cannot be done safely."""
    found = _ssl_ctx(ctx)
    if isinstance(found, str):
        log.warning(
            "session ticket keys are not shared between workers (%s): a client resumes its TLS "
            "session only on the worker that issued its ticket",
            found,
        )
        return False
    lib, pointer = found
    buffer = ctypes.create_string_buffer(keys, KEYS_LENGTH)
    if lib.SSL_CTX_ctrl(pointer, _SET_KEYS, KEYS_LENGTH, buffer) != 1:
        log.warning("libssl refused the session ticket keys: each worker keeps its own")
        return False
    return True


def set_groups(ctx: ssl.SSLContext) -> None:
    """Offer X25519, P-256 and P-384 for the key exchange; P-256 alone if libssl cannot be reached."""
    found = _ssl_ctx(ctx)
    if not isinstance(found, str):
        lib, pointer = found
        if lib.SSL_CTX_ctrl(pointer, _SET_GROUPS_LIST, 0, ctypes.c_char_p(GROUPS)) == 1:
            return
    ctx.set_ecdh_curve("prime256v1")


def installed(ctx: ssl.SSLContext) -> bytes | None:
    """The ticket keys `ctx` uses now (for tests), or None."""
    found = _ssl_ctx(ctx)
    if isinstance(found, str):
        return None
    lib, pointer = found
    buffer = ctypes.create_string_buffer(KEYS_LENGTH)
    if lib.SSL_CTX_ctrl(pointer, _GET_KEYS, KEYS_LENGTH, buffer) != 1:
        return None
    return buffer.raw
