"""The dry-run seal's escapes found by issue 20's second hostile pass (attack20c), each closed: a Unix socket by path
(a local PostgreSQL that trusts local users), root's capabilities, UDP and raw/netlink sockets, and /etc's or the
patch folder's secrets. Real processes on FerretDB, a real PostgreSQL socket, mongosh where it is installed."""

from __future__ import annotations

import contextlib
import os
import socket

import pytest

from conftest import needs_mongosh
from test_mongo_child import _folder, real  # noqa: F401 (a fixture)

PROBES = '''import ctypes, errno, fcntl, os, socket, struct

libc = ctypes.CDLL(None, use_errno=True)

def probe(name, act):
    try:
        said = act()
        if isinstance(said, int) and said < 0:  # a libc call: its errno
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
        print(f"PROBE {{name}}: DID")
    except OSError as exc:
        print(f"PROBE {{name}}: {{errno.errorcode.get(exc.errno, exc.errno)}}")

{body}
'''

SOCKETS = '''
def run(db, dry_run):
    def unix():
        with socket.socket(socket.AF_UNIX) as s:
            s.connect({pg_socket!r})

    def postgres():
        import psycopg2  # the local server trusts local users: superuser, COPY TO PROGRAM, pg_read_file
        conn = psycopg2.connect(dbname="postgres", user="postgres", host={pg_dir!r}, port={pg_port})
        conn.autocommit = True
        conn.cursor().execute("CREATE TABLE written_by_a_dry_run (x text)")

    def pair():
        a, b = socket.socketpair()  # an unnamed pair reaches no path: kept (libuv's child stdio uses it)
        a.sendall(b"x")
        return 0 if b.recv(1) == b"x" else -1

    def udp():
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(b"sent from a dry run", ("127.0.0.1", {udp_port}))

    probe("unix socket by path", unix)
    try:
        postgres()
        print("PROBE postgres: DID")
    except Exception as exc:
        print("PROBE postgres: refused (" + exc.__class__.__name__ + ")")
    probe("socketpair", pair)
    probe("udp", udp)
    probe("netlink", lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0).close())
    probe("raw icmp", lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP).close())
    probe("sctp", lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM, 132).close())
    return str(db.things.count_documents({{}})) + " things read"  # the server still reachable, by its name (pinned)
'''


def _probes(output: str) -> dict[str, str]:
    return dict(line[len("PROBE "):].split(": ", 1) for line in output.splitlines() if line.startswith("PROBE "))


def _named(real, monkeypatch) -> dict[str, str]:
    """The server's URL by a name only the runner can resolve (here: this test process's getaddrinfo): a sealed
    patch has no DNS, so it connects only through the addresses the runner looked up for it."""
    lookup = socket.getaddrinfo
    monkeypatch.setattr(socket, "getaddrinfo", lambda host, *rest, **kw: lookup(
        "127.0.0.1" if host == PINNED else host, *rest, **kw))
    return {**real.env, "MONGO_URL": real.env["MONGO_URL"].replace("127.0.0.1", PINNED)}


PINNED = "ferretdb.pinned.invalid"


def _sealed():
    from migrator.mongo import seal

    if seal.abi() < 4 or not seal.seccomp_covers():
        pytest.skip(f"needs Landlock ABI 4 (this kernel's: {seal.abi()}) and x86_64 for the seccomp filter")


@contextlib.contextmanager
def sealed_beside_a_socket(pg):
    """A sealed dry run is possible here and the suite's PostgreSQL has a Unix socket: a UDP listener a patch
    must not reach (nothing may arrive in 0.5 s)."""
    _sealed()
    if not pg.host.startswith("/"):
        pytest.skip("needs the suite's own PostgreSQL (a Unix socket)")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.settimeout(0.5)
        yield listener


def test_a_dry_run_patch_cannot_reach_a_local_postgresql_socket_or_send_udp(cli, real, pg, tmp_path, monkeypatch):
    with sealed_beside_a_socket(pg) as listener:
        body = SOCKETS.format(pg_socket=f"{pg.host}/.s.PGSQL.{pg.port}", pg_dir=pg.host, pg_port=pg.port,
                              udp_port=listener.getsockname()[1])
        folder = _folder(tmp_path, "0001_sockets.py", PROBES.format(body=body))
        env = _named(real, monkeypatch)
        real.db.things.insert_one({"kept": True})
        result = cli("mongo", "apply", "--mongo-dir", folder, env=env)
        with pytest.raises(socket.timeout):
            listener.recvfrom(100)  # nothing arrived
    assert result.exit_code == 0 and "1 things read" in result.stdout, result.output
    probes = _probes(result.stdout)
    assert probes == {"unix socket by path": "EPERM", "postgres": "refused (OperationalError)", "socketpair": "DID",
                      "udp": "EPERM", "netlink": "EPERM", "raw icmp": "EPERM", "sctp": "EPERM"}, result.stdout
    with pg.connect() as conn, conn.cursor() as cur:
        cur.execute("SELECT to_regclass('written_by_a_dry_run')")
        assert cur.fetchone() == (None,)


