"""Loopback ports for servers that cannot bind port 0 and report it
(nats-server, Prometheus): shared by the benchmark scripts and the
end-to-end tests. Python standard library only."""
import random
import socket

# Ports handed out in this process: servers started together bind theirs
# only after all of them are chosen, so one port must not be given twice.
_GIVEN = set()


def free_port():
    """A loopback port below the ephemeral range (32768 and up on Linux),
    free when asked and not handed out before by this process. A port from
    bind(0), released again, can be taken by any outgoing connection's
    local end before the server it is meant for binds it; ports down here
    are taken only by an explicit bind."""
    start = random.randrange(20_000, 32_000)
    for i in range(12_000):
        port = 20_000 + (start - 20_000 + i) % 12_000
        if port in _GIVEN:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            _GIVEN.add(port)
            return port
    raise RuntimeError("no free loopback port in 20000-31999")
