"""The hostile tester's findings against the Mongo side, each as a test (on FerretDB; mongomock without Go)."""

import copy
import os
import threading
from datetime import datetime

import pytest

from conftest import one_error_line
from migrator.mongo.readonly import DryRunWriteError, ReadOnlyDatabase


@pytest.fixture
def view(mongo):
    mongo.db.things.insert_one({"_id": 1})
    return ReadOnlyDatabase(mongo.db)


PRIVATE_ROUTES = {
    "db._database": lambda v: v._database,
    "db._target": lambda v: v._target,
    "collection._collection": lambda v: v.things._collection,
    "collection._target": lambda v: v.things._target,
    "cursor._target": lambda v: v.things.find()._target,
    "vars(db)": lambda v: vars(v)["_target"],
    "db.__dict__": lambda v: v.__dict__,
    "db.__getstate__()": lambda v: v.__getstate__(),
    "db.__reduce_ex__(2)": lambda v: v.__reduce_ex__(2),
    "client._kill_cursors_executor": lambda v: v.client._kill_cursors_executor,
    "client._anything": lambda v: v.client._topology,
    "getattr private": lambda v: getattr(v.things, "_Collection__database"),
}


# Finding 1: private attributes of the views.
@pytest.mark.parametrize("route", list(PRIVATE_ROUTES))
def test_no_private_attribute_of_a_view_reaches_a_real_object(view, mongo, route):
    before = mongo.snapshot()
    with pytest.raises((AttributeError, TypeError, DryRunWriteError)):
        PRIVATE_ROUTES[route](view)
    assert mongo.snapshot() == before


def test_a_copied_view_is_still_a_view(view, mongo):
    before = mongo.snapshot()
    for copied in (copy.copy(view), copy.copy(view.things)):
        with pytest.raises(DryRunWriteError):
            (copied.things if copied.__class__.__name__ == "Database" else copied).insert_one({})
    assert mongo.snapshot() == before


def test_the_client_view_refuses_every_private_attribute():
    import pymongo

    client = pymongo.MongoClient("mongodb://127.0.0.1:9", connect=False, serverSelectionTimeoutMS=200)
    view = ReadOnlyDatabase(client["hcm"])
    for name in ("_kill_cursors_executor", "_run_operation", "_ensure_session", "_topology", "_retryable_write"):
        with pytest.raises(AttributeError):
            getattr(view.client, name)


def write_patch(folder, name, text):
    folder.mkdir(exist_ok=True)
    path = folder / name
    path.write_text(text)
    return path


# Finding 2a and 2d: module-level code runs sealed; every MongoClient class pymongo exposes is refused.
@pytest.mark.parametrize("client", [
    "pymongo.MongoClient", "pymongo.mongo_client.MongoClient",
    "pymongo.synchronous.mongo_client.MongoClient", "pymongo.AsyncMongoClient",
    "pymongo.asynchronous.mongo_client.AsyncMongoClient",
])
def test_module_level_code_is_sealed_and_no_client_class_can_be_built(cli, mongo, tmp_path, client):
    module, _, name = client.rpartition(".")
    folder = tmp_path / "mongo"
    write_patch(folder, "0001_sneaky.py",
                "import os, importlib\n"
                f"SEEN = os.environ.get('MONGO_URL')\n"
                f"CLIENT = getattr(importlib.import_module('{module}'), '{name}')\n"
                "def run(db, dry_run):\n"
                "    print('SEEN', SEEN)\n"
                "    CLIENT('mongodb://mongo.test:27017')\n")
    before = mongo.snapshot()
    result = cli("mongo", "apply", "--mongo-dir", folder, env=mongo.env)
    assert "SEEN None" in result.stdout
    assert "is not allowed in a dry run" in one_error_line(result)
    assert mongo.snapshot() == before


