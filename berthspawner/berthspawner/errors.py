"""The machine-readable reason of a berthd refusal.

berthd attaches a `google.rpc.ErrorInfo` (domain "berth.v1", a reason such as NODE_DRAINING and
string metadata) to every refusal, in the `grpc-status-details-bin` trailer as a serialized
`google.rpc.Status`; the reasons are listed in proto/berth/v1/spawner.proto. Decisions are taken
on the reason, never on the message, which is English for people and may change.

The two messages are tiny, so they are read (and, for tests, written) here directly in the
protobuf wire format instead of pulling in the googleapis packages.
"""

import grpc

DOMAIN = "berth.v1"
DETAILS_KEY = "grpc-status-details-bin"
ERROR_INFO_TYPE = "type.googleapis.com/google.rpc.ErrorInfo"

# Refusals that are about this node, not the server: another node may well take it.
TRY_ANOTHER_NODE = frozenset(
    {
        "NODE_DRAINING",
        "INSUFFICIENT_MEMORY",
        "INSUFFICIENT_CPU",
        "TOO_MANY_SERVERS",
        "INSUFFICIENT_DEVICES",
        "DEVICES_NOT_CONFIGURED",
        "SPAWN_QUEUE_FULL",
        "SPAWN_QUEUE_TIMEOUT",
        "IMAGE_NOT_FOUND",
        "HOST_PATH_MISSING",
        "DOCKER_UNAVAILABLE",
        "DOCKER_TIMEOUT",
        "STATE_STORE_ERROR",
    }
)


# Refusals that mean a node has no room for the server now: only these make the spawn's final
# "no room" answer (HTTP 503). A failed pull is not one: the image cannot be had, anywhere.
NO_ROOM = frozenset(
    {
        "INSUFFICIENT_MEMORY",
        "INSUFFICIENT_CPU",
        "TOO_MANY_SERVERS",
        "SPAWN_QUEUE_FULL",
        "SPAWN_QUEUE_TIMEOUT",
    }
)


def _varint(buf, i):
    value = shift = 0
    while True:
        if i >= len(buf) or shift > 63:
            raise ValueError("truncated varint")
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, i
        shift += 7


def _fields(buf):
    """(field number, value) of each length-delimited or varint field; others are skipped."""
    i = 0
    while i < len(buf):
        tag, i = _varint(buf, i)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 2:
            size, i = _varint(buf, i)
            value, i = bytes(buf[i : i + size]), i + size
            if i > len(buf):
                raise ValueError("truncated field")
        elif wire == 1:
            value, i = None, i + 8
        elif wire == 5:
            value, i = None, i + 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        yield number, value


def _error_info(value):
    reason, domain, metadata = "", "", {}
    for number, v in _fields(value):
        if number == 1:
            reason = v.decode()
        elif number == 2:
            domain = v.decode()
        elif number == 3:
            entry = dict(_fields(v))
            metadata[entry.get(1, b"").decode()] = entry.get(2, b"").decode()
    return reason, domain, metadata


def reason(error):
    """(reason, metadata) of a gRPC error from berthd; ("", {}) when it carries none (an older
    berthd, or a failure below berthd such as a connection that never opened)."""
    trailing = error.trailing_metadata() if hasattr(error, "trailing_metadata") else None
    for key, value in trailing or ():
        if key != DETAILS_KEY or not isinstance(value, bytes):
            continue
        try:
            for number, any_msg in _fields(value):
                if number != 3:
                    continue
                parts = dict(_fields(any_msg))
                if parts.get(1, b"").decode() != ERROR_INFO_TYPE:
                    continue
                why, domain, metadata = _error_info(parts.get(2, b""))
                if domain == DOMAIN:
                    return why, metadata
        except (ValueError, UnicodeDecodeError):
            return "", {}
    return "", {}


def try_another_node(error):
    """Whether a refused Start may succeed on another node: the node is full, draining, missing
    the image or its Docker, or unreachable. A server that crashed, a policy refusal or bad
    input would fail anywhere."""
    why, _ = reason(error)
    if why:
        return why in TRY_ANOTHER_NODE
    # No reason at all: the call never reached a berthd (connection refused, timeout).
    return error.code() == grpc.StatusCode.UNAVAILABLE


def _put_varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _put(number, data):
    return _put_varint(number << 3 | 2) + _put_varint(len(data)) + data


def encode_details(code, message, why, metadata=None):
    """A `grpc-status-details-bin` value as berthd sends it (for tests and fakes)."""
    info = _put(1, why.encode()) + _put(2, DOMAIN.encode())
    for k, v in (metadata or {}).items():
        info += _put(3, _put(1, k.encode()) + _put(2, v.encode()))
    any_msg = _put(1, ERROR_INFO_TYPE.encode()) + _put(2, info)
    return _put_varint(1 << 3 | 0) + _put_varint(code) + _put(2, message.encode()) + _put(3, any_msg)
