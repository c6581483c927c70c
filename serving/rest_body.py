"""A REST request's body, read within its limits: what the body of one request may cost the server.

- A body whose declared Content-Length is over the limit is refused (413) before a byte of it is read;
  `Expect: 100-continue` is answered only for a body that will be read.
- `Content-Encoding: gzip` or `deflate` is inflated in steps of at most INFLATE_STEP_BYTES, never past the
  room left under the limit, with the event loop free between steps: a 300 KB body that would inflate to
  300 MiB costs at most the limit, and is refused (413) when it passes it.
- What a refused or failed body held is released at once (its buffer cleared), not when the collector gets to it.
- A body not received within the timeout is refused (408).

Only requests that run a model have their bodies read (rest.py): others are answered without reading a byte, and
aiohttp (lingering_time 0) closes a connection whose body was left unread.
"""
from __future__ import annotations

import asyncio
import zlib

from aiohttp.web_protocol import RequestPayloadError
from aiohttp.web_request import BaseRequest

from serving.errors import Cancelled, InvalidArgument, PayloadTooLarge, RequestTimeout

INFLATE_STEP_BYTES = 1 << 20
UNSUPPORTED_ENCODINGS = ("br", "zstd", "compress")  # what clients send; any other value is taken as identity


async def read_body(request: BaseRequest, limit: int, timeout_s: float | None) -> bytes:
    """The body, inflated when its Content-Encoding is gzip or deflate, with `limit` applied to what it inflates
    to (and to what arrives)."""
    encoding = request.headers.get("Content-Encoding", "").strip().lower()
    if encoding in UNSUPPORTED_ENCODINGS:  # a value from this list: no header value is echoed
        raise InvalidArgument(f"Content-Encoding {encoding} is not supported; send the body uncompressed, gzip or "
                              f"deflate")
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"Request body of {request.content_length} bytes (Content-Length) is larger than the "
                              f"limit of {limit} bytes (--rest_api_max_body_bytes); nothing of it was read")
    if request.headers.get("Expect", "").lower() == "100-continue":
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    inflate = _Inflater(encoding, limit) if encoding in ("gzip", "deflate") else None
    body, received = bytearray(), 0
    try:
        if inflate is None and request.content_length is not None and request.content.is_eof():
            return bytes(request.content.read_nowait())  # all of it came with the headers, under the limit (its
            #                                              length said so): taken whole, uncopied
        async with asyncio.timeout(timeout_s):
            async for chunk in request.content.iter_any():
                received += len(chunk)
                if received > limit:
                    raise PayloadTooLarge(f"Request body is larger than the limit of {limit} bytes "
                                          f"(--rest_api_max_body_bytes)")
                if inflate is None:
                    body += chunk
                    continue
                for piece in inflate.steps(chunk, len(body)):
                    body += piece
                    await asyncio.sleep(0)  # other requests run between steps
            if inflate is not None:
                inflate.check_complete()
        return bytes(body)
    except TimeoutError:  # a stalled or trickling body must not hold its connection for ever
        raise RequestTimeout(f"Request body not received within {timeout_s * 1000:.0f} ms "
                             f"(--rest_api_timeout_in_ms)") from None
    except ConnectionResetError:
        raise Cancelled("The client closed the connection before sending the whole body") from None
    except RequestPayloadError as e:  # the framing (chunked encoding, length) is broken
        raise InvalidArgument(f"Request body cannot be read: {type(e.__cause__ or e).__name__}") from None
    finally:  # a refused body's memory goes back now, not when the collector frees the exception's frames (not
        del body  # by clear(): shrinking the buffer in place left its memory fragmented, +10 MiB per 5 MB body)


class _Inflater:
    """gzip or deflate (zlib-wrapped, or raw as some clients send it), inflated in bounded steps."""

    def __init__(self, encoding: str, limit: int):
        self.encoding = encoding
        self.limit = limit
        self._inflate: zlib._Decompress | None = None

    def steps(self, chunk: bytes, inflated: int):
        """What `chunk` inflates to, in pieces of at most INFLATE_STEP_BYTES; PayloadTooLarge once the whole would
        pass the limit (`inflated`: bytes inflated before this chunk)."""
        if self._inflate is None:
            raw_deflate = self.encoding == "deflate" and chunk[:1] and chunk[0] & 0x0F != 8  # no zlib header
            self._inflate = zlib.decompressobj(-zlib.MAX_WBITS if raw_deflate else
                                               16 + zlib.MAX_WBITS if self.encoding == "gzip" else zlib.MAX_WBITS)
        data = chunk
        while data and not self._inflate.eof:
            room = self.limit - inflated
            try:
                piece = self._inflate.decompress(data, min(room + 1, INFLATE_STEP_BYTES))
            except zlib.error:
                raise InvalidArgument(f"Request body cannot be read as Content-Encoding {self.encoding}: it is not "
                                      f"valid {self.encoding} data") from None
            if len(piece) > room:
                raise PayloadTooLarge(f"Request body is larger than the limit of {self.limit} bytes "
                                      f"(--rest_api_max_body_bytes) once decompressed")
            inflated += len(piece)
            data = self._inflate.unconsumed_tail
            yield piece

    def check_complete(self) -> None:
        if self._inflate is not None and not self._inflate.eof:
            raise InvalidArgument(f"Request body cannot be read as Content-Encoding {self.encoding}: it ends before "
                                  f"its compressed stream does")
