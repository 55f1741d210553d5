"""A TLS front for the suite's PostgreSQL, whose wheel is built without OpenSSL.

It speaks the start of PostgreSQL's protocol itself: it reads the client's SSLRequest, answers
'S' and does the TLS handshake with a certificate from a CA made here (or answers 'N', as a server
without TLS does), then relays the rest, byte for byte, to the real server's Unix socket. So libpq's
real certificate and host-name checks run against a real server.
"""

from __future__ import annotations

import datetime
import ipaddress
import select
import socket
import ssl
import struct
import threading
from dataclasses import dataclass
from pathlib import Path

SSL_REQUEST = 80877103


@dataclass
class Pki:
    ca: Path  # the CA certificate (the bundle a client trusts)
    cert: Path
    key: Path


def make_pki(folder: Path, names: list[str], ca_name: str = "hcm test CA") -> Pki:
    """A CA and a server certificate for `names` (DNS names or IP addresses), as PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ca_name)])
    ca_cert = (x509.CertificateBuilder().subject_name(ca_subject).issuer_name(ca_subject)
               .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                            content_commitment=False, key_encipherment=False, data_encipherment=False,
                                            key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
               .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    alt = []
    for name in names:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alt.append(x509.DNSName(name))
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(ca_subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(alt), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pki = Pki(folder / "ca.pem", folder / "server.pem", folder / "server.key")
    pki.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    pki.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pki.key.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    return pki


class TlsFront:
    """Listens on address:port (127.0.0.1 unless told); `pki=None` plays a server without TLS."""

    def __init__(self, socket_dir: str, port: int, pki: Pki | None, address: str = "127.0.0.1"):
        self.backend = str(Path(socket_dir) / f".s.PGSQL.{port}")
        self.context = None
        if pki:
            self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.context.load_cert_chain(pki.cert, pki.key)
        self.listener = socket.create_server((address, 0))
        self.port = self.listener.getsockname()[1]
        self.handshakes = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def close(self) -> None:
        self.listener.close()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(client,), daemon=True).start()

    def _handle(self, client: socket.socket) -> None:
        try:
            length, code = struct.unpack("!II", _read(client, 8))
            if length == 8 and code == SSL_REQUEST:
                if self.context is None:
                    client.sendall(b"N")
                else:
                    client.sendall(b"S")
                    client = self.context.wrap_socket(client, server_side=True)
                    self.handshakes += 1
                first = b""
            else:  # a client that did not ask for TLS: pass its startup packet on
                first = struct.pack("!II", length, code)
            server = socket.socket(socket.AF_UNIX)
            server.connect(self.backend)
            server.sendall(first)
        except (OSError, ssl.SSLError, struct.error):
            client.close()
            return
        _relay(client, server)


def _read(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise OSError("closed")
        data += chunk
    return data


def _relay(a: socket.socket, b: socket.socket) -> None:
    """Both directions in one thread: an SSL socket must not be read and written from two threads."""
    try:
        while True:
            ready = [s for s in (a, b) if isinstance(s, ssl.SSLSocket) and s.pending()]
            if not ready:
                ready, _, _ = select.select([a, b], [], [], 60)
                if not ready:
                    return
            for sock in ready:
                data = sock.recv(65536)
                if not data:
                    return
                (b if sock is a else a).sendall(data)
    except (OSError, ssl.SSLError):
        pass
    finally:
        for sock in (a, b):
            try:
                sock.close()
            except OSError:
                pass


class PlainTlsFront(TlsFront):
    """TLS from the first byte, relayed to a TCP port (a MongoDB server without TLS: the suite's FerretDB)."""

    def __init__(self, port: int, pki: Pki):
        self.backend_port = port
        super().__init__("", 0, pki)

    def _handle(self, client: socket.socket) -> None:
        try:
            client = self.context.wrap_socket(client, server_side=True)
            self.handshakes += 1
            server = socket.create_connection(("127.0.0.1", self.backend_port))
        except (OSError, ssl.SSLError):
            client.close()
            return
        _relay(client, server)
