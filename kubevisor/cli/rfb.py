"""Just enough of the RFB protocol (VNC, RFC 6143, version 3.8) to take one screenshot, and a PNG writer.

``kubevisor vnc NAME --screenshot FILE.png`` speaks it over the VMI's vnc websocket: the version
handshake (§7.1.1), security type None only (§7.1.2, §7.2.1; QEMU's VNC socket asks for none),
ClientInit/ServerInit (§7.3), then SetPixelFormat to 32-bit true colour, SetEncodings Raw (§7.5.1-2) and
one non-incremental FramebufferUpdateRequest for the whole screen (§7.5.3), whose FramebufferUpdate
(§7.6.1) of Raw rectangles (§7.7.1) is the picture. Bell, SetColourMapEntries and ServerCutText messages
arriving meanwhile are skipped.

The protocol code is sans-I/O over two callables (``recv`` gives the next chunk of bytes, ``send`` sends
some), so tests drive it with a scripted server. The PNG (RGB, 8 bits per channel, no filtering) is
written with ``zlib`` and ``struct`` alone (ISO/IEC 15948 §5, §11.2, §12).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

__all__ = ["PIXEL_FORMAT", "Framebuffer", "RfbError", "encode_png", "screenshot"]

VERSION = b"RFB 003.008\n"
SECURITY_NONE = 1
# 32 bits per pixel, depth 24, little-endian, true colour, 255 per channel, red at bit 16, green 8, blue 0:
# each pixel arrives as the bytes B, G, R, unused.
PIXEL_FORMAT = struct.pack(">BBBBHHHBBB3x", 32, 24, 0, 1, 255, 255, 255, 16, 8, 0)
ENCODING_RAW = 0
MAX_SIZE = 16384

Recv = Callable[[], Awaitable[bytes]]
Send = Callable[[bytes], Awaitable[None]]


class RfbError(Exception):
    """The server refused the session or spoke something this client does not understand."""


@dataclass
class Framebuffer:
    """A screen as RGB bytes, row by row."""

    width: int
    height: int
    rgb: bytearray
    name: str = ""

    def png(self) -> bytes:
        return encode_png(self.width, self.height, bytes(self.rgb))


class _Stream:
    def __init__(self, recv: Recv) -> None:
        self._recv = recv
        self._buffer = bytearray()

    async def read(self, n: int) -> bytes:
        while len(self._buffer) < n:
            chunk = await self._recv()
            if not chunk:
                raise RfbError(f"the VNC server closed the connection (wanted {n} more bytes)")
            self._buffer += chunk
        data = bytes(self._buffer[:n])
        del self._buffer[:n]
        return data

    async def u8(self) -> int:
        return (await self.read(1))[0]

    async def u16(self) -> int:
        value: int = struct.unpack(">H", await self.read(2))[0]
        return value

    async def u32(self) -> int:
        value: int = struct.unpack(">I", await self.read(4))[0]
        return value

    async def reason(self) -> str:
        return (await self.read(await self.u32())).decode(errors="replace")


async def _handshake(stream: _Stream, send: Send) -> tuple[int, int, str]:
    version = await stream.read(12)
    if not version.startswith(b"RFB 003."):
        raise RfbError(f"not a VNC server (it said {version!r})")
    await send(VERSION)
    count = await stream.u8()
    if count == 0:
        raise RfbError(f"the VNC server refused the session: {await stream.reason()}")
    types = await stream.read(count)
    if SECURITY_NONE not in types:
        raise RfbError(
            f"the VNC server wants authentication (security types {list(types)}); only None is supported"
        )
    await send(bytes([SECURITY_NONE]))
    if await stream.u32() != 0:
        raise RfbError(f"the VNC server refused the session: {await stream.reason()}")
    await send(b"\x01")  # ClientInit: shared
    width, height = await stream.u16(), await stream.u16()
    await stream.read(16)  # the server's pixel format: replaced below
    name = (await stream.read(await stream.u32())).decode(errors="replace")
    if not (0 < width <= MAX_SIZE and 0 < height <= MAX_SIZE):
        raise RfbError(f"the VNC server announced an unusable screen size {width}x{height}")
    return width, height, name


async def screenshot(recv: Recv, send: Send) -> Framebuffer:
    """Connect as an RFB 3.8 client and read one full framebuffer update."""
    stream = _Stream(recv)
    width, height, name = await _handshake(stream, send)
    await send(b"\x00\x00\x00\x00" + PIXEL_FORMAT)  # SetPixelFormat
    await send(struct.pack(">BxHi", 2, 1, ENCODING_RAW))  # SetEncodings: Raw
    await send(struct.pack(">BBHHHH", 3, 0, 0, 0, width, height))  # FramebufferUpdateRequest, full
    fb = Framebuffer(width, height, bytearray(width * height * 3), name)
    while True:
        kind = await stream.u8()
        if kind == 0:  # FramebufferUpdate
            await stream.read(1)
            for _ in range(await stream.u16()):
                x, y, w, h, encoding = struct.unpack(">HHHHi", await stream.read(12))
                if encoding != ENCODING_RAW:
                    raise RfbError(f"the VNC server sent encoding {encoding}, not the Raw encoding asked for")
                _blit(fb, (x, y, w, h), await stream.read(w * h * 4))
            return fb
        if kind == 1:  # SetColourMapEntries
            await stream.read(3)
            await stream.read(6 * await stream.u16())
        elif kind == 2:  # Bell
            continue
        elif kind == 3:  # ServerCutText
            await stream.read(3)
            await stream.read(await stream.u32())
        else:
            raise RfbError(f"unknown RFB server message type {kind}")


def _blit(fb: Framebuffer, rect: tuple[int, int, int, int], pixels: bytes) -> None:
    """Copy a Raw rectangle ``(x, y, w, h)`` of B, G, R, X pixels into ``fb`` (clipped to the screen)."""
    x, y, w, h = rect
    if x >= fb.width or y >= fb.height:
        return
    visible = min(w, fb.width - x)
    for row in range(min(h, fb.height - y)):
        src = pixels[row * w * 4 : (row * w + visible) * 4]
        start = ((y + row) * fb.width + x) * 3
        line = bytearray(visible * 3)
        line[0::3], line[1::3], line[2::3] = src[2::4], src[1::4], src[0::4]
        fb.rgb[start : start + visible * 3] = line


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def encode_png(width: int, height: int, rgb: bytes) -> bytes:
    """A PNG of ``rgb`` (``width * height * 3`` bytes, rows top to bottom)."""
    if len(rgb) != width * height * 3:
        raise ValueError(f"{len(rgb)} bytes of pixels for a {width}x{height} RGB image")
    stride = width * 3
    raw = b"".join(b"\x00" + rgb[row * stride : (row + 1) * stride] for row in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(raw, 6))
        + _chunk(b"IEND", b"")
    )
