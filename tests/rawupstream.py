"""A scripted upstream that answers with exact bytes: malformed responses, odd framing, hop-by-hop headers.

`ScriptedUpstream(responder)` listens on 127.0.0.1; for each request head it reads, it calls
`responder(head_bytes)` and writes what it returns (None: hang up without answering; b"": stay
silent until the test ends). It counts the connections it accepted and keeps the heads and the
Content-Length bodies it read.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

Responder = Callable[[bytes], bytes | None]


class ScriptedUpstream:
    def __init__(self, responder: Responder) -> None:
        self.responder = responder
        self.connections = 0
        self.heads: list[bytes] = []
        self.bodies: list[bytes] = []  # the Content-Length body of each request in `heads` (b"" if none)
        self.server: asyncio.Server | None = None
        self.got_request = asyncio.Event()
        self._writers: list[asyncio.StreamWriter] = []
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.append(writer)
        task = asyncio.current_task()
        assert task is not None
        self._tasks.append(task)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.heads.append(head)
                length = _content_length(head)
                self.bodies.append(await reader.readexactly(length) if length else b"")
                self.got_request.set()
                answer = self.responder(head)
                if answer is None:
                    writer.close()
                    return
                if answer:
                    writer.write(answer)
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()
        except asyncio.LimitOverrunError:
            writer.close()

    async def stop(self) -> None:
        for writer in self._writers:
            writer.close()
        # Handlers end on their own once their sockets close; cancelling them trips a 3.11 bug.
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value.strip())
    return 0
