#!/usr/bin/env python3
"""A connection flood for the load tests: opens N TCP connections to HOST:PORT and holds them
until its standard input closes. Half stay silent; half send the start of a TLS ClientHello
record and never finish it. With --reopen, a connection the server closes is opened again at
once, as a persistent attacker would. Prints `held N` (flushed) once N connections have been
established, and at the end `closed K` (how many the server closed). Its own process, so that
the test's file descriptor limit (20000 here) is not shared.

    hold_connections.py HOST PORT N [--reopen]
"""
import selectors
import socket
import sys

PARTIAL_HELLO = bytes([0x16, 0x03, 0x01, 0x02, 0x00, 0x01])


def main() -> None:
    host, port, target = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    reopen = "--reopen" in sys.argv[4:]
    selector = selectors.DefaultSelector()
    counts = {"established": 0, "closed": 0, "serial": 0}
    held = False

    def dial() -> None:
        counts["serial"] += 1
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.connect_ex((host, port))
        selector.register(sock, selectors.EVENT_WRITE, ("connecting", counts["serial"]))

    def drop(sock: socket.socket, established: bool) -> None:
        selector.unregister(sock)
        sock.close()
        if established:
            counts["closed"] += 1
        if reopen or not established:
            dial()

    selector.register(sys.stdin, selectors.EVENT_READ, ("stdin", 0))
    for _ in range(target):
        dial()
    while True:
        for key, _ in selector.select(timeout=1.0):
            what, serial = key.data
            if what == "stdin":
                if not sys.stdin.buffer.read1(4096):
                    print(f"closed {counts['closed']}", flush=True)
                    return
                continue
            sock = key.fileobj
            if what == "connecting":
                if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) != 0:
                    drop(sock, False)
                    continue
                if serial % 2 == 0:
                    try:
                        sock.send(PARTIAL_HELLO)
                    except OSError:
                        drop(sock, False)
                        continue
                selector.modify(sock, selectors.EVENT_READ, ("open", serial))
                counts["established"] += 1
                if counts["established"] >= target and not held:
                    held = True
                    print(f"held {target}", flush=True)
            else:
                try:
                    data = sock.recv(4096)
                except OSError:
                    data = b""
                if not data:
                    drop(sock, True)


if __name__ == "__main__":
    main()