# Finding 2b, 8: a thread the patch leaves running fails the patch, dry run or real.
@pytest.mark.parametrize("run", [False, True])
def test_a_thread_left_running_fails_the_patch(cli, mongo, tmp_path, run):
    folder = tmp_path / "mongo"
    write_patch(folder, "0001_threaded.py",
                "import threading, time\n"
                "def run(db, dry_run):\n"
                "    threading.Thread(target=time.sleep, args=(0.3,), name='late-writer').start()\n"
                "    return 'done'\n")
    result = cli("mongo", "apply", "--mongo-dir", folder, *(["--run"] if run else []), env=mongo.env)
    for thread in threading.enumerate():  # in-process: the seal lifts once the patch's thread ends
        if thread.name in ("late-writer", "hcm-lift-seal"):
            thread.join()
    line = one_error_line(result)
    assert "late-writer" in line and "a patch must finish its work before returning" in line
    if run:
        assert mongo.db.applied_patches.find_one({"patch": "0001_threaded"})["status"] == "failed"


def test_os_exit_in_a_patch_is_a_logged_failure(cli, mongo, tmp_path):
    folder = tmp_path / "mongo"
    write_patch(folder, "0001_exits.py", "import os\ndef run(db, dry_run):\n    os._exit(0)\n")
    result = cli("mongo", "apply", "--mongo-dir", folder, "--run", env=mongo.env)
    assert "os._exit(0)" in one_error_line(result)
    assert mongo.db.applied_patches.find_one({"patch": "0001_exits"})["status"] == "failed"


@pytest.fixture(params=["mongomock", "ferretdb"])
def with_password(request):
    """(Mongo, env whose MONGO_URL has the password Hidden-Pw-77). mongomock ignores credentials; FerretDB on
    PostgreSQL passes them to PostgreSQL (PLAIN), which trusts the suite's local connections: a real server, and
    the patch in a process of its own."""
    if request.param == "mongomock":
        mongo = request.getfixturevalue("mock_mongo")
        yield mongo, {**mongo.env, "MONGO_URL": mongo.url.replace("mongodb://", "mongodb://u:Hidden-Pw-77@")}
        return
    import uuid

    import pymongo

    from conftest import Mongo

    own, pg = request.getfixturevalue("ferret_pg"), request.getfixturevalue("pg")
    name = "hcm_pw_" + uuid.uuid4().hex[:8]
    client = pymongo.MongoClient(own.url, tz_aware=True)
    url = f"mongodb://{pg.user}:Hidden-Pw-77@{own.where}/?authMechanism=PLAIN&authSource=$external"
    yield Mongo(url, name, client[name], own), {"MONGO_URL": url, "MONGO_DB": name}
    client.drop_database(name)
    client.close()


# Finding 4, 15: text from a patch is scrubbed before it is stored or printed, and is one line.
def test_a_password_in_a_patch_error_is_neither_stored_nor_printed(cli, with_password, tmp_path):
    mongo, env = with_password
    folder = tmp_path / "mongo"
    write_patch(folder, "0001_leaky.py",
                "def run(db, dry_run):\n    raise RuntimeError('login failed with Hidden-Pw-77\\nsecond line')\n")
    result = cli("mongo", "apply", "--mongo-dir", folder, "--run", env=env)
    line = one_error_line(result)
    assert "Hidden-Pw-77" not in result.output and "second line" in line
    record = mongo.db.applied_patches.find_one({"patch": "0001_leaky"})
    assert "Hidden-Pw-77" not in record["error"] and "\n" not in record["error"]
    history = cli("mongo", "history", "--mongo-dir", folder, env=env)
    assert "Hidden-Pw-77" not in history.output


# Finding 5: logging set up at import time writes through the masking.
def test_logging_configured_at_import_is_masked(cli, with_password, tmp_path):
    mongo, env = with_password
    folder = tmp_path / "mongo"
    write_patch(folder, "0001_logs.py",
                "import logging, sys\nlogging.basicConfig(level=logging.INFO, force=True)\nlog = logging.getLogger('p')\n"
                "def run(db, dry_run):\n"
                "    log.info('url mongodb://u:Hidden-Pw-77@h/ and Hidden-Pw-77')\n"
                "    sys.__stderr__.write('raw Hidden-Pw-77\\n')\n")
    result = cli("mongo", "apply", "--mongo-dir", folder, env=env)
    assert result.exit_code == 0, result.output
    assert "url mongodb://u:***@h/" in result.stderr
    assert "Hidden-Pw-77" not in result.output


