"""TLS contexts: the traffic listener's (certificates chosen by SNI, reloaded live) and the upstreams'.

The data path itself never sees TLS: the listener's connections are proxy.datapath.tlsconn's, which decrypt
before `ClientConnection.data_received`, so the fast head scan and llhttp read the same bytes as on a plain
listener.

Invariants:
- A listener's SSLContext is fixed when the listener is created: `ServerTLS.front`. Every handshake
  runs its `sni_callback`, which moves the connection to the context of the current `CertSet` for
  the name sent (exact name, then a wildcard), or leaves it on `front`, which always holds the
  current default pair (loaded again at every swap, so a client that sends no SNI gets it too).
  `swap` replaces the set whole: new handshakes get the new certificates, open connections keep
  the ones they negotiated with.
- A `CertSet` is built whole or not at all: `load_certs` raises TLSError listing every pair that
  cannot be read or whose key does not match its certificate; the running set is then kept.
- Session tickets are issued and read by `front` (OpenSSL keeps the session context of the
  connection's first SSL_CTX), so resumption survives a certificate swap. Their keys are shared
  with the other workers and rotated by proxy.process.libssl where libssl allows it.
- The listener's SSL objects are `_ssl`'s own, made by `front._wrap_bio` (proxy.datapath.tlsconn): every
  record is read and written by a C method, with no ssl.SSLObject wrapper and no Python frame per call.
  `handshake_failures` counts the handshakes that failed or timed out there.
- `front` has no SNI callback while the set holds one pair: the callback could only keep the
  default, and each handshake would call into Python for nothing. `swap` sets it again for two or more.
- Every context: TLS 1.2 and 1.3 only, Mozilla "intermediate" TLS 1.2 ciphers (ECDHE with AES-GCM
  and ChaCha20-Poly1305), no compression, the client's cipher preference, ALPN http/1.1. The
  listener's also refuse renegotiation.
"""

from __future__ import annotations

import _ssl
import logging
import ssl
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from proxy.settings.paths import resolve

if TYPE_CHECKING:
    from proxy.settings.tls import ListenerTLS, UpstreamTLS

log = logging.getLogger("slotswitch.tls")

# Mozilla's intermediate configuration (v5.7) for TLS 1.2, without the DHE suites (ECDHE only, as the
# guideline's own preference order puts first); TLS 1.3's suites are OpenSSL's defaults, all allowed.
INTERMEDIATE_CIPHERS = ":".join(
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
    )
)
ALPN = ["http/1.1"]


class TLSError(Exception):
    """Certificates or keys that cannot be used; `errors` lists every one."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = errors


class CertInfo:
    """What the operator needs to know about a loaded certificate: its name, file and expiry."""

    __slots__ = ("names", "not_after", "path")

    def __init__(self, names: list[str], not_after: float, path: str) -> None:
        self.names = names
        self.not_after = not_after  # a Unix time
        self.path = path

    @property
    def name(self) -> str:
        return self.names[0] if self.names else self.path

    def as_dict(self, now: float) -> dict[str, object]:
        return {
            "name": self.name,
            "names": list(self.names),
            "file": self.path,
            "not_after": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.not_after)),
            "expires_in_s": round(self.not_after - now),
        }


def _harden(ctx: ssl.SSLContext) -> None:
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    ctx.set_ciphers(INTERMEDIATE_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION
    ctx.set_alpn_protocols(ALPN)


def server_context() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _harden(ctx)
    ctx.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE  # intermediate: every allowed suite is strong
    # No TLS 1.2 renegotiation a client asks for (a handshake's CPU at the client's will): OpenSSL 3
    # refuses it by default, OpenSSL 1.1.1 would not.
    ctx.options |= ssl.OP_NO_RENEGOTIATION
    return ctx


def cert_info(cert_path: Path) -> CertInfo:
    """The leaf certificate's names (DNS subjectAltNames, else the CN) and expiry."""
    decoded: dict[str, Any] = _ssl._test_decode_cert(str(cert_path))  # type: ignore[attr-defined]
    names = [value for kind, value in decoded.get("subjectAltName", ()) if kind == "DNS"]
    if not names:
        names = [value for rdn in decoded.get("subject", ()) for key, value in rdn if key == "commonName"]
    return CertInfo(names, float(ssl.cert_time_to_seconds(decoded["notAfter"])), str(cert_path))


