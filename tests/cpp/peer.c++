// A capstan tunnel client written against the reference C++ implementation (libcapnp 0.9+).
//
// Usage: peer HOST:PORT NAME
//
// Dials the gateway's raw RPC port, registers NAME with token "" and prints the public URL
// as its first stdout line (or the gateway's message, then exits 1). It serves a built-in
// origin instead of forwarding to a real one:
//   GET  /small        inline 200 "hello from c++" with `x-peer: c++`
//   GET  /stream?n=N   streamed 200: N bytes of the test pattern, written in 64 KiB chunks
//   POST /upload       200 "LEN HASH": the body's length and FNV-1a 64 hash (hex)
// Anything else is an inline 404. connectWebSocket stays unimplemented.
//
// Built and run by tests/interop_cpp.rs.

#include <capnp/ez-rpc.h>
#include <kj/debug.h>

#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>

#include "capstan.capnp.h"

namespace {

constexpr uint64_t MAX_CHUNK = 64 * 1024;  // Largest `ByteStream.write` (docs/protocol.md §6).

// Byte `i` of the test pattern, as `pattern` in tests/common/mod.rs.
uint8_t patternByte(uint64_t i) { return static_cast<uint8_t>((i * 31) ^ (i >> 9)); }

// FNV-1a, 64-bit, as `Fnv` in tests/common/mod.rs.
struct Fnv {
  uint64_t hash = 0xcbf29ce484222325ULL;
  uint64_t len = 0;

  void update(kj::ArrayPtr<const kj::byte> data) {
    for (kj::byte b : data) hash = (hash ^ b) * 0x100000001b3ULL;
    len += data.size();
  }

  // Formatted like Rust's `format!("{len} {:016x}", hash)`.
  std::string summary() const {
    char text[64];
    snprintf(text, sizeof(text), "%" PRIu64 " %016" PRIx64, len, hash);
    return text;
  }
};

void setHeader(Header::Builder header, kj::StringPtr name, kj::StringPtr value) {
  header.setName(name);
  header.setValue(value.asBytes());
}

// An inline answer: status, optional one header, whole body; `responder` stays unused.
void answerInline(Fetcher::FetchResults::Builder results, uint16_t status, kj::StringPtr body,
                  kj::StringPtr headerName = nullptr, kj::StringPtr headerValue = nullptr) {
  auto response = results.initResponse();
  response.setStatus(status);
  auto headers = response.initHeaders(headerName == nullptr ? 1 : 2);
  setHeader(headers[0], "content-type", "text/plain");
  if (headerName != nullptr) setHeader(headers[1], headerName, headerValue);
  response.setBody(body.asBytes());
}

// The sink of a streamed upload: the gateway calls write (in order, one at a time) and then
// end, all before its `pipeTo` returns. Shares its totals with the `fetch` that made it.
struct UploadState {
  Fnv fnv;
  bool ended = false;
};

class HashSink final : public ByteStream::Server {
public:
  explicit HashSink(std::shared_ptr<UploadState> state) : state(kj::mv(state)) {}

protected:
  kj::Promise<void> write(WriteContext context) override {
    KJ_REQUIRE(!state->ended, "write after end");
    state->fnv.update(context.getParams().getData());
    return kj::READY_NOW;
  }