POWERS = '''
FS_IOC_GETFLAGS, FS_IOC_SETFLAGS = 0x80086601, 0x40086602

def run(db, dry_run):
    header, data = struct.pack("Ii", 0x20080522, 0), ctypes.create_string_buffer(24)
    libc.syscall(125, header, data)  # capget
    print("CAPS " + data.raw.hex())
    print("BOUNDING " + str(sum(libc.prctl(23, cap, 0, 0, 0) == 1 for cap in range(64))))  # PR_CAPBSET_READ
    name = socket.gethostname().encode()
    probe("sethostname", lambda: libc.sethostname(name, len(name)))  # the same name: harmless either way
    probe("nice -5", lambda: os.setpriority(os.PRIO_PROCESS, 0, -5))
    unchanged = struct.pack("QQQQ", 0, 0, 0, 0)  # mount_setattr that sets nothing: refused, not harmless
    probe("mount_setattr", lambda: libc.syscall(442, -100, os.path.dirname(__file__).encode(), 0, unchanged, 32))
    fd = os.open(__file__, os.O_RDONLY)
    flags = bytearray(4)
    fcntl.ioctl(fd, FS_IOC_GETFLAGS, flags)
    probe("FS_IOC_SETFLAGS", lambda: fcntl.ioctl(fd, FS_IOC_SETFLAGS, bytes(flags)))  # its own flags back
    probe("FITHAW", lambda: fcntl.ioctl(fd, 0xC0045878, 0))  # thawing a filesystem not frozen: EINVAL as root
    attr = ctypes.create_string_buffer(24)
    if libc.syscall(468, -100, __file__.encode(), attr, 24, 0) == 0:  # file_getattr (Linux 6.17)
        probe("file_setattr", lambda: libc.syscall(469, -100, __file__.encode(), attr, 24, 0))
    return "probed"
'''


def test_a_dry_run_patch_run_by_root_has_no_capability_left(cli, real, tmp_path):
    _sealed()
    if os.geteuid() != 0:
        pytest.skip("root's capabilities are the point: the suite runs as root in CI and here")
    folder = _folder(tmp_path, "0001_powers.py", PROBES.format(body=POWERS))
    result = cli("mongo", "apply", "--mongo-dir", folder, env=real.env)
    assert result.exit_code == 0 and "probed" in result.stdout, result.output
    assert "CAPS " + "0" * 48 in result.stdout and "BOUNDING 0" in result.stdout, result.stdout
    probes = _probes(result.stdout)
    assert {probes.pop("sethostname"), probes.pop("nice -5")} == {"EPERM", "EACCES"}, result.stdout
    assert set(probes.values()) == {"EPERM"}, result.stdout
    assert {"mount_setattr", "FS_IOC_SETFLAGS", "FITHAW"} <= set(probes), result.stdout
    # the same patch, applied: a real run keeps the runner's powers (nothing changed by the probes)
    run = cli("mongo", "apply", "--run", "--mongo-dir", folder, env=real.env)
    assert run.exit_code == 0 and "CAPS " + "0" * 48 not in run.stdout, run.output


READS = '''
def run(db, dry_run):
    for path in ("/etc/shadow", "/etc/ssh", "/etc/ssl/private", "/etc/gshadow", "/etc/hosts", "/etc/passwd"):
        probe(path, lambda: os.listdir(path) if os.path.isdir(path) else open(path, "rb").read(1))
    return "read"
'''


def test_a_dry_run_patch_reads_of_etc_only_what_the_interpreters_need(cli, real, tmp_path):
    _sealed()
    folder = _folder(tmp_path, "0001_reads.py", PROBES.format(body=READS))
    result = cli("mongo", "apply", "--mongo-dir", folder, env=real.env)
    assert result.exit_code == 0 and "read" in result.stdout, result.output
    probes = _probes(result.stdout)
    assert probes.pop("/etc/hosts") == "DID" and probes.pop("/etc/passwd") == "DID", result.stdout
    present = {p for p in probes if os.path.exists(p)}
    assert present >= {"/etc/shadow"} and {probes[p] for p in present} == {"EACCES"}, result.stdout