# Finding 9: load failures leave no record and block nothing; helpers beside patches import.
@pytest.mark.parametrize("text, expected", [
    ("def run(db, dry_run:\n", "0001_broken.py:1 cannot be loaded: SyntaxError"),
    ("import no_such_module_xyz\ndef run(db, dry_run):\n    pass\n", "0001_broken.py:1 cannot be loaded: ModuleNotFoundError"),
    ("X = 1\nraise RuntimeError('no config')\n", "0001_broken.py:2 cannot be loaded: RuntimeError: no config"),
    ("X = 1\n", "defines no run(db, dry_run)"),
])
def test_a_patch_that_cannot_load_leaves_no_record(cli, mongo, tmp_path, text, expected):
    folder = tmp_path / "mongo"
    write_patch(folder, "0001_broken.py", text)
    result = cli("mongo", "apply", "--mongo-dir", folder, "--run", env=mongo.env)
    assert result.exit_code == 2 and expected in one_error_line(result)
    assert mongo.db.applied_patches.count_documents({}) == 0
    write_patch(folder, "0001_broken.py", "def run(db, dry_run):\n    return 'fixed'\n")
    assert cli("mongo", "apply", "--mongo-dir", folder, "--run", env=mongo.env).exit_code == 0


def test_a_missing_mongosh_leaves_no_record(cli, mongo, tmp_path):
    folder = tmp_path / "mongo"
    write_patch(folder, "0001_js.js", "patchComment('x');\n")
    result = cli("mongo", "apply", "--mongo-dir", folder, "--run", env={**mongo.env, "MONGOSH": str(tmp_path / "none")})
    assert result.exit_code == 2 and "mongosh not found" in one_error_line(result)
    assert mongo.db.applied_patches.count_documents({}) == 0


def test_a_helper_module_beside_the_patches_imports(cli, mongo, tmp_path):
    folder = tmp_path / "mongo"
    write_patch(folder, "helpers_xyz.py", "def comment():\n    return 'from the helper'\n")
    write_patch(folder, "0001_uses_helper.py", "import helpers_xyz\ndef run(db, dry_run):\n    return helpers_xyz.comment()\n")
    result = cli("mongo", "apply", "--mongo-dir", folder, "--run", env=mongo.env)
    assert result.exit_code == 0, result.output
    assert "from the helper" in result.stdout


# Finding 10, 11: names in any padding select one patch, once.
def test_repeated_and_padded_names_apply_a_patch_once(cli, mongo, tmp_path):
    folder = tmp_path / "mongo"
    write_patch(folder, "0002_two.py", "def run(db, dry_run):\n    db.counter.update_one({'_id': 1}, {'$inc': {'n': 1}}, upsert=True)\n")
    result = cli("mongo", "apply", "0002", "2", "02", "0002_two.py", str(folder / "0002_two.py"), "2_two",
                 "--mongo-dir", folder, "--run", env=mongo.env)
    assert result.exit_code == 0, result.output
    assert mongo.db.counter.find_one({"_id": 1})["n"] == 1
    assert mongo.db.applied_patches.count_documents({"status": "applied"}) == 1


# Finding 12: things that look like patches but are not stop the command.
@pytest.mark.parametrize("make", ["upper", "directory", "dangling", "arabic", "fullwidth", "unreadable"])
def test_a_file_that_looks_like_a_patch_but_is_not_one_stops_the_command(cli, mongo, tmp_path, make):
    folder = tmp_path / "mongo"
    write_patch(folder, "0001_fine.py", "def run(db, dry_run):\n    pass\n")
    name = {"upper": "0003_upper.PY", "directory": "0004_dir.py", "dangling": "0005_dangling.py",
            "arabic": "\u0660\u0660\u0660\u0666_arabic.py", "fullwidth": "\uff10\uff10\uff10\uff17_fullwidth.js",
            "unreadable": "0008_secret.py"}[make]
    path = folder / name
    if make == "directory":
        path.mkdir()
    elif make == "dangling":
        path.symlink_to(folder / "nowhere.py")
    else:
        path.write_text("def run(db, dry_run):\n    pass\n")
        if make == "unreadable":
            if os.geteuid() == 0:
                pytest.skip("root reads every file")
            path.chmod(0)
    result = cli("mongo", "apply", "--mongo-dir", folder, env=mongo.env)
    assert name in one_error_line(result)
    assert result.exit_code == 2


