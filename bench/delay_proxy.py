"""A TCP proxy that adds a fixed delay each way, as a database across a data-centre network would.

    python -m bench.delay_proxy --upstream-port 5432 --delay-ms 1

Listens on 127.0.0.1 only (a free port unless --listen-port is given; the port is printed on stdout as
`listening PORT`), forwards to 127.0.0.1:UPSTREAM. Every chunk read in one direction is written
`delay` later, order kept, without holding up the chunks behind it (a pipe's latency, not its bandwidth).
Bounded: at most --max-connections at once, at most 256 chunks in flight per direction (the reader waits
when the writer is behind), and --max-seconds of life.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

LOOPBACK = "127.0.0.1"
CHUNK = 65536
IN_FLIGHT = 256


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(maxsize=IN_FLIGHT)

    async def read() -> None:
        while data := await reader.read(CHUNK):
            await queue.put((time.monotonic() + delay, data))
        await queue.put((time.monotonic() + delay, b""))

    async def write() -> None:
        while True:
            due, data = await queue.get()
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            if not data:
                if writer.can_write_eof():
                    writer.write_eof()
                return
            writer.write(data)
            await writer.drain()

    try:
        await asyncio.gather(read(), write())
    except (ConnectionError, OSError):
        pass


async def serve(upstream_port: int, delay: float, listen_port: int = 0, max_connections: int = 512, max_seconds: float = 3600.0) -> None:
    slots = asyncio.Semaphore(max_connections)

    async def handle(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        async with slots:
            try:
                up_reader, up_writer = await asyncio.open_connection(LOOPBACK, upstream_port)
            except OSError:
                client_writer.close()
                return
            try:
                await asyncio.gather(_pump(client_reader, up_writer, delay), _pump(up_reader, client_writer, delay))
            finally:
                for writer in (client_writer, up_writer):
                    writer.close()

    server = await asyncio.start_server(handle, LOOPBACK, listen_port)
    port = server.sockets[0].getsockname()[1]
    print(f"listening {port}", flush=True)
    async with server:
        try:
            await asyncio.wait_for(server.serve_forever(), timeout=max_seconds)
        except TimeoutError:
            pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.delay_proxy", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--upstream-port", type=int, default=5432)
    parser.add_argument("--listen-port", type=int, default=0)
    parser.add_argument("--delay-ms", type=float, default=1.0)
    parser.add_argument("--max-connections", type=int, default=512)
    parser.add_argument("--max-seconds", type=float, default=3600.0)
    args = parser.parse_args(argv)
    try:
        asyncio.run(serve(args.upstream_port, args.delay_ms / 1000.0, args.listen_port, args.max_connections, args.max_seconds))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
