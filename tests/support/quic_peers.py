# -*- test-case-name: tests.test_udp_quic -*-
"""
An HTTP/3 server and client (aioquic), run as programs of their own in the
test's network namespaces under a Python that has aioquic (the test venv's):

    quic_peers.py server HOST PORT CERT KEY   answers every GET with "hello over h3 PATH"; prints "ready"
    quic_peers.py client NAME PORT CAFILE PATH  resolves NAME (the namespace's resolver), GETs PATH,
                                                prints {"address", "status", "body"} as JSON

Exit status 0 when the request completed (any status), 1 otherwise.
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import sys

from aioquic.asyncio import QuicConnectionProtocol, connect, serve
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration


class _Server(QuicConnectionProtocol):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._http = None

    def quic_event_received(self, event):
        if self._http is None:
            self._http = H3Connection(self._quic)
        for http_event in self._http.handle_event(event):
            if isinstance(http_event, HeadersReceived) and http_event.stream_ended:
                path = dict(http_event.headers).get(b":path", b"?")
                body = b"hello over h3 " + path
                self._http.send_headers(http_event.stream_id, [(b":status", b"200"), (b"content-length", str(len(body)).encode())])
                self._http.send_data(http_event.stream_id, body, end_stream=True)
        self.transmit()


class _Client(QuicConnectionProtocol):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.http = H3Connection(self._quic)
        self.done = asyncio.get_running_loop().create_future()
        self.status = None
        self.body = b""

    def quic_event_received(self, event):
        for http_event in self.http.handle_event(event):
            if isinstance(http_event, HeadersReceived):
                self.status = int(dict(http_event.headers)[b":status"])
            elif isinstance(http_event, DataReceived):
                self.body += http_event.data
            if getattr(http_event, "stream_ended", False) and not self.done.done():
                self.done.set_result(None)


async def _serve(host: str, port: int, cert: str, key: str) -> None:
    configuration = QuicConfiguration(is_client=False, alpn_protocols=H3_ALPN)
    configuration.load_cert_chain(cert, key)
    await serve(host, port, configuration=configuration, create_protocol=_Server)
    print("ready", flush=True)
    await asyncio.Future()


async def _get(name: str, port: int, cafile: str, path: str) -> int:
    address = socket.getaddrinfo(name, port, socket.AF_INET6, socket.SOCK_DGRAM)[0][4][0]
    configuration = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN, server_name=name, verify_mode=ssl.CERT_REQUIRED)
    configuration.load_verify_locations(cafile)
    async with connect(address, port, configuration=configuration, create_protocol=_Client) as client:
        stream = client._quic.get_next_available_stream_id()
        client.http.send_headers(
            stream,
            [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", name.encode()), (b":path", path.encode())],
            end_stream=True,
        )
        client.transmit()
        await asyncio.wait_for(client.done, 10)
        print(json.dumps({"address": address, "status": client.status, "body": client.body.decode()}), flush=True)
    return 0


def main(argv: list[str]) -> int:
    if argv[0] == "server":
        asyncio.run(_serve(argv[1], int(argv[2]), argv[3], argv[4]))
        return 0
    return asyncio.run(asyncio.wait_for(_get(argv[1], int(argv[2]), argv[3], argv[4]), 20))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
