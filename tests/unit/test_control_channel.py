"""The control channel (fastgw.control) over a real Unix socketpair: framing, answers matched to
calls by id, deadlines, and a peer that goes away."""

from __future__ import annotations

import asyncio
import socket

import pytest

from fastgw.control import ControlClient, ControlError, ControlServer, FrameReader, encode_frame


def test_frames_split_anywhere_decode_whole():
    stream = encode_frame({"id": 1, "op": "stats"}) + encode_frame([1, 2, 3]) + encode_frame("x" * 70000)
    reader, out = FrameReader(), []
    for i in range(0, len(stream), 7):
        out += reader.feed(stream[i:i + 7])
    assert out == [{"id": 1, "op": "stats"}, [1, 2, 3], "x" * 70000]


def test_an_oversized_frame_is_refused():
    with pytest.raises(ControlError):
        FrameReader().feed(b"\xff\xff\xff\xff")


async def _pair(ops, on_lost=lambda: None):
    ours, theirs = socket.socketpair()
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_unix_connection(lambda: ControlServer(ops, on_lost), sock=theirs)
    return ControlClient.open(ours), transport


def test_calls_get_their_own_answers_and_errors():
    async def main():
        client, server = await _pair({"echo": lambda args: args, "boom": lambda args: 1 / 0})
        answers = await asyncio.gather(*(client.call("echo", {"n": i}) for i in range(20)))
        assert answers == [{"n": i} for i in range(20)]
        with pytest.raises(ControlError, match="ZeroDivisionError"):
            await client.call("boom")
        with pytest.raises(ControlError, match="unknown operation"):
            await client.call("nope")
        client.close()
        server.close()

    asyncio.run(main())


def test_an_unencodable_answer_is_an_error_not_a_dead_channel():
    async def main():
        client, server = await _pair({"bad": lambda args: object(), "ok": lambda args: 1})
        with pytest.raises(ControlError, match="unencodable"):
            await client.call("bad")
        assert await client.call("ok") == 1
        client.close()
        server.close()

    asyncio.run(main())


def test_a_silent_peer_times_out_and_its_late_answer_is_dropped():
    async def main():
        ours, theirs = socket.socketpair()
        theirs.setblocking(False)
        client = ControlClient.open(ours)
        with pytest.raises(ControlError, match="no answer"):
            await client.call("stats", timeout=0.05)
        # the late answer to call 1 must not be taken for the answer to call 2
        loop = asyncio.get_running_loop()
        await loop.sock_sendall(theirs, encode_frame({"id": 1, "ok": True, "result": "late"}))
        call = asyncio.ensure_future(client.call("stats", timeout=5))
        await asyncio.sleep(0.05)
        await loop.sock_sendall(theirs, encode_frame({"id": 2, "ok": True, "result": "fresh"}))
        assert await call == "fresh"
        client.close()
        theirs.close()

    asyncio.run(main())


def test_a_peer_that_goes_away_fails_pending_calls_and_tells_the_worker():
    async def main():
        lost = asyncio.Event()
        ours, theirs = socket.socketpair()
        client = ControlClient.open(ours)
        call = asyncio.ensure_future(client.call("stats", timeout=30))
        await asyncio.sleep(0.05)
        theirs.close()
        with pytest.raises(ControlError, match="closed"):
            await call
        with pytest.raises(ControlError, match="closed"):
            await client.call("stats")

        client2, server = await _pair({}, on_lost=lost.set)
        client2.close()
        await asyncio.wait_for(lost.wait(), 10)
        server.close()

    asyncio.run(main())
