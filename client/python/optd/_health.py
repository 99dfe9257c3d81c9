"""grpc.health.v1 Check request and reply, encoded by hand (no extra generated stubs needed)."""


def encode_request(service: str) -> bytes:
    """grpc.health.v1.HealthCheckRequest{service} encoded by hand (no extra stubs needed)."""
    data = service.encode("utf-8")
    if not data:
        return b""
    n, length = len(data), bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        length.append(byte | (0x80 if n else 0))
        if not n:
            break
    return b"\x0a" + bytes(length) + data


def decode_status(data: bytes) -> int:
    """HealthCheckResponse.status (field 1, varint) from its encoding; 0 (UNKNOWN) if absent."""
    i, status = 0, 0
    while i < len(data):
        key = data[i]
        i += 1
        if key == 0x08:
            shift, value = 0, 0
            while True:
                byte = data[i]
                i += 1
                value |= (byte & 0x7F) << shift
                shift += 7
                if not byte & 0x80:
                    break
            status = value
        else:  # not expected; stop rather than misparse
            break
    return status
