"""The pymongo client, with bounded timeouts and every connection failure as one line."""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

from migrator import output
from migrator.errors import USAGE, MigratorError, words
from migrator.targets import MongoTarget


@contextmanager
def connect(target: MongoTarget) -> Iterator:
    """The target's database, after a ping, so that a wrong host fails here and names it."""
    import pymongo
    from pymongo import errors

    client = None
    try:
        client = pymongo.MongoClient(target.uri, **target.client_options())
        client.admin.command("ping")
    except (errors.ConfigurationError, errors.InvalidURI, ValueError) as exc:
        raise MigratorError(f"MongoDB URL ({target.sources['url']}): {exc}", USAGE)
    except errors.ServerSelectionTimeoutError:
        raise MigratorError(
            f"cannot reach MongoDB at {target.hosts} within {target.timeout:g} s; check the host and port, "
            "the network or security group, and TLS (--ca-bundle)"
        )
    except errors.OperationFailure as exc:
        if exc.code == 18:  # the server's words tell a wrong password from a mechanism it lacks
            said = output.scrub(str((exc.details or {}).get("errmsg") or exc)).replace("\n", " ")
            hint = ("; FerretDB takes authMechanism=PLAIN (add it to the URL)" if "mechanism" in said.lower()
                    else "; check the user and password")
            raise MigratorError(f"MongoDB at {target.where}: authentication failed ({said}){hint} "
                                f"({target.sources['url']})")
        raise MigratorError(f"MongoDB at {target.where}: {exc.details.get('errmsg', exc) if exc.details else exc}")
    except errors.PyMongoError as exc:
        raise MigratorError(f"MongoDB at {target.where}: {exc}")
    try:
        yield client[target.database]
    except errors.PyMongoError as exc:  # the server went away, a permission, ...: still one line
        raise MigratorError(f"MongoDB at {target.where}: {words(exc)}") from exc
    finally:
        client.close()


def servers(target: MongoTarget, client=None) -> set[tuple[str, int]]:
    """The target's servers (host, port), for a dry run's seal: the URI's hosts (an SRV URI's looked up now) and
    the members the runner's client found (a replica set's other members may have other names and ports)."""
    from pymongo.uri_parser import parse_uri

    found = set(parse_uri(target.uri)["nodelist"])
    topology = getattr(client, "topology_description", None)  # None: no client, or mongomock's (tests)
    if topology is not None:
        found |= set(topology.server_descriptions())
    return found


def ca_files(target: MongoTarget) -> list[str]:
    """The CA bundles the target's connections read (--ca-bundle / CA_BUNDLE, a tlsCAFile in the URL), absolute:
    a sealed patch may read them (of /etc it reads only the system's certificates)."""
    found = [target.ca_file, target.parsed.param("tlsCAFile")]
    return [os.path.abspath(path) for path in found if path]


def ports(target: MongoTarget, client=None) -> set[int]:
    """The TCP ports of the target's servers (Landlock filters ports, not hosts)."""
    return {port for _host, port in servers(target, client)}