@pytest.mark.parametrize("where", ["patch folder", "working folder", "NAME_FILE"])
def test_a_dry_run_refuses_a_patch_folder_that_holds_dotenv_or_a_secret_file(cli, real, workdir, where):
    _sealed()
    folder = workdir if where == "working folder" else workdir / "patches"
    folder.mkdir(exist_ok=True)
    secret = folder / (".env" if where != "NAME_FILE" else "aws-credentials")
    (folder / "0001_reads_it.py").write_text(f"def run(db, dry_run):\n    return open({str(secret)!r}).read()\n")
    secret.write_text("DB_PASSWORD=Dotenv-Secret-9\n")
    env = {**real.env, **({"AWS_SHARED_CREDENTIALS_FILE": str(secret)} if where == "NAME_FILE" else {})}
    result = cli("mongo", "apply", "--mongo-dir", folder, env=env)
    assert result.exit_code == 2 and "Dotenv-Secret-9" not in result.output, result.output
    (line,) = [l for l in result.stderr.splitlines() if l.startswith("error:")]
    assert f"holds {secret}" in line and "move the patches to a folder of their own" in line, line
    assert real.db.applied_patches.count_documents({}) == 0


JS_PROBES = '''
const net = require("net"), os = require("os"), cp = require("child_process"), dgram = require("dgram");
let pending = 2;
const udp = dgram.createSocket("udp4");
let udpSaid = false;
const said = (code) => {{ if (!udpSaid) {{ udpSaid = true; print("PROBE udp: " + code); pending--; }} }};
udp.on("error", (e) => said(e.code));  // a failed implicit bind comes as an event, a failed send to the callback
udp.send("sent from a dry run", {udp_port}, "127.0.0.1", (e) => said(e ? e.code : "DID"));
const s = net.connect({{path: {pg_socket!r}}});
s.on("connect", () => {{ print("PROBE unix socket by path: DID"); s.destroy(); pending--; }});
s.on("error", (e) => {{ print("PROBE unix socket by path: " + e.code); pending--; }});
try {{ os.setPriority(0, -5); print("PROBE nice -5: DID"); }}
catch (e) {{ print("PROBE nice -5: " + ((e.info && e.info.code) || e.code)); }}
print("PROBE child: " + cp.execSync("echo spawned").toString().trim());  // libuv's socketpair for its stdio
print("PROBE things: " + db.things.countDocuments({{}}));  // the server still reachable, by its name
while (pending > 0) sleep(50);
'''


@needs_mongosh
def test_a_dry_run_js_patch_cannot_reach_a_unix_socket_send_udp_or_keep_roots_powers(cli, real, pg, tmp_path,
                                                                                    monkeypatch):
    with sealed_beside_a_socket(pg) as listener:
        folder = _folder(tmp_path, "0001_probes.js", JS_PROBES.format(pg_socket=f"{pg.host}/.s.PGSQL.{pg.port}",
                                                                      udp_port=listener.getsockname()[1]))
        env = _named(real, monkeypatch)
        real.db.things.insert_one({"kept": True})
        result = cli("mongo", "apply", "--mongo-dir", folder, env=env)
        with pytest.raises(socket.timeout):
            listener.recvfrom(100)  # nothing arrived
    assert result.exit_code == 0, result.output
    probes = _probes(result.stdout)
    assert probes["unix socket by path"] == "EPERM" and probes["child"] == "spawned", result.stdout
    assert probes["udp"] == "EPERM" and "PROBE things: 1" in result.stdout, result.stdout
    if os.geteuid() == 0:  # root's power to raise a priority is gone with the others
        assert probes["nice -5"] in ("EACCES", "EPERM"), result.stdout


WITHOUT_LANDLOCK = """
import ctypes, socket, struct, sys
from migrator.mongo import seal

seal.abi = lambda: 0  # as on a kernel without Landlock
assert seal.restrict([], [], [], datagrams=False) is False
libc = ctypes.CDLL(None, use_errno=True)
data = ctypes.create_string_buffer(24)
libc.syscall(125, struct.pack("Ii", 0x20080522, 0), data)
print("CAPS " + data.raw.hex())
for name, family, kind in (("unix", socket.AF_UNIX, socket.SOCK_STREAM), ("udp", socket.AF_INET, socket.SOCK_DGRAM)):
    try:
        socket.socket(family, kind).close()
        print(name + " DID")
    except OSError as exc:
        print(name + " " + str(exc.errno))
"""


def test_without_landlock_a_sealed_process_still_has_no_capability_and_the_socket_filter(tmp_path):
    import subprocess
    import sys

    from conftest import PROJECT_ROOT
    from migrator.mongo import seal

    if not seal.seccomp_covers():
        pytest.skip("the seccomp filter is x86_64 only")
    done = subprocess.run([sys.executable, "-c", WITHOUT_LANDLOCK], cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "unix 1" in done.stdout and "udp 1" in done.stdout, done.stdout  # EPERM
    if os.geteuid() == 0:
        assert "CAPS " + "0" * 48 in done.stdout, done.stdout
