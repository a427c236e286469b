"""Test certificates from trustme (made per test, never committed) and small TLS client helpers."""

from __future__ import annotations

import asyncio
import datetime
import ssl
from dataclasses import dataclass
from pathlib import Path

import trustme


@dataclass
class Pair:
    cert: Path
    key: Path
    names: tuple[str, ...]


class TestCA:
    """A private CA writing leaf pairs into `folder`; `client_context()` trusts it."""

    __test__ = False  # not a pytest test class

    def __init__(self, folder: Path) -> None:
        self.ca = trustme.CA()
        self.folder = folder
        self.count = 0
        self.ca_file = folder / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))

    def issue(self, *names: str, key_type: trustme.KeyType = trustme.KeyType.ECDSA, days: float = 90) -> Pair:
        """A leaf certificate for `names` valid for `days` more days (the chain file holds the leaf then
        the CA), and its key."""
        self.count += 1
        now = datetime.datetime.now(datetime.UTC)
        leaf = self.ca.issue_cert(
            *names,
            key_type=key_type,
            not_before=now - datetime.timedelta(hours=1),
            not_after=now + datetime.timedelta(days=days),
        )
        cert = self.folder / f"leaf{self.count}.pem"
        key = self.folder / f"leaf{self.count}.key"
        leaf.private_key_pem.write_to_path(str(key))
        cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
        return Pair(cert, key, names)

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))


async def peer_cert_names(port: int, ctx: ssl.SSLContext, server_name: str | None) -> list[str]:
    """The DNS names of the certificate the listener on `port` presents for `server_name`."""
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=server_name)
    try:
        sslobj = writer.get_extra_info("ssl_object")
        cert = sslobj.getpeercert()
        return [value for kind, value in cert.get("subjectAltName", ()) if kind == "DNS"]
    finally:
        writer.close()


async def get(
    port: int, ctx: ssl.SSLContext, server_name: str, path: str = "/", host: str | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 request over a new TLS connection: (status, headers lowercased, body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=server_name)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host or server_name}\r\nConnection: close\r\n\r\n".encode())
        raw = await reader.read(-1)
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers, body