# Findings 13, 14: old record shapes never crash.
@pytest.mark.parametrize("record", [
    {"patch": "0001_fine", "checksum": 12345},
    {"patch": "0009_gone", "checksum": ["a"]},
    {"patch": "0001_fine", "checksum": None, "applied": 17},
    {"patch": "0001_fine", "checksum": {"sha": 1}, "status": None},
])
def test_odd_checksums_do_not_crash(cli, mongo, tmp_path, record):
    folder = tmp_path / "mongo"
    write_patch(folder, "0001_fine.py", "def run(db, dry_run):\n    pass\n")
    mongo.db.applied_patches.insert_one(record)
    for command in (("mongo", "status"), ("mongo", "apply"), ("mongo", "history")):
        result = cli(*command, "--mongo-dir", folder, env=mongo.env)
        assert result.exit_code == 0 and "Traceback" not in result.output, result.output


def test_status_in_another_case_counts_as_applied(cli, mongo, tmp_path):
    folder = tmp_path / "mongo"
    write_patch(folder, "0001_fine.py", "def run(db, dry_run):\n    pass\n")
    mongo.db.applied_patches.insert_one({"patch": "0001_fine", "status": "APPLIED", "applied": datetime(2021, 1, 1)})
    result = cli("mongo", "status", "--mongo-dir", folder, env=mongo.env)
    assert "applied 1x" in result.stdout and "FAILED" not in result.stdout


def test_an_unknown_status_is_named_and_blocks(cli, mongo, tmp_path):
    folder = tmp_path / "mongo"
    write_patch(folder, "0001_fine.py", "def run(db, dry_run):\n    pass\n")
    mongo.db.applied_patches.insert_one({"patch": "0001_fine", "status": "weird", "applied": datetime(2021, 1, 1)})
    result = cli("mongo", "apply", "--mongo-dir", folder, "--run", env=mongo.env)
    line = one_error_line(result)
    assert "status 'weird' (not written by this runner)" in line and "mongo resolve 0001_fine" in line


def test_dates_with_an_offset_are_shown_in_utc(cli, mongo, tmp_path):
    folder = tmp_path / "mongo"
    write_patch(folder, "0001_fine.py", "def run(db, dry_run):\n    pass\n")
    mongo.db.applied_patches.insert_one({"patch": "0001_fine", "applied": "2021-03-04T05:06:07+02:00"})
    result = cli("mongo", "history", "--mongo-dir", folder, env=mongo.env)
    assert "2021-03-04 03:06:07 UTC" in result.stdout


# Finding 16: a patch running now is named as running, with its holder.
def test_status_names_a_patch_that_is_running_now(cli, mongo, tmp_path):
    from migrator.mongo import lock, log

    folder = tmp_path / "mongo"
    write_patch(folder, "0001_fine.py", "def run(db, dry_run):\n    pass\n")
    holder = lock.Lock(mongo.db)
    assert holder.try_take()
    log.begin(mongo.db, __import__("migrator.mongo.patches", fromlist=["x"]).discover(folder)[0], holder.owner)
    result = cli("mongo", "status", "--mongo-dir", folder, env=mongo.env)
    assert "running now on" in result.stdout and f"pid {os.getpid()}" in result.stdout
    assert "UNFINISHED" not in result.stdout and "never finished" not in result.stdout
    holder.release()


# Finding 17: the lost-lock message names only commands that exist.
def test_the_lost_lock_message_names_no_missing_command(mongo):
    from migrator.errors import MigratorError
    from migrator.mongo import lock

    held = lock.Lock(mongo.db)
    assert held.try_take()
    mongo.db[lock.COLLECTION].delete_many({})
    with pytest.raises(MigratorError) as err:
        held.check()
    assert "break-lock" not in str(err.value) and "runner.py mongo status" in str(err.value)
