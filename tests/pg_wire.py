"""Two PostgreSQL peers that misbehave on purpose, on real TCP sockets on 127.0.0.1.

PasswordTrap plays a server that asks for the password in clear (AuthenticationCleartextPassword), as
a hostile host named by a `.env` would, and records every startup and password message it receives:
it proves where a password travels. SilentProxy relays to the suite's server until the client has
logged in (the first ReadyForQuery), then stops relaying while keeping both sockets open: a proxy or
NAT that goes silent after login.
"""

from __future__ import annotations

import select
import socket
import struct
import threading
from pathlib import Path

SSL_REQUEST, GSS_REQUEST = 80877103, 80877104


def _read(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise OSError("closed")
        data += chunk
    return data


def _startup(client: socket.socket) -> bytes:
    """The startup packet, after refusing TLS and GSS requests ('N', as a server without them does)."""
    while True:
        length, code = struct.unpack("!II", _read(client, 8))
        if length == 8 and code in (SSL_REQUEST, GSS_REQUEST):
            client.sendall(b"N")
            continue
        return struct.pack("!II", length, code) + _read(client, length - 8)


class _Listener:
    def __init__(self):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.connections = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def close(self) -> None:
        self.listener.close()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._guarded, args=(client,), daemon=True).start()

    def _guarded(self, client: socket.socket) -> None:
        try:
            self._handle(client)
        except (OSError, struct.error, ValueError):  # ValueError: close() closed a socket the relay selects on
            pass

    def _handle(self, client: socket.socket) -> None:
        raise NotImplementedError


class PasswordTrap(_Listener):
    """Asks every client for its password in clear; `startups` and `passwords` are what arrived."""

    def __init__(self):
        self.startups: list[dict[str, str]] = []
        self.passwords: list[str] = []
        super().__init__()

    def _handle(self, client: socket.socket) -> None:
        with client:
            packet = _startup(client)
            words = packet[8:].split(b"\0")
            self.startups.append({k.decode(): v.decode() for k, v in zip(words[::2], words[1::2]) if k})
            client.sendall(b"R" + struct.pack("!II", 8, 3))  # AuthenticationCleartextPassword
            kind, length = struct.unpack("!cI", _read(client, 5))
            body = _read(client, length - 4)
            if kind == b"p":
                self.passwords.append(body.rstrip(b"\0").decode())
            fields = b"SFATAL\0C28P01\0Mpassword authentication failed (trap)\0\0"
            client.sendall(b"E" + struct.pack("!I", len(fields) + 4) + fields)


class SilentProxy(_Listener):
    """Relays to the suite's server's Unix socket until the first ReadyForQuery, then stays silent."""

    def __init__(self, socket_dir: str, port: int):
        self.backend = str(Path(socket_dir) / f".s.PGSQL.{port}")
        self.silenced = 0
        self._held: list[socket.socket] = []
        super().__init__()

    def _handle(self, client: socket.socket) -> None:
        server = socket.socket(socket.AF_UNIX)
        server.connect(self.backend)
        server.sendall(_startup(client))
        pending = b""
        while True:  # both ways, the server's messages whole, until the client may send a query
            ready, _, _ = select.select([client, server], [], [], 30)
            if not ready:
                return
            if client in ready:
                data = client.recv(65536)
                if not data:
                    return
                server.sendall(data)
            if server in ready:
                data = server.recv(65536)
                if not data:
                    return
                pending += data
                while len(pending) >= 5:
                    kind, length = struct.unpack("!cI", pending[:5])
                    if len(pending) < 1 + length:
                        break
                    client.sendall(pending[:1 + length])
                    pending = pending[1 + length:]
                    if kind == b"Z":  # logged in: from now on nothing goes through
                        self.silenced += 1
                        self._held += [client, server]
                        self._swallow(client)
                        return

    @staticmethod
    def _swallow(client: socket.socket) -> None:
        """Read and drop what the client sends (its kernel ACKs it, as a live proxy's does), never answer."""
        while client.recv(65536):
            pass


