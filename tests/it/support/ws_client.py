"""An independent wss:// client for the TLS test: Python's ssl module (OpenSSL) and a hand-written
WebSocket client (RFC 6455 framing), sharing no code with chatd or its Rust libraries.
Usage: ws_client.py HOST PORT CA_FILE NAME"""
import base64
import json
import os
import socket
import ssl
import struct
import sys

host, port, ca, name = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
ctx = ssl.create_default_context(cafile=ca)
sock = ctx.wrap_socket(socket.create_connection((host, port), timeout=10), server_hostname=host)
key = base64.b64encode(os.urandom(16)).decode()
sock.sendall((f"GET / HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
head = b""
while b"\r\n\r\n" not in head:
    head += sock.recv(1)
assert head.startswith(b"HTTP/1.1 101"), head


def exact(n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        assert chunk, "connection closed"
        data += chunk
    return data


def send(obj):
    data = json.dumps(obj).encode()
    mask = os.urandom(4)
    if len(data) < 126:
        header = bytes([0x81, 0x80 | len(data)])
    else:
        header = bytes([0x81, 0x80 | 126]) + struct.pack(">H", len(data))
    sock.sendall(header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))


def recv_frame():
    b0, b1 = exact(2)
    n = b1 & 0x7F
    if n == 126:
        n = struct.unpack(">H", exact(2))[0]
    elif n == 127:
        n = struct.unpack(">Q", exact(8))[0]
    return b0 & 0x0F, exact(n)


def recv():
    while True:
        opcode, payload = recv_frame()
        if opcode == 0x1:
            return json.loads(payload)


send({"type": "hello", "name": name})
welcome = recv()
assert welcome["type"] == "welcome", welcome
send({"type": "say", "text": "hello over TLS from python", "id": "p1"})
while True:
    reply = recv()
    if reply.get("ref") == "p1":
        break
assert reply["type"] == "ack", reply
# Close with 1000: the server must answer with its own close frame before the stream ends.
mask = os.urandom(4)
body = struct.pack(">H", 1000)
sock.sendall(bytes([0x88, 0x80 | len(body)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(body)))
while True:
    opcode, payload = recv_frame()
    if opcode == 0x8:
        break
assert struct.unpack(">H", payload[:2])[0] == 1000, payload
print(f"ok {welcome['name']} {reply['type']} seq={reply['seq']}")
