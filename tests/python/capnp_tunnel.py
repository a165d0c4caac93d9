"""A capstan tunnel on pycapnp (2.x), for tests/interop_python.rs and python_limits.rs.

  capnp_tunnel.py tcp://HOST:PORT NAME [--extended]
  capnp_tunnel.py ws://HOST:PORT NAME [--extended]

Dials the gateway: tcp:// is its raw RPC port (`--rpc-listen`); ws:// is its public port,
where the Cap'n Proto stream rides the binary messages of a WebSocket to /_capstan/connect
(docs/protocol.md section 1), bridged to pycapnp through a socket pair. Registers NAME with
token "" and prints the public URL as its first stdout line. Then it serves its own
`Fetcher`, with no origin:

  GET /stream?n=N   N bytes of the test pattern, streamed: Responder.start + ByteStream
  POST (any path)   "LEN HASH" of the body (FNV-1a 64, as tests/common/mod.rs); header
                    x-body says how it came: "inline", or "pipeTo" (a BodySource)
  other GETs        inline: method, path, Host header(s) and Request.priority
  WebSocket         echoes every message on publicSocket; /close-me closes with 4003
                    "py-tunnel-bye" instead of echoing its first message; /send?n=N first
                    sends N pattern bytes as one binary message and prints "send N ok", or
                    "send N failed: FIRST LINE OF THE ERROR". Prints "ws closed CODE
                    REASON" for every close the gateway sends.

--extended loads capstan_extended.capnp, a newer peer's schema, instead of the real one.
"""

import asyncio
import socket
import sys
import traceback

import capnp
from websockets.asyncio.client import connect

from capnp_common import EXTENDED, MAX_CHUNK, fnv, pattern, schema

MAX_WS_WRITE = 1 << 20  # bytes of the stream per WebSocket message we send
MAX_WS_READ = 33 << 20  # above the gateway's transport limit (32 MiB + 1 KiB)
TASKS = set()  # asyncio keeps only weak references to tasks: hold ours here


def query(path, key):
    for pair in path.partition("?")[2].split("&"):
        k, _, v = pair.partition("=")
        if k == key:
            return v
    return None


class Sink(schema.ByteStream.Server):
    """The ByteStream we hand to `body.pipeTo`: hashes the upload as it arrives."""

    def __init__(self):
        self.length, self.hash, self.ended = 0, fnv(b""), False

    # `write` is a `-> stream` method: pycapnp delivers them one at a time, in order.
    async def write_context(self, context):
        data = context.params.data
        self.length += len(data)
        self.hash = fnv(data, self.hash)

    async def end_context(self, context):
        self.ended = True


class Echo(schema.WebSocketHandle.Server):
    """Our `localSocket`: the visitor's messages arrive here and go back on publicSocket.

    pycapnp's C++ core delivers `-> stream` calls to a server one at a time, and any later
    call (`close`) after them, so echoing inside the handler keeps the order. A handler
    resolves once its echo is delivered, which passes the visitor's backpressure on."""

    def __init__(self, public, close_first):
        self.public, self.close_first, self.closed = public, close_first, False

    async def send_context(self, context):
        if self.closed:
            return  # after our own close: nobody reads it
        if self.close_first:
            return await self.close_public(4003, "py-tunnel-bye")
        message = context.params.message
        kind = str(message.which())  # "text" or "binary"
        request = self.public.send_request()
        setattr(request.init("message"), kind, getattr(message, kind))
        await request.send()

    async def close_context(self, context):
        code, reason = context.params.code, context.params.reason
        print(f"ws closed {code} {reason}", flush=True)
        await self.close_public(code, reason)  # answer it, unless we closed first
        self.public = None  # closed both ways: release the gateway's handle

    async def close_public(self, code, reason):
        if not self.closed:
            self.closed = True
            request = self.public.close_request()
            request.code, request.reason = code, reason
            await request.send()


async def send_pattern(public, n):
    """/send?n=N: one binary message of N pattern bytes on publicSocket, and its outcome."""
    request = public.send_request()
    request.init("message").binary = pattern(0, n)
    try:
        await request.send()
        print(f"send {n} ok", flush=True)
    except Exception as err:
        print(f"send {n} failed: {str(err).splitlines()[0]}", flush=True)


def inline(context, status, text, headers=()):
    response = context.results.init("response")
    response.status = status
    pairs = [("content-type", b"text/plain")] + list(headers)
    response.init("headers", len(pairs))
    for header, (name, value) in zip(response.headers, pairs):
        header.name, header.value = name, value
    response.body = text.encode()