class CutProxy(_Listener):
    """Relays every session to the suite's server's Unix socket until cut(): then closes both ends of each at
    once, no error message sent, as a failover (the server gone, its sockets reset) looks to a client."""

    def __init__(self, socket_dir: str, port: int, trigger: bytes | None = None, skip: int = 0):
        self.backend = str(Path(socket_dir) / f".s.PGSQL.{port}")
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self.trigger = trigger  # cut() by itself as a client message holding it arrives (not relayed) ...
        self.skip = skip  # ... after this many such messages were relayed
        super().__init__()

    def cut(self) -> None:
        self.listener.close()
        for pair in self._pairs:
            for sock in pair:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()

    def _handle(self, client: socket.socket) -> None:
        server = socket.socket(socket.AF_UNIX)
        server.connect(self.backend)
        server.sendall(_startup(client))
        self._pairs.append((client, server))
        while True:
            ready, _, _ = select.select([client, server], [], [])
            for source, sink in ((client, server), (server, client)):
                if source in ready:
                    data = source.recv(65536)
                    if not data:
                        return
                    if self.trigger and source is client and self.trigger in data:
                        self.skip -= 1
                        if self.skip < 0:
                            self.cut()
                            return
                    sink.sendall(data)


class _Relay(_Listener):
    """Relays each client to the suite's server's Unix socket; keeps both sockets open until `close()`."""

    def __init__(self, socket_dir: str, port: int):
        self.backend = str(Path(socket_dir) / f".s.PGSQL.{port}")
        self._held: list[socket.socket] = []
        super().__init__()

    def close(self) -> None:
        super().close()
        for sock in self._held:
            sock.close()

    def _server(self, client: socket.socket) -> socket.socket:
        server = socket.socket(socket.AF_UNIX)
        server.connect(self.backend)
        self._held += [client, server]
        return server


class StallProxy(_Relay):
    """Relays to the suite's server's Unix socket until a client message holds `trigger`, then relays nothing
    more either way on that connection while keeping both sockets open: a path gone silent mid-run (a hung
    pooler, a NAT). Other connections (a cancel request, a check) still go through. `close()` drops them all."""

    def __init__(self, socket_dir: str, port: int, trigger: bytes = b"STALLME"):
        self.trigger = trigger
        self.stalled = 0
        super().__init__(socket_dir, port)

    def _handle(self, client: socket.socket) -> None:
        server = self._server(client)
        stalled = False
        while True:
            ready, _, _ = select.select([client, server], [], [])
            for sock in ready:
                data = sock.recv(65536)
                if not data:
                    return
                if sock is client and self.trigger in data and not stalled:
                    stalled, self.stalled = True, self.stalled + 1
                if not stalled:
                    (server if sock is client else client).sendall(data)


CANCEL_REQUEST = 80877102


def _without_options(packet: bytes) -> bytes:
    """A startup packet without its `options` parameter (PgBouncer's ignore_startup_parameters=options)."""
    words = packet[8:].split(b"\0")[:-2]
    pairs = [(k, v) for k, v in zip(words[::2], words[1::2]) if k != b"options"]
    body = packet[4:8] + b"".join(k + b"\0" + v + b"\0" for k, v in pairs) + b"\0"
    return struct.pack("!I", len(body) + 4) + body


TERMINATE = b"X\0\0\0\4"


def _first_row(server: socket.socket, query: str) -> list[str | None]:
    """`query`'s first row (text values), asked on `server` in the simple query protocol."""
    body = query.encode() + b"\0"
    server.sendall(b"Q" + struct.pack("!I", len(body) + 4) + body)
    row: list[str | None] | None = None
    while True:
        kind, length = struct.unpack("!cI", _read(server, 5))
        body = _read(server, length - 4)
        if kind == b"D" and row is None:
            row, at = [], 2
            for _ in range(struct.unpack("!H", body[:2])[0]):
                size = struct.unpack("!i", body[at:at + 4])[0]
                row.append(None if size < 0 else body[at + 4:at + 4 + size].decode())
                at += 4 + max(size, 0)
        if kind == b"Z":
            return row or []


