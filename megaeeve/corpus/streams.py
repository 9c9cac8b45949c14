"""Compressed input streams: .gz and .zst files read as plain byte streams, and a damaged stream turned into one
`CorpusError` naming the file (the damage is below the records, so no record can be skipped over it).

zstandard's own stream reader is not used: it stops quietly where a cut file ends inside a frame.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import zlib
from typing import Iterator

from megaeeve.errors import CorpusError

COMPRESSION_SUFFIXES = (".gz", ".zst", ".zstd")
COMPRESSION_NAMES = {".gz": "gzip", ".zst": "zstd", ".zstd": "zstd"}
ZSTD_READ_SIZE = 1 << 17  # compressed bytes per decompress call (zstd's recommended input size)


class _ZstdFile(io.RawIOBase):
    """A .zst file decoded frame after frame; raises EOFError, as gzip does, when the file ends inside a frame.

    zstandard's stream_reader stops quietly at such a cut and returns what it decoded: a partial download
    read as a complete, shorter corpus.
    """

    def __init__(self, path: str):
        import zstandard

        self._file = open(path, "rb")
        self._dctx = zstandard.ZstdDecompressor()
        self._frame = self._dctx.decompressobj()
        self._in_frame = False  # the input read so far ends inside a frame
        self._out = memoryview(b"")  # decoded, not yet returned

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self._out:
            data = self._file.read(ZSTD_READ_SIZE)
            if not data:
                if self._in_frame:
                    raise EOFError("the file ends inside a zstd frame")
                return 0
            self._out = memoryview(self._decompress(data))
        n = min(len(buffer), len(self._out))
        buffer[:n] = self._out[:n]
        self._out = self._out[n:]
        return n

    def _decompress(self, data: bytes) -> bytes:
        """Decode `data`, starting a new frame after each one that ends in it."""
        out = []
        while data:
            out.append(self._frame.decompress(data))
            self._in_frame = not self._frame.eof
            if self._in_frame:
                break
            data = self._frame.unused_data
            self._frame = self._dctx.decompressobj()
        return b"".join(out)

    def close(self) -> None:
        self._file.close()
        super().close()


def open_binary(path: str, compression: str) -> io.BufferedIOBase:
    if compression == ".gz":
        return gzip.open(path, "rb")  # type: ignore[return-value]
    if compression in (".zst", ".zstd"):
        return io.BufferedReader(_ZstdFile(path))
    return open(path, "rb")


@contextlib.contextmanager
def stream_errors(path: str, compression: str) -> Iterator[None]:
    """Turn a damaged compressed stream into one `CorpusError` naming the file.

    Reading on past the damage is impossible, so --skip-bad cannot apply: the rest of the file would be
    dropped without a trace and the manifest's counts would be wrong.
    """
    if not compression:
        yield
        return
    import zstandard

    name = COMPRESSION_NAMES[compression]
    cannot_skip = "--skip-bad cannot help: the damage is in the compressed stream, not in a record"
    try:
        yield
    except EOFError as e:
        raise CorpusError(
            f"{path}: truncated {name} stream (the file ends inside compressed data: an interrupted download or"
            f" copy?); {cannot_skip}"
        ) from e
    except (gzip.BadGzipFile, zlib.error, zstandard.ZstdError) as e:
        raise CorpusError(f"{path}: corrupt {name} stream ({e}); {cannot_skip}") from e
