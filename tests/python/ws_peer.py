"""A WebSocket peer on Python's `websockets` (asyncio API), for tests/python_ws.rs.

  ws_peer.py server
      Echo server on 127.0.0.1:0. First stdout line: its port. Echoes text and binary,
      picks subprotocol "chat.v2" if offered, closes 4001 "py-bye" on the text
      "please close", prints "closed CODE REASON" when the client closes.

  ws_peer.py client URL HOST [--protocols A,B] [--count N] [--close CODE REASON]
                             [--expect-close CODE REASON] [--headers]
      Connects to URL's address with `Host: HOST`, sends N mixed text/binary messages
      pipelined, checks the echoes byte-exact and in order, then closes (or waits for
      the server's close) and prints one JSON result line.
"""

import argparse
import asyncio
import json
import sys
from urllib.parse import urlsplit, urlunsplit

from websockets.asyncio.client import connect
from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed


def message(i):
    """Message i: every third is binary over all byte values, the rest non-ASCII text."""
    if i % 3 == 0:
        return bytes((j * 31 + i) % 256 for j in range(i * 37 % 3000))
    return f"msg {i} héllo ✓ 🦀 " + "x" * (i % 200)


async def echo(ws):
    try:
        async for data in ws:
            if data == "please close":
                await ws.close(4001, "py-bye")
                return
            await ws.send(data)
    except ConnectionClosed:
        pass
    # Report only closes the client started; the server's own close is the test's to see.
    if ws.protocol.close_rcvd_then_sent:
        rcvd = ws.protocol.close_rcvd
        print(f"closed {rcvd.code} {rcvd.reason}", flush=True)
    elif ws.protocol.close_rcvd is None:
        print("dropped without close", flush=True)


async def server():
    def pick(_ws, offered):  # chat.v2 if offered, else none (websockets would refuse)
        return "chat.v2" if "chat.v2" in offered else None

    async with serve(echo, "127.0.0.1", 0, select_subprotocol=pick, max_size=None) as srv:
        print(srv.sockets[0].getsockname()[1], flush=True)
        await asyncio.get_running_loop().create_future()  # until killed


async def client(args):
    # The URI carries the Host we want (websockets builds the Host header from it, and
    # `additional_headers` would add a second one), the socket goes to URL's address.
    url = urlsplit(args.url)
    uri = urlunsplit(url._replace(netloc=args.host))
    protocols = args.protocols.split(",") if args.protocols else None
    result = {}
    async with connect(
        uri,
        host=url.hostname,
        port=url.port,
        subprotocols=protocols,
        additional_headers={"X-From": "python"},
        proxy=None,
        max_size=None,
        open_timeout=20,
    ) as ws:
        result["subprotocol"] = ws.subprotocol
        if args.headers:
            result["handshake"] = (await ws.recv()).splitlines()

        async def send_all():
            for i in range(args.count):
                await ws.send(message(i))

        sender = asyncio.create_task(send_all())
        for i in range(args.count):
            got = await ws.recv()
            if got != message(i):
                result["mismatch"] = i
                break
        else:
            result["echoed"] = args.count
        await sender
        if args.close:
            await ws.close(int(args.close[0]), args.close[1])
        else:
            await ws.wait_closed()
    result["close"] = [ws.close_code, ws.close_reason]
    ok = "mismatch" not in result
    if args.expect_close:
        ok = ok and result["close"] == [int(args.expect_close[0]), args.expect_close[1]]
    result["ok"] = ok
    print(json.dumps(result, ensure_ascii=False), flush=True)
    return 0 if ok else 1


def main():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="mode", required=True)
    sub.add_parser("server")
    c = sub.add_parser("client")
    c.add_argument("url")
    c.add_argument("host")
    c.add_argument("--protocols", default="")
    c.add_argument("--count", type=int, default=0)
    c.add_argument("--close", nargs=2, metavar=("CODE", "REASON"))
    c.add_argument("--expect-close", nargs=2, metavar=("CODE", "REASON"))
    c.add_argument("--headers", action="store_true")
    args = parser.parse_args()
    if args.mode == "server":
        asyncio.run(server())
        return 0
    return asyncio.run(client(args))


if __name__ == "__main__":
    sys.exit(main())
