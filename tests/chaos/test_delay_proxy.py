"""The delaying proxy's pump (pure asyncio: no root, no namespaces): a reset on one side must
end the pump (and so the connection), not leave the other side waiting for good."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from tests.chaos.delay_proxy import Delays, _pump


async def test_a_reset_read_side_ends_the_pump_instead_of_hanging(tmp_path: Path) -> None:
    delays = Delays(tmp_path / "delay.json")
    reader = asyncio.StreamReader()
    reader.set_exception(ConnectionResetError("reset by the primary going down"))
    ours, theirs = socket.socketpair()
    try:
        _r, writer = await asyncio.open_connection(sock=ours)
        with pytest.raises(ConnectionResetError):
            async with asyncio.timeout(5):
                await _pump(reader, writer, delays, "10.0.0.2")
        writer.close()
    finally:
        theirs.close()


async def test_an_orderly_end_of_stream_is_forwarded_as_one(tmp_path: Path) -> None:
    delays = Delays(tmp_path / "delay.json")
    reader = asyncio.StreamReader()
    reader.feed_data(b"bye")
    reader.feed_eof()
    ours, theirs = socket.socketpair()
    try:
        _r, writer = await asyncio.open_connection(sock=ours)
        async with asyncio.timeout(5):
            await _pump(reader, writer, delays, "10.0.0.2")
        theirs.settimeout(5)
        assert theirs.recv(100) == b"bye"
        assert theirs.recv(100) == b""  # the EOF
        writer.close()
    finally:
        theirs.close()
