"""A raw HTTP/2 client over a real socket for the HTTP/2 tests: frames built with hyperframe and header
blocks with hpack (both the `h2` project's), so a test can send what no conforming client would
(uppercase names, connection-specific fields, bad pseudo-headers, CONTINUATION floods, rapid resets)
and read every frame the gateway answers with."""

from __future__ import annotations

import socket
import ssl
import time

import hpack
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
PROTOCOL_ERROR = 0x1
NO_ERROR = 0x0
REFUSED_STREAM = 0x7
CANCEL = 0x8


class Stream:
    def __init__(self) -> None:
        self.headers: list[tuple[str, str]] = []
        self.informational: list[list[tuple[str, str]]] = []
        self.data = bytearray()
        self.ended = False
        self.reset: int | None = None

    @property
    def status(self) -> int | None:
        for k, v in self.headers:
            if k == ":status":
                return int(v)
        return None

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k == name:
                return v
        return None


class RawH2:
    """One HTTP/2 connection. `auto_window` False leaves the client's receive windows alone (no
    WINDOW_UPDATE), to test the gateway's backpressure."""

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 10.0, settings: dict | None = None,
                 tls: ssl.SSLContext | None = None, server_hostname: str | None = None, auto_window: bool = True,
                 preface: bool = True, auto_ping: bool = True):
        sock = socket.create_connection((host, port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if tls is not None:
            sock = tls.wrap_socket(sock, server_hostname=server_hostname)
        self.sock = sock
        self.timeout = timeout
        self.enc = hpack.Encoder()
        self.dec = hpack.Decoder()
        self.dec.max_header_list_size = 1 << 24
        self.buf = bytearray()
        self.streams: dict[int, Stream] = {}
        self.goaway: GoAwayFrame | None = None
        self.closed = False
        self.server_settings: dict = {}
        self.frames: list[Frame] = []
        self.auto_window = auto_window
        self.auto_ping = auto_ping
        self.pings = 0
        self.next_id = 1
        self._cont_sid: int | None = None
        self._cont_block = b""
        if preface:
            f = SettingsFrame(0)
            for k, v in (settings or {}).items():
                f.settings[k] = v
            self.sock.sendall(PREFACE + f.serialize())

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self) -> RawH2:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- sending ---------------------------------------------------------------------------------
    def send(self, *frames: Frame) -> None:
        self.sock.sendall(b"".join(f.serialize() for f in frames))

    def send_bytes(self, data: bytes) -> None:
        self.sock.sendall(data)

    def new_stream_id(self) -> int:
        sid = self.next_id
        self.next_id += 2
        return sid

    def block(self, headers) -> bytes:
        return self.enc.encode([(k.encode() if isinstance(k, str) else k, v.encode() if isinstance(v, str) else v)
                                for k, v in headers])

    def headers_frame(self, sid: int, headers, end_stream: bool = True, end_headers: bool = True) -> HeadersFrame:
        f = HeadersFrame(sid)
        f.data = self.block(headers)
        if end_stream:
            f.flags.add("END_STREAM")
        if end_headers:
            f.flags.add("END_HEADERS")
        return f

    def header_frames(self, sid: int, headers, end_stream: bool = True, size: int = 16384) -> list[Frame]:
        """A header block over HEADERS and as many CONTINUATION frames as `size` needs."""
        block = self.block(headers)
        first = HeadersFrame(sid)
        first.data = block[:size]
        frames: list[Frame] = [first]
        for i in range(size, len(block), size):
            f = ContinuationFrame(sid)
            f.data = block[i:i + size]
            frames.append(f)
        if end_stream:
            first.flags.add("END_STREAM")
        frames[-1].flags.add("END_HEADERS")
        return frames

    def request(self, method: str = "GET", path: str = "/", authority: str = "h2.test", headers=(),
                body: bytes | None = None, end_stream: bool | None = None) -> int:
        sid = self.new_stream_id()
        hdrs = [(":method", method), (":scheme", "http"), (":authority", authority), (":path", path), *headers]
        end = body is None if end_stream is None else end_stream
        self.streams[sid] = Stream()
        self.send(*self.header_frames(sid, hdrs, end_stream=end and not body))
        if body:
            self.send_data(sid, body, end_stream=True if end_stream is None else end_stream)
        return sid

    def send_data(self, sid: int, data: bytes, end_stream: bool = False, frame_size: int = 16384) -> None:
        """DATA frames as they are: the caller keeps within the windows (or tests what happens if not)."""
        frames = []
        for i in range(0, max(len(data), 1), frame_size):
            f = DataFrame(sid)
            f.data = data[i:i + frame_size]
            frames.append(f)
        if end_stream:
            frames[-1].flags.add("END_STREAM")
        self.send(*frames)

    def rst(self, sid: int, code: int = CANCEL) -> None:
        self.send(RstStreamFrame(sid, error_code=code))

    # ---- receiving -------------------------------------------------------------------------------
    def read_frame(self, timeout: float | None = None) -> Frame | None:
        """The next frame (handled: SETTINGS acked, HEADERS decoded into its Stream), or None once the
        gateway closed the connection."""
        self.sock.settimeout(timeout if timeout is not None else self.timeout)
        while True:
            if len(self.buf) >= 9:
                f, length = Frame.parse_frame_header(memoryview(self.buf[:9]))
                if len(self.buf) >= 9 + length:
                    f.parse_body(memoryview(bytes(self.buf[9:9 + length])))
                    del self.buf[:9 + length]
                    self._handle(f)
                    self.frames.append(f)
                    return f
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                self.closed = True
                return None
            self.buf += chunk

    def _reply(self, *frames: Frame) -> None:
        try:
            self.send(*frames)
        except OSError:
            pass                        # the gateway closed: what it sent is still to be read

    def _handle(self, f: Frame) -> None:
        if isinstance(f, SettingsFrame) and "ACK" not in f.flags:
            self.server_settings.update(f.settings)
            self._reply(SettingsFrame(0, flags=["ACK"]))
        elif isinstance(f, PingFrame) and "ACK" not in f.flags:
            self.pings += 1
            if self.auto_ping:
                self._reply(PingFrame(0, opaque_data=f.opaque_data, flags=["ACK"]))
        elif isinstance(f, GoAwayFrame):
            self.goaway = f
        elif isinstance(f, (HeadersFrame, ContinuationFrame)):
            self._cont_block += f.data
            self._cont_sid = f.stream_id
            if "END_HEADERS" in f.flags:
                st = self.streams.setdefault(f.stream_id, Stream())
                hdrs = [(k.decode() if isinstance(k, bytes) else k, v.decode() if isinstance(v, bytes) else v)
                        for k, v in self.dec.decode(self._cont_block)]
                self._cont_block = b""
                status = next((v for k, v in hdrs if k == ":status"), None)
                if status is not None and 100 <= int(status) < 200:
                    st.informational.append(hdrs)
                elif st.headers:
                    st.headers += hdrs          # trailers
                else:
                    st.headers = hdrs
            if "END_STREAM" in f.flags:
                self.streams.setdefault(f.stream_id, Stream()).ended = True
        elif isinstance(f, DataFrame):
            st = self.streams.setdefault(f.stream_id, Stream())
            st.data += f.data
            if self.auto_window and f.flow_controlled_length:
                self._reply(WindowUpdateFrame(0, window_increment=f.flow_controlled_length),
                          WindowUpdateFrame(f.stream_id, window_increment=f.flow_controlled_length))
            if "END_STREAM" in f.flags:
                st.ended = True
        elif isinstance(f, RstStreamFrame):
            self.streams.setdefault(f.stream_id, Stream()).reset = f.error_code

    def until(self, pred, timeout: float | None = None, what: str = "a frame"):
        deadline = time.monotonic() + (timeout if timeout is not None else self.timeout)
        while True:
            if pred():
                return
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out waiting for {what}; frames: {self.frames[-10:]}")
            try:
                f = self.read_frame(left)
            except TimeoutError:
                continue
            if f is None:
                if pred():
                    return
                raise AssertionError(f"connection closed while waiting for {what}; frames: {self.frames[-10:]}")

    def response(self, sid: int, timeout: float | None = None) -> Stream:
        """The stream once it ended or was reset."""
        st = self.streams.setdefault(sid, Stream())
        self.until(lambda: st.ended or st.reset is not None, timeout, f"the end of stream {sid}")
        return st

    def wait_closed(self, timeout: float | None = None) -> None:
        deadline = time.monotonic() + (timeout if timeout is not None else self.timeout)
        while not self.closed:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("the gateway did not close the connection")
            try:
                self.read_frame(left)
            except TimeoutError:
                pass
