"""A capstan gateway stand-in on pycapnp (2.x), for tests/interop_python.rs.

  capnp_gateway.py [--extended]

Listens for raw two-party RPC on 127.0.0.1:0 (first stdout line: the port) with a
`Gateway` as bootstrap. It accepts the first `register` (url "http://NAME.python.invalid")
and then plays the visitors itself, calling the tunnel's `Fetcher` directly (the tunnel in
front of tests/common's TestOrigin and WsOrigin):

  GET  /echo?from=py        inline answer
  GET  /download?n=1048576  streamed: Responder.start, ByteStream writes, end
  POST /sink                a streamed body through our BodySource (pipeTo), "LEN HASH"
  WS   /echo                100 messages through localSocket.send, echoes on our handle
  WS   /close?code=4002...  the origin's close arrives through our handle's close
  Fetcher.ping, and at least one Registration.ping from the tunnel

With --extended it loads capstan_extended.capnp (a newer peer's schema), first calls the
new `Fetcher.stats` (an older tunnel answers `unimplemented`) and sets Request.priority.
It prints one JSON line with what it saw and serves until killed.
"""

import asyncio
import json
import traceback

import capnp

from capnp_common import EXTENDED, MAX_CHUNK, fnv, pattern, schema

UPLOAD = 1_500_007  # not a multiple of MAX_CHUNK, so the last write is short

def message(i):
    """Message i of the WebSocket exchange: every third binary, the rest non-ASCII text."""
    return pattern(i, i * 37 % 3000) if i % 3 == 0 else f"msg {i} héllo ✓ 🦀 " + "x" * i


class Registration(schema.Registration.Server):
    def __init__(self):
        self.pinged = asyncio.Event()

    async def ping_context(self, context):  # the Rust tunnel reconnects without it
        self.pinged.set()


class Sink(schema.ByteStream.Server):
    """The body a Responder.start hands out: checks each chunk against the pattern."""

    def __init__(self):
        self.length, self.hash, self.chunks, self.biggest = 0, fnv(b""), 0, 0
        self.ordered, self.ended = True, False

    async def write_context(self, context):  # `-> stream`: one at a time, in order
        data = context.params.data
        self.ordered &= data == pattern(self.length, len(data))
        self.length += len(data)
        self.hash = fnv(data, self.hash)
        self.chunks, self.biggest = self.chunks + 1, max(self.biggest, len(data))

    async def end_context(self, context):
        self.ended = True


class Responder(schema.Responder.Server):
    def __init__(self):
        self.status, self.sink = None, None

    async def start_context(self, context):
        if self.sink is not None:
            raise Exception("start called twice")
        self.status, self.sink = context.params.response.status, Sink()
        context.results.body = self.sink


class Upload(schema.BodySource.Server):
    """A streamed request body: pipeTo writes UPLOAD bytes of the pattern, then ends."""

    def __init__(self):
        self.calls = 0

    async def pipeTo_context(self, context):
        self.calls += 1
        sink = context.params.sink
        for offset in range(0, UPLOAD, MAX_CHUNK):
            await sink.write(data=pattern(offset, min(MAX_CHUNK, UPLOAD - offset)))
        await sink.end()


class Public(schema.WebSocketHandle.Server):
    """Our publicSocket: what the origin sends arrives here, in call order."""

    def __init__(self):
        self.received = asyncio.Queue()  # messages, then ("close", code, reason)

    async def send_context(self, context):
        kind = str(context.params.message.which())
        self.received.put_nowait(getattr(context.params.message, kind))

    async def close_context(self, context):
        self.received.put_nowait(("close", context.params.code, context.params.reason))


def fill_request(request, method, path):
    request.method, request.path = method, path.encode()
    host = request.init("headers", 1)[0]
    host.name, host.value = "host", b"pyside.python.invalid"
    if EXTENDED:
        request.priority = 7  # unknown to the Rust tunnel: it must skip it


