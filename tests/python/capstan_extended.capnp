@0xdb98c03f39c87cfe;
# tests/python/capstan_extended.capnp: schema/capstan.capnp as a NEWER peer would have it,
# for the compatibility tests in tests/interop_python.rs. Same file id, same type names (so
# the same interface ids); two additions, appended as docs/protocol.md section 10 allows:
# `Request.priority @4` and `Fetcher.stats @3`. It predates `Limits`, so it also stands for
# an older peer there (docs/protocol.md section 10). Keep the rest as it is.
# capstan: a tunnel that carries HTTP and WebSockets over Cap'n Proto RPC.
#
# Two vats meet on one two-party connection: the *gateway* (public HTTP server) and the
# *tunnel* (runs beside the user's service, the *origin*). Each side offers its own
# bootstrap capability: the gateway offers `Gateway`, the tunnel offers `Fetcher`. The
# tunnel must call `Gateway.register` and pass its `Fetcher` there; the gateway never calls
# the tunnel's bootstrap.
#
# Conventions for every method below:
# - An exception means the operation failed and its side effects are undefined; the caller
#   answers its own user (visitor or origin) with an error, never a fake success.
# - `-> stream` calls on one capability are delivered to its server in order, one at a
#   time, and a later ordinary call on the same capability is delivered after them. The
#   caller should await each one: the resolution is the flow-control signal.
# - Dropping the last reference to a capability releases it; the implementing side then
#   cleans up. Dropping a pending call (sending `Finish`) cancels its work.
# - Unknown methods are answered with an `unimplemented` exception; unknown fields are
#   ignored. See docs/protocol.md for the compatibility rules.

interface Gateway {
  # Bootstrap capability of the gateway.

  register @0 (name :Text, token :Text, fetcher :Fetcher) -> (result :RegisterResult);
  # Asks to serve `http://{name}.{domain}`. `name` is a DNS label (lowercase letters,
  # digits and '-', 1 to 63 characters, not starting or ending with '-'); an empty name
  # asks the gateway to choose one. `token` is compared in constant time with the
  # gateway's; send "" when the gateway has none.
  #
  # On success the gateway keeps `fetcher` and routes visitors to it until `registration`
  # is dropped or the connection dies. After that the name stays held for the same token
  # for a grace period (30 s by default), so a reconnecting tunnel gets its URL back;
  # visitors meanwhile get 502. Errors the tunnel should show its user (bad name, taken
  # name, wrong token) come back in `result.error`, not as exceptions.
}

struct RegisterResult {
  union {
    ok :group {
      registration @0 :Registration;
      # Keep it for as long as the name should be served; dropping it unregisters.
      url @1 :Text;
      # The public URL, e.g. "http://demo.localhost:8080". Show it to the user.
      name @2 :Text;
      # The name that was registered (the chosen one when the request had none).
    }
    error :group {
      code @3 :RegisterError;
      message @4 :Text;
      # Human-readable; print it as is.
    }
  }
}

enum RegisterError {
  invalidName @0;   # `name` is not a DNS label.
  nameTaken @1;     # Another tunnel serves it, or holds it within its grace period.
  unauthorized @2;  # `token` is wrong. Retrying with the same token will not help.
  tooManyNames @3;  # This connection already serves as many names as the gateway allows.
}

interface Registration {
  ping @0 ();
  # Heartbeat from the tunnel. A tunnel that gets no answer within a few seconds should
  # treat the connection as dead and reconnect.
}

interface Fetcher {
  # Bootstrap capability of the tunnel: the origin as seen by the gateway.

  fetch @0 (request :Request, body :BodySource, responder :Responder) -> (response :Response);
  # One visitor HTTP request.
  #
  # Request body: when `body` is null, the whole body is `request.body` (empty when the
  # request has none). Otherwise `request.body` is empty and the tunnel obtains the body
  # by calling `body.pipeTo(sink)`.
  #
  # Response, one of two ways:
  # - inline: the tunnel returns `response` with the whole body in `response.body` and
  #   never calls `responder`. One round trip; use it for small bodies of known length.
  # - streamed: the tunnel calls `responder.start(head)` once, writes the body to the
  #   ByteStream it gets back, calls `end`, and then returns with `response` null.
  # If `fetch` throws before `start`, the visitor gets 502 with the exception's
  # description. If it throws after `start`, or returns without `end`, the visitor's
  # response is cut off (the connection is closed without a proper end), never completed.
  #
  # The gateway cancels the call (Finish) when the visitor goes away; the tunnel should
  # then abort its origin request.

