"""TCP traffic for the shaping tests, run inside the test's network namespaces (``ip netns exec NS python
traffic.py …``). Standard library only: it measures what the kernel delivers, nothing else in the way.

    serve --host H --port P     accept connections one after another; the first byte says what to do:
                                  S  sink: count bytes until EOF, then answer one JSON line with the arrival
                                     curve (receive times at 1 ms resolution, cumulative bytes) and close
                                  E  echo: send every chunk back until EOF
                                prints "ready" once listening, then one JSON line per finished connection
    send --host H --port P --seconds S [--bytes N] [--abort]
                                sink connection: send as fast as possible for S seconds (or exactly N bytes),
                                half-close, wait for the answer; prints {"sent", "t_first", "t_done", "elapsed_s"}.
                                --abort resets the connection after S seconds instead (a slow link would take
                                long to drain the socket buffers)
    ping --host H --port P --count N --size B
                                echo connection: N round trips of B bytes; prints {"rtts_ms": [...]}
"""

from __future__ import annotations

import argparse
import json
import socket
import struct
import sys
import time

CHUNK = 64 * 1024


def _recv_exact(conn: socket.socket, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        data = conn.recv(n - len(out))
        if not data:
            raise ConnectionError("peer closed early")
        out += data
    return bytes(out)


def _sink(conn: socket.socket) -> dict[str, object]:
    times: list[float] = []
    cum: list[int] = []
    total = 0
    buf = bytearray(CHUNK)
    reset = False
    while True:
        try:
            n = conn.recv_into(buf)
        except ConnectionResetError:  # a sender that aborts (send --abort) ends the measurement there
            reset = True
            break
        if not n:
            break
        now = round(time.time(), 3)
        total += n
        if times and times[-1] == now:
            cum[-1] = total
        else:
            times.append(now)
            cum.append(total)
    if not reset:
        conn.sendall(json.dumps({"bytes": total}).encode() + b"\n")
    return {"kind": "sink", "bytes": total, "reset": reset, "t": times, "cum": cum}


def _echo(conn: socket.socket) -> dict[str, object]:
    total = 0
    while data := conn.recv(CHUNK):
        conn.sendall(data)
        total += len(data)
    return {"kind": "echo", "bytes": total}


def serve(host: str, port: int) -> None:
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((host, port))
    srv.listen(8)
    print("ready", flush=True)
    while True:
        conn, _ = srv.accept()
        with conn:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            kind = _recv_exact(conn, 1)
            result = _sink(conn) if kind == b"S" else _echo(conn)
        print(json.dumps(result), flush=True)


def send(host: str, port: int, seconds: float, nbytes: int | None, abort: bool) -> None:
    conn = socket.create_connection((host, port), timeout=60)
    payload = b"\0" * CHUNK
    sent = 0
    t_first = time.time()
    conn.sendall(b"S")
    if nbytes is not None:
        while sent < nbytes:
            step = min(CHUNK, nbytes - sent)
            conn.sendall(payload[:step])
            sent += step
    else:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            conn.sendall(payload)
            sent += CHUNK
    if abort:  # reset: what is still queued is dropped, and nobody waits for a slow link to drain it
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()
        print(json.dumps({"sent": sent, "t_first": t_first, "aborted": True}), flush=True)
        return
    conn.shutdown(socket.SHUT_WR)
    answer = b""
    while not answer.endswith(b"\n"):
        data = conn.recv(4096)
        if not data:
            break
        answer += data
    t_done = time.time()
    conn.close()
    received = json.loads(answer)["bytes"] if answer else -1
    result = {"sent": sent, "received": received, "t_first": t_first, "t_done": t_done, "elapsed_s": t_done - t_first}
    print(json.dumps(result), flush=True)


def ping(host: str, port: int, count: int, size: int) -> None:
    conn = socket.create_connection((host, port), timeout=30)
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    conn.sendall(b"E")
    message = b"p" * size
    rtts = []
    for _ in range(count):
        t0 = time.perf_counter()
        conn.sendall(message)
        _recv_exact(conn, size)
        rtts.append(1000 * (time.perf_counter() - t0))
        time.sleep(0.02)
    conn.close()
    print(json.dumps({"rtts_ms": rtts}), flush=True)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name in ("serve", "send", "ping"):
        p = sub.add_parser(name)
        p.add_argument("--host", required=True)
        p.add_argument("--port", type=int, required=True)
        if name == "send":
            p.add_argument("--seconds", type=float, default=3.0)
            p.add_argument("--bytes", type=int, default=None)
            p.add_argument("--abort", action="store_true", help="reset the connection after --seconds")
        if name == "ping":
            p.add_argument("--count", type=int, default=10)
            p.add_argument("--size", type=int, default=100)
    a = parser.parse_args(argv)
    if a.cmd == "serve":
        serve(a.host, a.port)
    elif a.cmd == "send":
        send(a.host, a.port, a.seconds, a.bytes, a.abort)
    else:
        ping(a.host, a.port, a.count, a.size)


if __name__ == "__main__":
    main(sys.argv[1:])
