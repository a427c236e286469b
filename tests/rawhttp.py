"""A tiny raw HTTP/1.1 client for tests that need exact bytes: pipelining, malformed input, framing."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field


@dataclass
class Response:
    status: int
    reason: str
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


class RawClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, port: int, host: str = "127.0.0.1") -> RawClient:
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def read_response(self, head_request: bool = False, timeout: float = 10.0) -> Response:
        return await asyncio.wait_for(self._read_response(head_request), timeout)

    async def _read_response(self, head_request: bool) -> Response:
        line = await self.reader.readuntil(b"\r\n")
        version, status, *reason = line.decode("latin-1").rstrip("\r\n").split(" ", 2)
        assert version.startswith("HTTP/1."), line
        resp = Response(int(status), reason[0] if reason else "")
        while True:
            line = await self.reader.readuntil(b"\r\n")
            if line == b"\r\n":
                break
            name, _, value = line.decode("latin-1").partition(":")
            resp.headers.append((name.strip(), value.strip()))
        if head_request or resp.status in (204, 304) or 100 <= resp.status < 200:
            return resp
        te = (resp.header("Transfer-Encoding") or "").lower()
        if "chunked" in te:
            resp.body = await self._read_chunked()
        elif resp.header("Content-Length") is not None:
            resp.body = await self.reader.readexactly(int(resp.header("Content-Length") or 0))
        else:
            resp.body = await self.reader.read()  # close-delimited
        return resp

    async def _read_chunked(self) -> bytes:
        body = bytearray()
        while True:
            size_line = await self.reader.readuntil(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                while await self.reader.readuntil(b"\r\n") != b"\r\n":
                    pass
                return bytes(body)
            body += await self.reader.readexactly(size)
            await self.reader.readexactly(2)

    async def closed(self, timeout: float = 10.0) -> bool:
        """True when the server closed the connection (EOF) within `timeout`."""
        data = await asyncio.wait_for(self.reader.read(), timeout)
        return data == b""

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()


async def request(port: int, data: bytes, head_request: bool = False) -> Response:
    client = await RawClient.connect(port)
    try:
        await client.send(data)
        return await client.read_response(head_request)
    finally:
        await client.close()