class CertSet:
    """The loaded pairs: a context and its info per pair, and the SNI names that select them."""

    __slots__ = ("contexts", "default", "exact", "infos", "paths", "wildcard")

    def __init__(self) -> None:
        self.contexts: list[ssl.SSLContext] = []
        self.infos: list[CertInfo] = []
        self.paths: list[tuple[Path, Path]] = []
        self.exact: dict[str, ssl.SSLContext] = {}
        self.wildcard: dict[str, ssl.SSLContext] = {}  # "example.com" for a "*.example.com" certificate
        self.default: ssl.SSLContext | None = None

    def add(self, ctx: ssl.SSLContext, info: CertInfo, paths: tuple[Path, Path]) -> None:
        if self.default is None:
            self.default = ctx
        self.contexts.append(ctx)
        self.infos.append(info)
        self.paths.append(paths)
        for name in info.names:
            name = name.lower().rstrip(".")
            if name.startswith("*."):
                self.wildcard.setdefault(name[2:], ctx)
            else:
                self.exact.setdefault(name, ctx)

    def lookup(self, server_name: str | None) -> ssl.SSLContext | None:
        """The context for an SNI name: exact, then a wildcard one label deep; None = the default."""
        if not server_name:
            return None
        name = server_name.lower().rstrip(".")
        ctx = self.exact.get(name)
        if ctx is None:
            ctx = self.wildcard.get(name.partition(".")[2])
        return ctx


def load_certs(settings: ListenerTLS, config_path: Path | None) -> CertSet:
    """Every pair of `settings`, loaded and checked; TLSError with every problem at once."""
    certs = CertSet()
    errors = []
    for pair in settings.pairs():
        cert, key = resolve(pair.cert, config_path), resolve(pair.key, config_path)
        ctx = server_context()
        try:
            ctx.load_cert_chain(cert, key)
            info = cert_info(cert)
        except (OSError, ssl.SSLError, ValueError, KeyError) as exc:
            errors.append(f"tls certificate {cert} with key {key}: {_why(exc)}")
            continue
        certs.add(ctx, info, (cert, key))
    if errors:
        raise TLSError(errors)
    return certs


def _why(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        reason = exc.reason or str(exc)
        if reason == "KEY_VALUES_MISMATCH":
            return "the key does not match the certificate"
        return f"not a usable PEM certificate and key ({reason})"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


class ServerTLS:
    """The TLS of one listener: `front` is given to create_server once; `swap` changes the certificates."""

    def __init__(self, certs: CertSet) -> None:
        self.front = server_context()
        self.certs = certs
        self._load_front(certs)
        self.handshakes_sni = 0  # handshakes whose SNI chose a context other than the default
        self.handshake_failures = 0  # handshakes that failed or timed out (proxy.datapath.tlsconn)

    def _load_front(self, certs: CertSet) -> None:
        cert, key = certs.paths[0]
        # Loaded again from the files just checked: an SSLContext has no API to copy a key in.
        self.front.load_cert_chain(cert, key)
        # One pair: every name gets the default, so no handshake needs to call into Python for SNI.
        self.front.sni_callback = self._pick if len(certs.contexts) > 1 else None

    def swap(self, certs: CertSet) -> None:
        """New handshakes get `certs`; open connections are not touched."""
        self._load_front(certs)
        self.certs = certs

    def _pick(self, ssl_object: Any, server_name: str | None, ctx: Any) -> int | None:
        chosen = self.certs.lookup(server_name)
        if chosen is not None and chosen is not self.certs.default:
            ssl_object.context = chosen
            self.handshakes_sni += 1
        return None

    def expiries(self) -> list[CertInfo]:
        return list(self.certs.infos)


def client_context(settings: UpstreamTLS, config_path: Path | None) -> ssl.SSLContext:
    """The context for a slot's https:// upstreams: verified against `ca` or the system store, with the
    client certificate when one is set. OSError/ssl.SSLError when a file cannot be used."""
    ca = resolve(settings.ca, config_path) if settings.ca else None
    ctx = ssl.create_default_context(cafile=str(ca) if ca is not None else None)
    _harden(ctx)
    if not settings.verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if settings.cert:
        ctx.load_cert_chain(resolve(settings.cert, config_path), resolve(settings.key, config_path))
    return ctx


def check_client(settings: UpstreamTLS, config_path: Path | None, where: str) -> str | None:
    """A problem with a slot's upstream TLS files, as one message; None when they load."""
    try:
        client_context(settings, config_path)
    except (OSError, ssl.SSLError, ValueError) as exc:
        return f"{where}: {_why(exc)}"
    return None
