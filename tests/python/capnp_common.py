"""What both pycapnp peers share: the schema, the test pattern and the hash of tests/common/mod.rs."""

import os
import sys

import capnp

HERE = os.path.dirname(os.path.abspath(__file__))
# --extended loads capstan_extended.capnp, a newer peer's schema, instead of the real one.
EXTENDED = "--extended" in sys.argv[1:]
SCHEMA_PATH = (
    os.path.join(HERE, "capstan_extended.capnp")
    if EXTENDED
    else os.path.join(HERE, "..", "..", "schema", "capstan.capnp")
)
# `-> stream` makes the schema import /capnp/stream.capnp, which the wheel ships.
SITE = os.path.dirname(os.path.dirname(capnp.__file__))
schema = capnp.load(SCHEMA_PATH, imports=[SITE])

MAX_CHUNK = 64 * 1024  # largest ByteStream.write (docs/protocol.md section 6)

# Byte i of the test pattern is (i*31 ^ i>>9) mod 256 (tests/common/mod.rs `pattern`).
# (i*31) mod 256 repeats every 256 bytes and i>>9 is constant over a 512-byte block, so a
# block is one precomputed row XORed with a constant, which bytes.translate does fast.
_ROW = bytes(i * 31 % 256 for i in range(512))
_XOR = [bytes(b ^ k for b in range(256)) for k in range(256)]


def pattern(offset, length):
    first, last = offset // 512, (offset + length + 511) // 512
    blocks = b"".join(_ROW.translate(_XOR[b % 256]) for b in range(first, last))
    return blocks[offset - first * 512 :][:length]


def fnv(data, h=0xCBF29CE484222325):
    """FNV-1a 64 over data, continuing from h."""
    for byte in data:
        h = ((h ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h
