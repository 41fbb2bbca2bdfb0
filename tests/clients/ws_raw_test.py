"""Hand-made WebSocket frames against roost's ws listener.

Real clients send one MQTT packet per unfragmented frame; these checks send
what they do not but RFC 6455 allows (fragmented messages, control frames
between fragments, several packets in one frame) and check the refusals.
Env: ROOST_WS_PORT. Prints "ok - NAME" / "not ok - NAME: why" per check.
"""

import base64
import hashlib
import os
import socket
import struct
import sys

PORT = int(os.environ["ROOST_WS_PORT"])
WAIT = 10.0
GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class Check(Exception):
    pass


def upgrade(path, protocol="mqtt"):
    s = socket.create_connection(("127.0.0.1", PORT), timeout=WAIT)
    key = base64.b64encode(os.urandom(16)).decode()
    req = (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{PORT}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
    )
    if protocol:
        req += f"Sec-WebSocket-Protocol: {protocol}\r\n"
    s.sendall((req + "\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(4096)
        if not chunk:
            break
        head += chunk
    text, _, rest = head.partition(b"\r\n\r\n")
    lines = text.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (l.partition(":") for l in lines[1:])}
    return s, lines[0], headers, key, rest


def frame(opcode, payload, fin=True):
    mask = os.urandom(4)
    head = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + struct.pack(">H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack(">Q", n)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


class Reader:
    def __init__(self, sock, rest):
        self.s = sock
        self.buf = rest

    def _need(self, n):
        while len(self.buf) < n:
            chunk = self.s.recv(4096)
            if not chunk:
                raise Check("connection closed")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def frame(self):
        b0, b1 = self._need(2)
        if b1 & 0x80:
            raise Check("server frame is masked")
        n = b1 & 0x7F
        if n == 126:
            (n,) = struct.unpack(">H", self._need(2))
        elif n == 127:
            (n,) = struct.unpack(">Q", self._need(8))
        return b0 & 0x0F, self._need(n)


def mqtt_str(s):
    return struct.pack(">H", len(s)) + s.encode()


def packet(first, body):
    # Remaining length as MQTT's variable byte integer.
    n, rl = len(body), b""
    while True:
        d, n = n % 128, n // 128
        rl += bytes([d | (0x80 if n else 0)])
        if not n:
            return bytes([first]) + rl + body


def connect_packet(cid):
    return packet(0x10, mqtt_str("MQTT") + bytes([4, 2]) + struct.pack(">H", 30) + mqtt_str(cid))


def check_wrong_path():
    s, status, _, _, _ = upgrade("/not-mqtt")
    s.close()
    if " 404 " not in status + " ":
        raise Check(f"status line {status!r}")


def check_handshake():
    s, status, headers, key, _ = upgrade("/mqtt")
    s.close()
    accept = base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()
    got = (status.split(" ")[1], headers.get("sec-websocket-protocol"), headers.get("sec-websocket-accept"))
    if got != ("101", "mqtt", accept):
        raise Check(f"got {got}")


def check_fragments_and_batching():
    s, status, _, _, rest = upgrade("/mqtt")
    try:
        if " 101 " not in status + " ":
            raise Check(f"status line {status!r}")
        r = Reader(s, rest)
        connect = connect_packet(f"raw-{os.getpid()}")
        # CONNECT as one fragmented binary message with a ping between the
        # fragments, which RFC 6455 5.4 allows.
        s.sendall(frame(0x2, connect[:3], fin=False) + frame(0x9, b"are you there") + frame(0x0, connect[3:]))
        got = [r.frame(), r.frame()]
        if (0xA, b"are you there") not in got:
            raise Check(f"no pong echoing the ping: {got}")
        if not any(op == 0x2 and data == b"\x20\x02\x00\x00" for op, data in got):
            raise Check(f"no CONNACK: {got}")
        # SUBSCRIBE and a PUBLISH to the same topic in one frame.
        topic = f"roost/raw/{os.getpid()}"
        sub = packet(0x82, struct.pack(">H", 1) + mqtt_str(topic) + b"\x00")
        pub = packet(0x30, mqtt_str(topic) + b"batched")
        s.sendall(frame(0x2, sub + pub))
        stream = b""
        want = packet(0x90, b"\x00\x01\x00") + pub
        while len(stream) < len(want):
            op, data = r.frame()
            if op != 0x2:
                raise Check(f"unexpected opcode {op}")
            stream += data
        if stream != want:
            raise Check(f"got {stream!r}, wanted {want!r}")
        # DISCONNECT then a close frame: the server answers with a close frame.
        s.sendall(frame(0x2, b"\xe0\x00") + frame(0x8, struct.pack(">H", 1000)))
        while True:
            op, data = r.frame()
            if op == 0x8:
                break
    finally:
        s.close()


def check_byte_frames_and_large_message():
    s, status, _, _, rest = upgrade("/mqtt")
    try:
        if " 101 " not in status + " ":
            raise Check(f"status line {status!r}")
        r = Reader(s, rest)
        # MQTT over WebSocket is a byte stream: a packet may end anywhere, so
        # one byte per binary message must work too.
        s.sendall(b"".join(frame(0x2, bytes([b])) for b in connect_packet(f"raw-big-{os.getpid()}")))
        op, data = r.frame()
        if (op, data) != (0x2, b"\x20\x02\x00\x00"):
            raise Check(f"no CONNACK: {(op, data[:16])}")
        topic = f"roost/raw/big/{os.getpid()}"
        s.sendall(frame(0x2, packet(0x82, struct.pack(">H", 1) + mqtt_str(topic) + b"\x00")))
        # 200 KiB: the frame needs the 64-bit length form (RFC 6455 5.2).
        body = os.urandom(200 * 1024)
        pub = packet(0x30, mqtt_str(topic) + body)
        s.sendall(frame(0x2, pub))
        want = packet(0x90, b"\x00\x01\x00") + pub
        stream = b""
        while len(stream) < len(want):
            op, data = r.frame()
            if op != 0x2:
                raise Check(f"unexpected opcode {op}")
            stream += data
        if stream != want:
            raise Check(f"{len(stream)} bytes back, differing from the {len(want)} expected")
    finally:
        s.close()


def main():
    failed = 0
    for name, fn in [
        ("ws raw: wrong path gets 404", check_wrong_path),
        ("ws raw: handshake echoes mqtt subprotocol and a correct accept key", check_handshake),
        ("ws raw: fragmented CONNECT with ping between fragments, two packets in one frame, close", check_fragments_and_batching),
        ("ws raw: CONNECT one byte per frame, 200 KiB PUBLISH in one frame echoed intact", check_byte_frames_and_large_message),
    ]:
        try:
            fn()
            print(f"ok - {name}", flush=True)
        except Exception as e:
            failed += 1
            print(f"not ok - {name}: {type(e).__name__}: {e}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
