"""The control channel between the supervisor and one worker: a Unix socketpair made at spawn,
carrying length-prefixed msgpack frames (msgspec).

The supervisor sends `{"id", "op", "args"}`; the worker answers `{"id", "ok", "result"}` or
`{"id", "ok": false, "error"}` from its event loop, between requests on the data path (never inside
one). Every call has a deadline: a worker that is stopped, busy or gone makes its call fail with
ControlError, and the caller reports that worker as missing rather than waiting for it. Answers
carry the request id, so an answer that comes after its call gave up is recognised and dropped.
"""

from __future__ import annotations

import asyncio
import itertools
import struct
from collections.abc import Callable
from typing import Any

import msgspec

__all__ = ["ControlClient", "ControlError", "ControlServer", "FrameReader", "encode_frame"]

_LENGTH = struct.Struct("!I")
# A snapshot of a worker with many routes is well under this; anything larger is a broken peer.
MAX_FRAME_BYTES = 64 << 20
# Calls a stopped worker has not read yet pile up in the supervisor's send buffer; past this the
# worker counts as not answering and nothing more is queued for it.
MAX_UNREAD_BYTES = 1 << 20

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder()


class ControlError(Exception):
    """A call that got no answer (timeout, worker gone) or whose answer is an error."""


def encode_frame(message: Any) -> bytes:
    body = _encoder.encode(message)
    return _LENGTH.pack(len(body)) + body


class FrameReader:
    """Splits a byte stream into decoded messages."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Any]:
        self._buf += data
        out = []
        while len(self._buf) >= _LENGTH.size:
            (size,) = _LENGTH.unpack_from(self._buf)
            if size > MAX_FRAME_BYTES:
                raise ControlError(f"control frame of {size} bytes is over the limit")
            end = _LENGTH.size + size
            if len(self._buf) < end:
                break
            out.append(_decoder.decode(bytes(self._buf[_LENGTH.size:end])))
            del self._buf[:end]
        return out


class ControlClient(asyncio.Protocol):
    """The supervisor's end of one worker's channel."""

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._reader = FrameReader()
        self._pending: dict[int, asyncio.Future] = {}
        self._ids = itertools.count(1)
        self._connecting: asyncio.Task | None = None
        self._sock = None
        self.closed = False

    @classmethod
    def open(cls, sock) -> ControlClient:
        """The client for one end of a socketpair; calls made before the transport is set up wait
        for it."""
        client = cls()
        client._sock = sock
        loop = asyncio.get_running_loop()
        client._connecting = loop.create_task(loop.create_unix_connection(lambda: client, sock=sock))
        return client

    def connection_made(self, transport) -> None:
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            messages = self._reader.feed(data)
        except (ControlError, msgspec.DecodeError):
            self.close()
            return
        for msg in messages:
            fut = self._pending.pop(msg.get("id"), None) if isinstance(msg, dict) else None
            if fut is None or fut.done():
                continue   # the answer to a call that already gave up
            if msg.get("ok"):
                fut.set_result(msg.get("result"))
            else:
                fut.set_exception(ControlError(str(msg.get("error"))))

    def connection_lost(self, exc) -> None:
        self.closed = True
        pending, self._pending = self._pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(ControlError("worker closed its control channel"))

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
        else:   # closed before its transport was set up
            if self._connecting is not None:
                self._connecting.cancel()
            if self._sock is not None:
                self._sock.close()
            self.closed = True

    async def call(self, op: str, args: dict | None = None, timeout: float = 2.0) -> Any:
        try:
            return await asyncio.wait_for(self._call(op, args), timeout)
        except TimeoutError:
            raise ControlError(f"no answer to {op!r} within {timeout:g}s") from None

    async def _call(self, op: str, args: dict | None) -> Any:
        if self._transport is None and self._connecting is not None:
            # shielded: a call that times out must not cancel the channel's setup for later calls
            await asyncio.shield(self._connecting)
        if self.closed or self._transport is None:
            raise ControlError("worker control channel closed")
        if self._transport.get_write_buffer_size() > MAX_UNREAD_BYTES:
            raise ControlError("worker is not reading its control channel")
        call_id = next(self._ids)
        fut = asyncio.get_running_loop().create_future()
        self._pending[call_id] = fut
        self._transport.write(encode_frame({"id": call_id, "op": op, "args": args or {}}))
        try:
            return await fut
        finally:
            self._pending.pop(call_id, None)


class ControlServer(asyncio.Protocol):
    """A worker's end: answers each call with `ops[op](args)`, in the order the calls came."""

    def __init__(self, ops: dict[str, Callable[[dict], Any]], on_lost: Callable[[], None]) -> None:
        self._ops = ops
        self._on_lost = on_lost
        self._reader = FrameReader()
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport) -> None:
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            messages = self._reader.feed(data)
        except (ControlError, msgspec.DecodeError):
            self._transport.close()
            return
        for msg in messages:
            answer = self._answer(msg)
            try:
                frame = encode_frame(answer)
            except (TypeError, msgspec.EncodeError) as exc:   # an op returned something msgpack cannot carry
                frame = encode_frame({"id": answer["id"], "ok": False, "error": f"unencodable answer: {exc}"})
            self._transport.write(frame)

    def _answer(self, msg: Any) -> dict:
        call_id = msg.get("id") if isinstance(msg, dict) else None
        op = self._ops.get(msg.get("op")) if isinstance(msg, dict) else None
        if op is None:
            return {"id": call_id, "ok": False, "error": f"unknown operation {msg!r:.80}"}
        try:
            result = op(msg.get("args") or {})
        except Exception as exc:  # the supervisor reports it; the worker keeps serving
            return {"id": call_id, "ok": False, "error": f"{type(exc).__name__}: {exc}"}
        return {"id": call_id, "ok": True, "result": result}

    def connection_lost(self, exc) -> None:
        self._on_lost()