  kj::Promise<void> end(EndContext context) override {
    state->ended = true;
    return kj::READY_NOW;
  }

private:
  std::shared_ptr<UploadState> state;
};

// Writes pattern bytes [offset, total) to `body`, one `-> stream` write after another, then
// calls `end`. Each `send()` resolves when the RPC flow-control window has room, so chaining
// on it keeps a bounded number of writes in flight; a failed write rejects a later promise.
kj::Promise<void> writePattern(ByteStream::Client body, uint64_t offset, uint64_t total) {
  if (offset == total) {
    auto end = body.endRequest().send().ignoreResult();
    // Hold `body` until `end` returns. In libcapnp < 1.0 the stream's flow controller dies
    // with the last reference, which sends Finish for writes still unacknowledged: the
    // gateway then cancels them, yet still takes `end`, so the visitor gets a short body
    // that looks complete (fixed upstream in capnproto commit db470e67).
    return end.attach(kj::mv(body));
  }
  uint64_t len = std::min(MAX_CHUNK, total - offset);
  auto request = body.writeRequest();
  auto data = request.initData(len);
  for (uint64_t i = 0; i < len; i++) data[i] = patternByte(offset + i);
  return request.send().then([body = kj::mv(body), offset, len, total]() mutable {
    return writePattern(kj::mv(body), offset + len, total);
  });
}

class FetcherImpl final : public Fetcher::Server {
protected:
  kj::Promise<void> fetch(FetchContext context) override {
    auto params = context.getParams();
    auto request = params.getRequest();
    auto rawPath = request.getPath();
    std::string path(rawPath.asChars().begin(), rawPath.size());

    // A non-null BodySource: the body streams in through our sink (docs/protocol.md §4).
    if (params.hasBody()) {
      auto state = std::make_shared<UploadState>();
      auto pipe = params.getBody().pipeToRequest();
      pipe.setSink(kj::heap<HashSink>(state));
      return pipe.send().then([context, state](auto&&) mutable {
        // pipeTo returns only after `end`, so a missing end means a broken protocol.
        KJ_REQUIRE(state->ended, "pipeTo returned before ByteStream.end");
        answerInline(context.getResults(), 200, state->fnv.summary());
      });
    }

    if (path == "/small") {
      answerInline(context.getResults(), 200, "hello from c++", "x-peer", "c++");
      return kj::READY_NOW;
    }

    if (path == "/upload") {  // Small bodies ride inline in `request.body`.
      Fnv fnv;
      fnv.update(request.getBody());
      answerInline(context.getResults(), 200, fnv.summary());
      return kj::READY_NOW;
    }

    const std::string prefix = "/stream?n=";
    if (path.compare(0, prefix.size(), prefix) == 0) {
      uint64_t total = std::strtoull(path.c_str() + prefix.size(), nullptr, 10);
      auto start = params.getResponder().startRequest();
      auto head = start.initResponse();  // `head.body` stays empty, as `start` requires.
      head.setStatus(200);
      auto headers = head.initHeaders(2);
      setHeader(headers[0], "content-type", "application/octet-stream");
      setHeader(headers[1], "x-peer", "c++");
      // Returning with `response` unset tells the gateway the answer was streamed. `end`
      // must have *returned* first: a `fetch` that returns while `end` is only sent lets the
      // gateway cut the visitor's body off, since its `end` may still be queued there.
      return start.send().then([total](auto&& started) {
        return writePattern(started.getBody(), 0, total);
      });
    }

    answerInline(context.getResults(), 404, "no such path in the c++ peer");
    return kj::READY_NOW;
  }

  kj::Promise<void> ping(PingContext context) override { return kj::READY_NOW; }

  // connectWebSocket is not overridden: callers get `unimplemented` (allowed, §9).
};

}  // namespace

int main(int argc, char* argv[]) {
  if (argc != 3) {
    fprintf(stderr, "usage: %s HOST:PORT NAME\n", argv[0]);
    return 2;
  }
  capnp::EzRpcClient client(argv[1]);
  auto& waitScope = client.getWaitScope();
  Gateway::Client gateway = client.getMain<Gateway>();

  auto request = gateway.registerRequest();
  request.setName(argv[2]);
  request.setToken("");
  request.setFetcher(kj::heap<FetcherImpl>());
  auto response = request.send().wait(waitScope);
  auto result = response.getResult();

  if (result.isError()) {
    // Unknown codes (newer gateways) are refusals too; the message says why.
    printf("%s\n", result.getError().getMessage().cStr());
    fflush(stdout);
    return 1;
  }
  // Holding `registration` keeps the name served; dropping it would unregister.
  Registration::Client registration = result.getOk().getRegistration();
  printf("%s\n", result.getOk().getUrl().cStr());
  fflush(stdout);

  // Serve until the gateway hangs up (a disconnect is reported as an exception) or we are
  // killed. Nothing else needs the main thread.
  kj::NEVER_DONE.wait(waitScope);
}