class Fetcher(schema.Fetcher.Server):
    def __init__(self):
        self.served = 0

    async def fetch_context(self, context):
        try:
            await self.fetch(context)
            self.served += 1
        except Exception:
            # A pycapnp exception carries the whole traceback to the visitor: keep it short.
            traceback.print_exc()
            raise Exception("capnp_tunnel.py: fetch failed (see its stderr)") from None

    async def fetch(self, context):
        params = context.params
        request = params.request
        path = request.path.decode()
        if path.startswith("/stream"):
            n = int(query(path, "n"))
            start = params.responder.start_request()
            start.init("response").status = 200
            body = (await start.send()).body
            for offset in range(0, n, MAX_CHUNK):
                # Awaiting each write is the flow control the schema asks for.
                await body.write(data=pattern(offset, min(MAX_CHUNK, n - offset)))
            await body.end()
            return  # streamed: `response` stays unset
        if params._has("body"):  # a streamed upload: body.pipeTo(our sink)
            sink = Sink()
            pipe = params.body.pipeTo_request()
            pipe.sink = sink
            await pipe.send()
            if not sink.ended:
                raise Exception("pipeTo returned before ByteStream.end")
            how, length, digest = "pipeTo", sink.length, sink.hash
        else:
            how, length, digest = "inline", len(request.body), fnv(request.body)
        if request.method == "POST":
            inline(context, 200, f"{length} {digest:016x}", [("x-body", how.encode())])
            return
        host = [bytes(h.value).decode() for h in request.headers if h.name == "host"]
        priority = request.priority if EXTENDED else "none"  # read from an older peer: 0
        text = f"{request.method} {path}\nhost: {host}\npriority: {priority}\n"
        inline(context, 200, text, [("x-served-by", b"pycapnp")])

    async def connectWebSocket_context(self, context):
        path = context.params.request.path.decode()
        echo = Echo(context.params.publicSocket, close_first=path.startswith("/close-me"))
        context.results.init("response").status = 101  # the gateway adds its own accept
        context.results.localSocket = echo
        if path.startswith("/send"):  # a task: the handshake returns without it
            send = send_pattern(context.params.publicSocket, int(query(path, "n")))
            TASKS.add(asyncio.create_task(send))

    async def ping_context(self, context):
        pass

    async def stats_context(self, context):  # only reachable with --extended
        context.results.count = self.served


async def dial(address):
    """A pycapnp stream to the gateway at tcp://HOST:PORT or ws://HOST:PORT."""
    if address.startswith("tcp://"):
        host, _, port = address.removeprefix("tcp://").rpartition(":")
        return await capnp.AsyncIoStream.create_connection(host=host, port=int(port))
    ws = await connect(
        address + "/_capstan/connect",
        compression=None,
        max_size=MAX_WS_READ,
        proxy=None,
    )
    # pycapnp wants a socket: it gets one end of a pair, and we pump the other end.
    ours, theirs = socket.socketpair()
    theirs.setblocking(False)
    loop = asyncio.get_running_loop()

    async def upstream():  # what pycapnp writes, cut into binary messages
        while data := await loop.sock_recv(theirs, MAX_WS_WRITE):
            await ws.send(data)
        await ws.close()

    async def downstream():  # each binary message: the next bytes, boundaries mean nothing
        try:
            async for data in ws:
                if isinstance(data, str):
                    break  # a text message breaks the protocol
                await loop.sock_sendall(theirs, data)
        finally:
            theirs.shutdown(socket.SHUT_WR)  # EOF: pycapnp sees the connection end

    TASKS.update(asyncio.create_task(pump()) for pump in (upstream, downstream))
    return await capnp.AsyncIoStream.create_connection(sock=ours)


async def main():
    address, name = sys.argv[1], sys.argv[2]
    client = capnp.TwoPartyClient(await dial(address))
    gateway = client.bootstrap().cast_as(schema.Gateway)
    # Not gateway.register(name=...): `name` clashes with pycapnp's own `_send(name, ...)`.
    request = gateway.register_request()
    request.name, request.token, request.fetcher = name, "", Fetcher()
    result = (await request.send()).result
    if result.which() != "ok":
        print(f"register failed: {result.error.code}: {result.error.message}", flush=True)
        sys.exit(1)
    registration = result.ok.registration  # held: dropping it unregisters
    print(result.ok.url, flush=True)
    await client.on_disconnect()
    del registration


if __name__ == "__main__":
    asyncio.run(capnp.run(main()))
