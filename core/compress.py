"""Small, similar byte strings kept compressed: zstandard against a dictionary of what they
share (field names, common values). Alone, a 200-byte object has nothing to repeat."""

from __future__ import annotations

import zstandard


class Compressor:
    """Compresses against a fixed dictionary; not for concurrent use from several threads
    (the agent's users run on its event loop)."""

    def __init__(self, dictionary: bytes):
        shared = zstandard.ZstdCompressionDict(dictionary, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
        self._compress = zstandard.ZstdCompressor(level=1, dict_data=shared, write_checksum=False,
                                                  write_dict_id=False).compress
        self.decompress = zstandard.ZstdDecompressor(dict_data=shared).decompress

    def compress(self, data: bytes, prefix: bytes = b"") -> bytes:
        """`prefix` (uncompressed) + data compressed: one exact-size bytes object (the
        compressor's keeps the room of the worst case, ~300 bytes for 200)."""
        return prefix + self._compress(data) if prefix else bytes(memoryview(self._compress(data)))
