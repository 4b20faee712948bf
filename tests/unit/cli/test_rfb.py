"""The screenshot client's RFB 3.8 handshake and Raw framebuffer update against a scripted server, and
the PNG writer (checked by decoding the PNG back)."""

from __future__ import annotations

import struct
import zlib

import pytest

from kubevisor.cli import rfb


def server_init(width: int, height: int, name: bytes = b"QEMU") -> bytes:
    pixel_format = bytes(16)
    return struct.pack(">HH", width, height) + pixel_format + struct.pack(">I", len(name)) + name


def raw_rect(x: int, y: int, w: int, h: int, bgrx: bytes) -> bytes:
    return struct.pack(">HHHHi", x, y, w, h, 0) + bgrx * (w * h)


class ScriptedServer:
    """Hands out ``script`` in small chunks (as websocket frames might split it); records what it got."""

    def __init__(self, script: bytes, chunk: int = 7) -> None:
        self.script = script
        self.chunk = chunk
        self.received = b""

    async def recv(self) -> bytes:
        data, self.script = self.script[: self.chunk], self.script[self.chunk :]
        return data

    async def send(self, data: bytes) -> None:
        self.received += data


def decode_png(data: bytes) -> tuple[int, int, bytes]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width, height = 8, b"", 0, 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        assert struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])[0] == zlib.crc32(kind + body)
        if kind == b"IHDR":
            width, height = struct.unpack(">II", body[:8])
            assert body[8:] == bytes([8, 2, 0, 0, 0])
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    raw = zlib.decompress(idat)
    rows = [raw[r * (1 + width * 3) : (r + 1) * (1 + width * 3)] for r in range(height)]
    assert all(row[0] == 0 for row in rows)
    return width, height, b"".join(row[1:] for row in rows)


async def test_screenshot_reads_one_full_update() -> None:
    red, blue = bytes([0, 0, 255, 0]), bytes([255, 0, 0, 0])  # B, G, R, X
    script = (
        b"RFB 003.008\n"
        + bytes([2, 2, 1])  # two security types: VNC auth, None
        + struct.pack(">I", 0)  # SecurityResult OK
        + server_init(4, 2)
        + bytes([2])  # a Bell first
        + bytes([0, 0])
        + struct.pack(">H", 2)
        + raw_rect(0, 0, 4, 1, red)
        + raw_rect(0, 1, 4, 1, blue)
    )
    server = ScriptedServer(script)
    fb = await rfb.screenshot(server.recv, server.send)
    assert (fb.width, fb.height, fb.name) == (4, 2, "QEMU")
    assert bytes(fb.rgb) == bytes([255, 0, 0]) * 4 + bytes([0, 0, 255]) * 4
    # what the client said: version, security None, shared, pixel format, Raw, one full update request
    assert server.received == (
        b"RFB 003.008\n"
        + b"\x01"
        + b"\x01"
        + b"\x00\x00\x00\x00"
        + rfb.PIXEL_FORMAT
        + struct.pack(">BxHi", 2, 1, 0)
        + struct.pack(">BBHHHH", 3, 0, 0, 0, 4, 2)
    )
    assert decode_png(fb.png()) == (4, 2, bytes(fb.rgb))


async def test_rectangles_beyond_the_screen_are_clipped() -> None:
    script = (
        b"RFB 003.008\n" + bytes([1, 1]) + bytes(4) + server_init(2, 2)
        + bytes([0, 0]) + struct.pack(">H", 1) + raw_rect(1, 1, 3, 3, bytes([1, 2, 3, 0]))
    )  # fmt: skip
    server = ScriptedServer(script)
    fb = await rfb.screenshot(server.recv, server.send)
    assert bytes(fb.rgb) == bytes(9) + bytes([3, 2, 1])


@pytest.mark.parametrize(
    ("script", "message"),
    [
        (b"SSH-2.0-OpenSSH\n", "not a VNC server"),
        (b"RFB 003.008\n" + bytes([0]) + struct.pack(">I", 5) + b"nope!", "refused the session: nope!"),
        (b"RFB 003.008\n" + bytes([1, 2]), "wants authentication"),
        (b"RFB 003.008\n" + bytes([1, 1]) + struct.pack(">II", 1, 3) + b"bad", "refused the session: bad"),
        (b"RFB 003.008\n" + bytes([1, 1]) + bytes(4) + server_init(0, 5), "unusable screen size 0x5"),
        (b"RFB 003.008\n" + bytes([1, 1]) + bytes(4) + server_init(2, 2) + bytes([9]), "message type 9"),
        (b"RFB 003.008\n" + bytes([1]), "closed the connection"),
    ],
)
async def test_errors(script: bytes, message: str) -> None:
    server = ScriptedServer(script)
    with pytest.raises(rfb.RfbError, match=message):
        await rfb.screenshot(server.recv, server.send)


def test_png_of_a_gradient_decodes_back() -> None:
    width, height = 37, 5
    rgb = bytes((x * 7 + y * 3 + c) % 256 for y in range(height) for x in range(width) for c in range(3))
    assert decode_png(rfb.encode_png(width, height, rgb)) == (width, height, rgb)
    with pytest.raises(ValueError, match="for a 2x2 RGB image"):
        rfb.encode_png(2, 2, b"\x00" * 11)
