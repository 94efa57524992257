"""Small, similar byte strings kept compressed: zstandard against a dictionary of what they
share (field names, common values). Alone, a 200-byte object has nothing to repeat."""

from __future__ import annotations

import zstandard


class Compressor:
    """Compresses against a fixed dictionary; not for concurrent use from several threads
    (the agent's users run on its event loop)."""

    def __init__(self, dictionary: bytes, level: int = 7):
        shared = zstandard.ZstdCompressionDict(dictionary, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
        # No magic number, checksum or dictionary id (these bytes never leave the process), and
        # level 7: an EndpointSlice ~64 -> ~47 bytes, a Service ~38 -> ~31, for ~1 us more each
        params = zstandard.ZstdCompressionParameters.from_level(level, format=zstandard.FORMAT_ZSTD1_MAGICLESS,
                                                                write_checksum=False, write_dict_id=False)
        self._compress = zstandard.ZstdCompressor(dict_data=shared, compression_params=params).compress
        self.decompress = zstandard.ZstdDecompressor(dict_data=shared,
                                                     format=zstandard.FORMAT_ZSTD1_MAGICLESS).decompress

    def compress(self, data: bytes, prefix: bytes = b"") -> bytes:
        """`prefix` (uncompressed) + data compressed: one exact-size bytes object (the
        compressor's keeps the room of the worst case, ~300 bytes for 200)."""
        return prefix + self._compress(data) if prefix else bytes(memoryview(self._compress(data)))
