#!/usr/bin/env python3
"""Opens N idle connections to a proxy on 127.0.0.1 and holds them.

Modes: `http1` (plain HTTP/1.1, one keep-alive GET each), `tls-http1` (the same over TLS,
ALPN http/1.1), `h2` (TLS with ALPN h2: the client preface and SETTINGS, no request).
Prints `READY open=N` once every connection is settled, holds them --hold seconds, then
prints `DONE open=N closed_by_server=M` and closes them. Standard library only.
"""
import argparse
import resource
import socket
import ssl
import time

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def read_response(sock):
    """Reads one response with a Content-Length body; False if the server closed."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return False
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            return False
        body += chunk
    return True


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=["http1", "tls-http1", "h2"], required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--path", default="/obj/1k.bin")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--hold", type=float, default=6)
    a = ap.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"] if a.mode == "h2" else ["http/1.1"])
    request = f"GET {a.path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode()
    conns, errors = [], 0
    for _ in range(a.n):
        try:
            sock = socket.create_connection(("127.0.0.1", a.port), timeout=10)
            if a.mode != "http1":
                sock = ctx.wrap_socket(sock, server_hostname="localhost")
            if a.mode == "h2":
                assert sock.selected_alpn_protocol() == "h2"
                sock.sendall(H2_PREFACE)
                sock.recv(65536)  # the server's SETTINGS
            else:
                sock.sendall(request)
                if not read_response(sock):
                    raise ConnectionError("closed before answering")
            conns.append(sock)
        except (OSError, AssertionError, ValueError):
            errors += 1
    print(f"READY open={len(conns)} errors={errors}", flush=True)
    time.sleep(a.hold)
    closed = 0
    for sock in conns:
        sock.setblocking(False)
        try:
            if sock.recv(1) == b"":
                closed += 1
        except (BlockingIOError, ssl.SSLWantReadError):
            pass
        except OSError:
            closed += 1
    print(f"DONE open={len(conns)} closed_by_server={closed}", flush=True)
    for sock in conns:
        sock.close()


if __name__ == "__main__":
    main()