  connectWebSocket @1 (request :Request, publicSocket :WebSocketHandle)
      -> (response :Response, localSocket :WebSocketHandle);
  # One visitor WebSocket. `request` is the visitor's upgrade request, and its
  # Sec-WebSocket-Protocol header lists the offered subprotocols. The tunnel opens the
  # origin's WebSocket and returns its handshake `response` (status 101, with the chosen
  # subprotocol) and `localSocket`, the origin end. The gateway completes the visitor's
  # upgrade only after this returns.
  #
  # When the origin refuses the upgrade, `localSocket` is null and `response` is the
  # origin's answer (status, headers, inline body), which the visitor gets as is.
  #
  # Afterwards messages flow as `send` calls: origin to visitor on `publicSocket`,
  # visitor to origin on `localSocket`. Each side drops the handle it got once its
  # socket is closed.

  ping @2 ();
  # Heartbeat from the gateway. Any answer, even an `unimplemented` exception, proves the
  # tunnel is alive; no answer within a few seconds makes the gateway drop the connection.

  stats @3 () -> (count :UInt32);
  # EXTENSION (test only): how many requests the tunnel served. Older peers answer
  # `unimplemented`.
}

interface BodySource {
  # A request body that streams from the gateway to the tunnel.

  pipeTo @0 (sink :ByteStream) -> ();
  # The gateway writes the body into `sink`, calls `sink.end()`, and then returns. An
  # exception means the visitor's upload broke off: the tunnel must abort the origin
  # request rather than deliver a truncated body as complete. Call it at most once.
}

interface Responder {
  # How a streamed response reaches the visitor.

  start @0 (response :Response) -> (body :ByteStream);
  # Sends the status and headers (`response.body` must be empty). The visitor sees the
  # head at once; the body follows through `body`. Call it at most once.
}

interface ByteStream {
  # One direction of an HTTP body.

  write @0 (data :Data) -> stream;
  # The next bytes of the body. Keep each `data` at most 64 KiB.

  end @1 ();
  # The body is complete. Without `end`, the body counts as broken off.
}

interface WebSocketHandle {
  # One end of a WebSocket connection as a capability.

  send @0 (message :Message) -> stream;
  # One whole WebSocket message, delivered in call order. The call resolves once the
  # receiver has handed the message to its socket, which gives the sender backpressure.

  close @1 (code :UInt16, reason :Text);
  # Closes the socket with this code and reason (RFC 6455 section 7.4). Arrives after
  # every earlier `send`. Code 1005 means no code was given.
}

struct Message {
  union {
    text @0 :Text;
    binary @1 :Data;
  }
}

struct Request {
  method @0 :Text;
  # As sent by the visitor, e.g. "GET".
  path @1 :Data;
  # The request target exactly as sent: path and query, raw bytes (`%2F` stays `%2F`).
  # An absolute-form target (`GET http://host/x`) is reduced to its path and query.
  headers @2 :List(Header);
  # End-to-end headers in the visitor's order, including Host. Hop-by-hop headers are
  # removed; X-Forwarded-For, X-Forwarded-Proto and X-Forwarded-Host are added.
  body @3 :Data;
  # The whole body, when it is sent inline (see `Fetcher.fetch`).
  priority @4 :UInt8;
  # EXTENSION (test only): older peers never set it (reads as 0) and skip it.
}

struct Response {
  status @0 :UInt16;
  headers @1 :List(Header);
  # End-to-end headers in the origin's order; repeated names stay repeated.
  body @2 :Data;
  # The whole body for an inline response; empty in `Responder.start`.
}

struct Header {
  name @0 :Text;
  # Lowercase.
  value @1 :Data;
  # Raw bytes; HTTP header values need not be UTF-8.
}
