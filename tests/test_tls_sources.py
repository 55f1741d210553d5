"""TLS trust and credential-forwarding settings come from the source that names the server (attack23x 2, 3, 8, and
the gssdelegation note): a `.env` cannot choose the CA that verifies the real environment's server, the operator's
PGSSLMODE is never weakened, a `.env` cannot acknowledge plaintext DocumentDB, nor forward Kerberos credentials."""

import socket

from conftest import one_error_line
from tls_proxy import make_pki


def _remote() -> tuple[str, str]:
    """This machine's own name and address: a host that is not local by name (the runner then requires TLS)."""
    name = socket.gethostname()
    return name, socket.gethostbyname(name)


def test_the_operators_pgsslmode_verify_full_is_never_weakened(cli, pg, db, front, tmp_path):
    """attack23x 2: PGSSLMODE=verify-full (with PGSSLROOTCERT) was overridden by the runner's sslmode=require: a
    certificate the operator's CA issued to another name (wiki.internal) was accepted and the session ran."""
    name, address = _remote()
    operator = make_pki(tmp_path / "pki", ["wiki.internal"], ca_name="operator CA")
    tls = front(operator, address)
    env = {"DATABASE_URL": f"postgresql://{pg.user}@{name}:{tls.port}/{db.name}", "PGSSLMODE": "verify-full",
           "PGSSLROOTCERT": str(operator.ca)}
    line = one_error_line(cli("migrate", env=env))
    assert "does not match" in line, line
    assert db.tables() == set()
    assert f"sslmode=verify-full (PGSSLMODE (environment)): server verified against {operator.ca}" in \
        cli("config", env=env).stdout


def test_a_url_weaker_than_the_operators_pgsslmode_is_refused(cli, workdir):
    """The real environment wins for every setting: a URL (here a .env's) asking for less than PGSSLMODE is a conflict."""
    (workdir / ".env").write_text("DATABASE_URL=postgresql://app:pw@db.example:5432/prod?sslmode=disable\n")
    line = one_error_line(cli("config", env={"PGSSLMODE": "verify-full"}))
    assert "sslmode=disable, weaker than PGSSLMODE=verify-full (environment)" in line, line


def test_require_with_a_root_certificate_says_the_chain_is_checked_not_the_host(cli, pg, db, tmp_path):
    """`config` tells the truth: libpq's require checks the chain when a root certificate is there (as verify-ca)."""
    ca = make_pki(tmp_path / "pki", ["x"]).ca
    config = cli("config", env={"DATABASE_URL": "postgresql://app@db.example:5432/prod", "PGSSLROOTCERT": str(ca)})
    assert f"require: encrypted, certificate chain checked against {ca}, host name NOT checked" in config.stdout
    assert "server NOT verified" not in config.stdout


def test_a_dotenv_ca_bundle_does_not_choose_the_ca_of_the_environments_server(cli, pg, db, front, tmp_path, workdir):
    """attack23x 3: the environment names the server and verifies it (PGSSLROOTCERT); the checkout's `.env` said
    CA_BUNDLE=its own CA, whose certificate for the real host name then passed verify-full. Now the .env's bundle is
    ignored (a note says so) and the operator's CA refuses that server."""
    name, address = _remote()
    operator = make_pki(tmp_path / "pki", ["db.operator"], ca_name="operator CA")
    author = make_pki(tmp_path / "author", [name], ca_name="the PR author's CA")
    tls = front(author, address)
    (workdir / ".env").write_text(f"CA_BUNDLE={author.ca}\n")
    env = {"DATABASE_URL": f"postgresql://{pg.user}@{name}:{tls.port}/{db.name}?sslmode=verify-full",
           "PGSSLROOTCERT": str(operator.ca)}
    result = cli("migrate", env=env)
    assert "certificate verify failed" in one_error_line(result) or "verification failed" in result.stderr
    assert "CA_BUNDLE (.env) ignored: the real environment names the server" in result.stderr
    assert db.tables() == set()
    assert str(author.ca) not in cli("config", env=env).stdout


def test_a_dotenv_may_not_acknowledge_plaintext_documentdb(cli, aws, workdir):
    """attack23x 8: the environment's secret says ssl=false (refused without MONGO_ALLOW_PLAINTEXT); a checkout's
    `.env` with MONGO_ALLOW_PLAINTEXT=true lifted the refusal. Only the real environment's counts, and it is named."""
    name = aws("dev/docdb-plain", {"host": "mongo.test", "port": 27017, "username": "app", "password": "Doc-Db-pw-9", "dbname": "hcm",
                                   "ssl": "false"})
    (workdir / ".env").write_text("MONGO_ALLOW_PLAINTEXT=true\n")
    line = one_error_line(cli("config", env={"MONGO_SECRET_NAME": name}))
    assert "a .env's does not count" in line and "Doc-Db-pw-9" not in line
    allowed = cli("config", env={"MONGO_SECRET_NAME": name, "MONGO_ALLOW_PLAINTEXT": "true"})
    assert allowed.exit_code == 0, allowed.output
    assert "warning: INSECURE: MONGO_ALLOW_PLAINTEXT (environment)" in allowed.output


def test_a_dotenv_url_may_not_forward_kerberos_credentials(cli, trap, workdir):
    """The gssdelegation note of attack23x: a `.env` URL with gssdelegation=1 would forward the invoker's Kerberos
    TGT to the host it names. Refused in one line; nothing connects there."""
    (workdir / ".env").write_text(f"DATABASE_URL=postgresql://app@127.0.0.1:{trap.port}/prod?gssdelegation=1\n")
    for command in (("status",), ("config",)):
        line = one_error_line(cli(*command))
        assert "gssdelegation=1" in line and "Kerberos" in line, line
    assert trap.startups == [] and trap.passwords == []


def test_a_dotenv_ca_bundle_does_not_choose_the_ca_of_the_environments_mongo(cli, workdir, tmp_path):
    """attack23x 3 on the Mongo side (the same bundle served both stores): the environment's MONGO_URL is verified
    with the system's CAs, never with a `.env`'s CA_BUNDLE; a `.env` that names the server too may bring its own."""
    ca = make_pki(tmp_path / "author", ["mongo.example"]).ca
    (workdir / ".env").write_text(f"CA_BUNDLE={ca}\n")
    env = {"MONGO_URL": "mongodb://app:pw@mongo.example:27017/?tls=true", "MONGO_DB": "hcm"}
    config = cli("config", env=env)
    assert config.exit_code == 0, config.output
    assert str(ca) not in config.stdout and "verified with the system's CAs" in config.stdout
    assert "CA_BUNDLE (.env) ignored" in config.output
    (workdir / ".env").write_text(f"CA_BUNDLE={ca}\nMONGO_URL=mongodb://app:pw@mongo.example:27017/?tls=true\n")
    assert f"verified with {ca} (CA_BUNDLE (.env))" in cli("config", env={"MONGO_DB": "hcm"}).stdout