class PoolerProxy(_Relay):
    """Relays to the suite's server's Unix socket as a connection pooler (PgBouncer) does. Every client is handed a
    BackendKeyData pid of the proxy's own (`fake_pid`, else a random number) and its cancel requests are passed on
    with the server's key; with `strip` (bytes), a startup packet holding it loses its `options` (b"": every one). A
    client message holding `trigger` silences that connection, both sockets kept open (as StallProxy). With `after` (a
    query), a client's Terminate is not passed on: once the client left, its server session answers `after` (as a
    transaction-mode pool hands it to the next client), the first row's values appended to `left`."""

    def __init__(self, socket_dir: str, port: int, *, strip: bytes | None = None, fake_pid: int | None = None,
                 trigger: bytes = b"STALLME", after: str | None = None):
        self.strip, self.fake_pid, self.trigger, self.after = strip, fake_pid, trigger, after
        self.left: list[list[str | None]] = []
        self.stripped = self.stalled = 0
        self.real_pids: list[int] = []  # the server's pid of each session, in order; those silenced:
        self.stalled_pids: list[int] = []
        self._keys: dict[bytes, bytes] = {}  # the client's (pid, key) -> the server's
        super().__init__(socket_dir, port)

    def _handle(self, client: socket.socket) -> None:
        import random

        server = self._server(client)
        packet = _startup(client)
        if struct.unpack("!I", packet[4:8])[0] == CANCEL_REQUEST:
            server.sendall(packet[:8] + self._keys.get(packet[8:16], packet[8:16]))
            return
        if self.strip is not None and self.strip in packet:
            packet, self.stripped = _without_options(packet), self.stripped + 1
        server.sendall(packet)
        pending, logged_in, stalled, own = b"", False, False, None
        while True:
            ready, _, _ = select.select([client, server], [], [])
            for sock in ready:
                data = sock.recv(65536)
                if self.after and sock is client and data.endswith(TERMINATE):
                    data = data[:-len(TERMINATE)]
                if not data:
                    if self.after and sock is client:
                        self.left.append(_first_row(server, self.after))
                    return
                if sock is client and self.trigger in data and not stalled:
                    stalled, self.stalled = True, self.stalled + 1
                    self.stalled_pids.append(own)
                if stalled:
                    continue
                if sock is client or logged_in:
                    (server if sock is client else client).sendall(data)
                    continue
                pending += data
                while len(pending) >= 5 and len(pending) >= 1 + struct.unpack("!I", pending[1:5])[0]:
                    size = 1 + struct.unpack("!I", pending[1:5])[0]
                    message, pending = pending[:size], pending[size:]
                    if message[:1] == b"K":  # BackendKeyData: the pooler's own pid for this client
                        real = message[5:13]
                        own = struct.unpack("!I", real[:4])[0]
                        self.real_pids.append(own)
                        fake = struct.pack("!I", self.fake_pid or random.randint(100000, 2**31 - 1)) + real[4:]
                        self._keys[fake] = real
                        message = message[:5] + fake
                    client.sendall(message)
                    logged_in = logged_in or message[:1] == b"Z"
                if logged_in and pending:
                    client.sendall(pending)
                    pending = b""


class RefusingServer(_Listener):
    """Answers every startup with one ErrorResponse of `fields` (e.g. {"S": "FATAL", "M": ..., "H": ...}), as a
    server refusing the login does (or a hostile one, whose message and hint may hold line breaks)."""

    def __init__(self, fields: dict[str, str]):
        self.fields = b"".join(k.encode() + v.encode() + b"\0" for k, v in fields.items()) + b"\0"
        super().__init__()

    def _handle(self, client: socket.socket) -> None:
        with client:
            _startup(client)
            client.sendall(b"E" + struct.pack("!I", len(self.fields) + 4) + self.fields)


