"""A gRPC client at the level of HTTP/2 frames, for clients that misbehave on purpose.

``RawGrpcConnection`` opens one TCP connection to 127.0.0.1, speaks just enough HTTP/2 to start gRPC
calls and send their messages, and never reads the socket: the server's replies
stay unread in the kernel's buffers, and since the connection never grants the server more flow-
control window than the initial 65535 bytes, the server cannot send more than that on the whole
connection. That is a client that "never reads its replies", at any level.

Only what the tests need: the connection preface, SETTINGS (and a blind ACK of the server's),
HEADERS (HPACK literals without indexing or Huffman coding), DATA frames of at most 16384 bytes.
It sends at most 65535 bytes of DATA in all (the server's initial connection window, which it
cannot learn without reading): ``send_message`` raises ``FlowControlExhausted`` beyond it.
"""

import socket
import struct

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, SETTINGS = 0x0, 0x1, 0x4
END_STREAM, END_HEADERS, ACK = 0x1, 0x4, 0x1
SETTINGS_ENABLE_PUSH, SETTINGS_INITIAL_WINDOW_SIZE = 0x2, 0x4
INITIAL_WINDOW = 65535
MAX_FRAME = 16384


class FlowControlExhausted(RuntimeError):
    """More DATA than the server's initial window allows without reading its WINDOW_UPDATEs."""


def _hpack_int(value, prefix_bits, first_byte=0):
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first_byte | value])
    out = [first_byte | limit]
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _hpack_literal(name, value):
    """Literal header field without indexing, new name, no Huffman coding (RFC 7541 6.2.2)."""
    name, value = name.encode(), value.encode()
    return (b"\x00" + _hpack_int(len(name), 7) + name + _hpack_int(len(value), 7) + value)


def _frame(kind, flags, stream_id, payload=b""):
    return (struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) +
            struct.pack(">I", stream_id & 0x7FFFFFFF) + payload)


def grpc_message(payload: bytes) -> bytes:
    """A gRPC length-prefixed message: uncompressed flag, 4-byte big-endian length, bytes."""
    return b"\x00" + struct.pack(">I", len(payload)) + payload


class RawGrpcConnection:
    """One HTTP/2 connection that starts gRPC calls and never reads a byte back. `initial_window`
    is the flow-control window it grants the server on each stream (and never raises)."""

    def __init__(self, host, port, initial_window=INITIAL_WINDOW, timeout=10.0):
        self.authority = f"{host}:{port}"
        self.sock = socket.create_connection((host, port), timeout=timeout)
        # Small kernel buffers, so what the server manages to send stays small too.
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.next_stream = 1
        self.data_sent = 0
        settings = struct.pack(">HI", SETTINGS_ENABLE_PUSH, 0)
        settings += struct.pack(">HI", SETTINGS_INITIAL_WINDOW_SIZE, initial_window)
        self.sock.sendall(PREFACE + _frame(SETTINGS, 0, 0, settings) +
                          # The server's SETTINGS are acknowledged unread: this client keeps
                          # to HTTP/2's default limits, which optd's SETTINGS only raise.
                          _frame(SETTINGS, ACK, 0))

    def start_call(self, method):
        """Opens a stream for `method` ("/optd.v1.Optimizer/StreamSteps"); returns its id."""
        stream_id = self.next_stream
        self.next_stream += 2
        headers = [(":method", "POST"), (":scheme", "http"), (":path", method),
                   (":authority", self.authority), ("content-type", "application/grpc"),
                   ("te", "trailers")]
        block = b"".join(_hpack_literal(n, v) for n, v in headers)
        assert len(block) <= MAX_FRAME
        self.sock.sendall(_frame(HEADERS, END_HEADERS, stream_id, block))
        return stream_id

    def send_message(self, stream_id, payload: bytes, end_stream=False):
        """Sends one gRPC message on the stream (split into DATA frames)."""
        data = grpc_message(payload)
        if self.data_sent + len(data) > INITIAL_WINDOW:
            raise FlowControlExhausted(
                f"{self.data_sent} + {len(data)} bytes of DATA would exceed the initial window "
                f"of {INITIAL_WINDOW}")
        self.data_sent += len(data)
        frames = []
        for at in range(0, len(data), MAX_FRAME):
            chunk = data[at:at + MAX_FRAME]
            last = at + MAX_FRAME >= len(data)
            flags = END_STREAM if (last and end_stream) else 0
            frames.append(_frame(DATA, flags, stream_id, chunk))
        self.sock.sendall(b"".join(frames))

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass
