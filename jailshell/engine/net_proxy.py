"""The userland proxy behind a published port: what docker-proxy does.

    python -m jailshell.engine.net_proxy LISTEN_FD LIFELINE_FD JAIL_IP JAIL_PORT

Why a process and not only a DNAT rule: a connection to 127.0.0.1:HOSTPORT
never passes the prerouting hook where DNAT for incoming traffic lives, and
DNAT in the output hook leaves the source at 127.0.0.1, which the kernel
refuses to route out of the loopback (a "martian") unless
net.ipv4.conf.*.route_localnet=1. That sysctl also makes the host accept
packets sent *to* 127.0.0.1 from that interface, so every jail could reach the
host's localhost-only services (kube-proxy's CVE-2020-8558). A proxy needs no
sysctl, holds the port (so a second user gets EADDRINUSE, not a silent
hijack), and works the same on every kernel.

The listening socket is bound by jailshell *before* this process starts, so
a port in use is reported there, synchronously. The lifeline is the read end
of a pipe whose write end jailshell keeps open: one byte means "you are
journaled, start"; end of file means jailshell is gone, and so is the jail, so
the proxy exits instead of holding the port forever.

Standard library only: this starts as a separate interpreter on each publish.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import socket
import sys
import threading

CONNECT_TIMEOUT = 5.0


def _pump(src: socket.socket, dst: socket.socket) -> None:
    """Copy one direction until end of file, then pass the half-close on."""
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


def _relay(client: socket.socket, target: tuple[str, int]) -> None:
    try:
        upstream = socket.create_connection(target, timeout=CONNECT_TIMEOUT)
    except OSError:
        client.close()  # the client sees the connection closed, as with docker-proxy
        return
    upstream.settimeout(None)
    back = threading.Thread(target=_pump, args=(upstream, client), daemon=True)
    back.start()
    _pump(client, upstream)
    back.join()
    client.close()
    upstream.close()


def serve(listener: socket.socket, lifeline: int, target: tuple[str, int]) -> None:
    if os.read(lifeline, 1) != b"g":
        return  # jailshell died before journaling this process
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ)
    sel.register(lifeline, selectors.EVENT_READ)
    while True:
        for key, _ in sel.select():
            if key.fileobj == lifeline:
                return
            try:
                client, _ = listener.accept()
            except OSError:
                continue
            threading.Thread(target=_relay, args=(client, target), daemon=True).start()


def main(argv: list[str]) -> int:
    listen_fd, lifeline, ip, port = int(argv[0]), int(argv[1]), argv[2], int(argv[3])
    listener = socket.socket(fileno=listen_fd)
    serve(listener, lifeline, (ip, port))
    # Daemon threads may still be relaying: leave without waiting for them.
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