async def fetch(fetcher, method, path, body_source=None):
    """One fetch; returns (inline response or None, our Responder)."""
    call = fetcher.fetch_request()
    fill_request(call.init("request"), method, path)
    call.responder = responder = Responder()
    if body_source is not None:
        call.body = body_source
    result = await call.send()
    return (result.response if result._has("response") else None), responder


async def websocket(fetcher, path, count):
    """Opens a WebSocket, sends `count` messages, checks echoes; returns a report."""
    public = Public()
    call = fetcher.connectWebSocket_request()
    fill_request(call.init("request"), "GET", path)
    call.publicSocket = public
    result = await call.send()
    local = result.localSocket
    # The sends go out in call order without waiting for each other; a -> stream call's
    # resolution is only flow control.
    sends = []
    for i in range(count):
        send = local.send_request()
        setattr(send.init("message"), "binary" if i % 3 == 0 else "text", message(i))
        sends.append(send.send())
    for send in sends:
        await send
    echoed = 0
    while echoed < count and await public.received.get() == message(echoed):
        echoed += 1
    report = {"status": result.response.status, "echoed": echoed}
    if count:
        # We close first. The close handshake is per hop (the Rust gateway answers a
        # visitor's close itself), so what comes back later is not ours to check: the
        # Rust test asks the origin what close it got.
        close = local.close_request()
        close.code, close.reason = 1000, "py done"
        await close.send()
    else:
        # The origin closes first: its code and reason arrive through our handle, and we
        # answer with the same close, as a browser would.
        _, code, reason = await public.received.get()
        report["origin_close"] = [code, reason]
        close = local.close_request()
        close.code, close.reason = code, reason
        await close.send()
    return report


async def drive(fetcher, registration):
    report = {}
    if EXTENDED:
        try:
            await fetcher.stats()
            report["stats"] = "answered"
        except capnp.KjException as err:
            report["stats"] = str(err.type)  # an older tunnel: UNIMPLEMENTED

    response, _ = await fetch(fetcher, "GET", "/echo?from=py")
    report["echo"] = [response.status, bytes(response.body).decode()]

    response, responder = await fetch(fetcher, "GET", "/download?n=1048576")
    sink = responder.sink  # `ended` is read after fetch returned: `end` came first
    report["download"] = {
        "inline": response is not None, "status": responder.status,
        "length": sink.length, "hash": f"{sink.hash:016x}", "ordered": sink.ordered,
        "ended": sink.ended, "chunks_ok": sink.chunks > 1 and sink.biggest <= MAX_CHUNK,
    }  # fmt: skip

    upload = Upload()
    response, _ = await fetch(fetcher, "POST", "/sink", upload)
    report["upload"] = [response.status, bytes(response.body).decode(), upload.calls]

    report["ws_echo"] = await websocket(fetcher, "/echo", 100)
    report["ws_close"] = await websocket(fetcher, "/close?code=4002&reason=origin-bye", 0)

    await fetcher.ping()
    await asyncio.wait_for(registration.pinged.wait(), 20)
    report["pings"] = "both ways"
    return report


class Gateway(schema.Gateway.Server):
    def __init__(self):
        self.tasks = set()  # keeps the driver task alive

    async def register_context(self, context):
        params = context.params
        registration = Registration()
        ok = context.results.init("result").init("ok")
        ok.registration = registration
        ok.name = params.name
        ok.url = f"http://{params.name}.python.invalid"
        fetcher = params.fetcher  # kept past this call: a plain capability client
        task = asyncio.create_task(self.run(fetcher, registration))
        self.tasks.add(task)

    async def run(self, fetcher, registration):
        try:
            report = await drive(fetcher, registration)
        except Exception:
            report = {"error": traceback.format_exc()}
        print(json.dumps(report, ensure_ascii=False), flush=True)


async def main():
    bootstrap = Gateway()

    async def serve(stream):
        await capnp.TwoPartyServer(stream, bootstrap=bootstrap).on_disconnect()

    server = await capnp.AsyncIoStream.create_server(serve, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(capnp.run(main()))
