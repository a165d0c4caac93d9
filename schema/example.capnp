@0xb78bba391769d068;
# A tiny capability for the examples and tests that serve Cap'n Proto through a tunneled
# WebSocket. Not part of the capstan protocol.

interface Counter {
  add @0 (delta :Int64) -> (total :Int64);
  # Adds `delta` to this counter's total and returns the new total. Each WebSocket
  # connection gets its own counter, which lives as long as the connection.
}
