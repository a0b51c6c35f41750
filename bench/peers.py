"""Small loopback servers for bench/run.py, each run as its own process.

    python3 bench/peers.py echo PORT    echo every byte back (ping-pong, and idle connections)
    python3 bench/peers.py http PORT    answer each request with a fixed 200 and wait for the client's close

Each prints "ready" on stdout once it listens on 127.0.0.1:PORT.  Standard library only.
"""

import asyncio
import resource
import sys

BODY = b"hello from the urelay benchmark\n"
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(BODY)
) + BODY


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)


class Http(asyncio.Protocol):
    """One response per connection; the client closes first (so TIME_WAIT stays on the connecting side)."""

    def connection_made(self, transport):
        self.transport = transport
        self.buffer = b""
        self.answered = False

    def data_received(self, data):
        if self.answered:
            return
        self.buffer += data
        if b"\r\n\r\n" in self.buffer:
            self.answered = True
            self.transport.write(RESPONSE)

    def eof_received(self):
        self.transport.close()


async def serve(kind: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    factory = {"echo": Echo, "http": Http}[kind]
    server = await loop.create_server(factory, "127.0.0.1", port, backlog=4096, reuse_address=True)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    if len(sys.argv) != 3 or sys.argv[1] not in ("echo", "http"):
        sys.exit(__doc__)
    raise_nofile()
    try:
        asyncio.run(serve(sys.argv[1], int(sys.argv[2])))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