class TxPool(_Listener):
    """A transaction-mode pool (model, attack 23k) that, unlike PgBouncer 1.18, forwards each client's startup
    packet, `options` included, when it opens a server session: every server session took the runner's settings
    from its own startup packet (source 'client'), yet each transaction of a client runs on whichever server session
    is idle, released at each ReadyForQuery 'I'. `size` sessions per startup packet are opened on the first client's
    login and handed out in turn (so a client's next transaction runs on another one), pooled by user, database and
`options`, as the attack's model. No client authentication."""

    def __init__(self, socket_dir: str, port: int, size: int = 2):
        self.backend, self.size = str(Path(socket_dir) / f".s.PGSQL.{port}"), size
        self.sessions: dict[bytes, list[tuple[socket.socket, int, list[bytes]]]] = {}
        self.every: list[tuple[socket.socket, int, list[bytes]]] = []
        self.packets: dict[bytes, bytes] = {}
        self._free = threading.Condition()
        super().__init__()

    def close(self) -> None:
        super().close()
        for sock, _, _ in self.every:
            sock.close()

    def on_each(self, query: str) -> list[list[str | None]]:
        """`query`'s first row on each idle server session (as the pool's next clients would see them)."""
        with self._free:
            return [_first_row(sock, query) for sock, _, _ in self.every]

    def _open(self, packet: bytes) -> tuple[socket.socket, int, list[bytes]]:
        server = socket.socket(socket.AF_UNIX)
        server.connect(self.backend)
        server.sendall(packet)
        status, pid = [], 0
        while True:
            kind, length = struct.unpack("!cI", _read(server, 5))
            body = _read(server, length - 4)
            if kind == b"S":
                status.append(kind + struct.pack("!I", length) + body)
            elif kind == b"K":
                pid = struct.unpack("!I", body[:4])[0]
            elif kind == b"E":
                raise OSError(body)
            elif kind == b"Z":
                return server, pid, status

    def _take(self, packet: bytes):
        with self._free:
            if packet not in self.sessions:
                self.sessions[packet] = [self._open(packet) for _ in range(self.size)]
                self.every += self.sessions[packet]
            while not self.sessions[packet]:
                self._free.wait()
            return self.sessions[packet].pop(0)

    def _give(self, packet: bytes, session) -> None:
        with self._free:
            self.sessions[packet].append(session)
            self._free.notify()

    def _handle(self, client: socket.socket) -> None:
        packet = _startup(client)
        if struct.unpack("!I", packet[4:8])[0] == CANCEL_REQUEST:
            return client.close()  # (dropped, as many pools do)
        words = packet[8:].split(b"\0")
        params = dict(zip(words[0:-2:2], words[1:-2:2]))
        key = params.get(b"user", b"") + b"\0" + params.get(b"database", b"") + b"\0" + params.get(b"options", b"")
        self.packets.setdefault(key, packet)  # (the first client's: as the pool opens its sessions with)
        packet = self.packets[key]
        first = self._take(packet)
        client.sendall(b"R" + struct.pack("!II", 8, 0) + b"".join(first[2])
                       + b"K" + struct.pack("!III", 12, 4242, 4242) + b"Z" + struct.pack("!I", 5) + b"I")
        self._give(packet, first)
        session = None
        try:
            while True:
                kind, length = struct.unpack("!cI", _read(client, 5))
                body = _read(client, length - 4)
                if kind == b"X":
                    return
                session = session or self._take(packet)
                session[0].sendall(kind + struct.pack("!I", length) + body)
                if kind not in (b"Q", b"S", b"H"):
                    continue
                while True:
                    answer, size = struct.unpack("!cI", _read(session[0], 5))
                    reply = _read(session[0], size - 4)
                    client.sendall(answer + struct.pack("!I", size) + reply)
                    if answer == b"Z":
                        break
                if reply == b"I":
                    self._give(packet, session)
                    session = None
        finally:
            if session is not None:
                self._give(packet, session)
            client.close()
