"""The JSON run log around a Python patch's own output: partial lines flushed, the runner's events never wrapped."""

from __future__ import annotations

import json


def test_patch_partial_lines_are_flushed_and_runner_events_stay_top_level(cli, mongo, tmp_path):
    mongo_dir = tmp_path / "mongo"
    mongo_dir.mkdir()
    (mongo_dir / "0001_chatty.py").write_text(
        "import sys\n\n\ndef run(db, dry_run):\n"
        "    print('whole line')\n    print('no newline at the end', end='')\n"
        "    sys.stderr.write('warning without newline')\n    return 'done'\n")
    result = cli("--log-format", "json", "mongo", "apply", "--run", "--mongo-dir", mongo_dir, env=mongo.env)
    assert result.exit_code == 0, result.output
    stdout = [json.loads(line) for line in result.stdout.splitlines()]
    stderr = [json.loads(line) for line in result.stderr.splitlines()]
    said = [e["message"] for e in stdout + stderr if e["event"] == "patch_output"]
    assert said == ["whole line", "no newline at the end", "warning without newline"], said
    assert not any("{" in message for message in said)  # no event of the runner's glued inside one
    assert any(e["event"] == "result" and "applied 0001_chatty" in e["message"] for e in stdout), stdout
    assert any(e["event"] == "patch_applied" and e["patch"] == "0001_chatty" for e in stderr)


def test_every_event_of_a_tenant_schemas_part_says_its_schema(db, sql_dir):
    from test_progress import add, runner

    add(sql_dir, "0002_slow", "SELECT pg_sleep(5);\n")  # long enough for the watcher thread's progress events
    proc = runner("--log-format", "json", "migrate", "--sql-dir", sql_dir, "--database-url", db.url, "--create-schemas",
                  "--parallel", "2", env={"SCHEMA_NAME": "tenant_a,tenant_b"})
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    events = [json.loads(line) for line in (out + err).splitlines()]
    parts = [e for e in events if e["event"].startswith("migration_") or e["event"] == "progress"
             or e.get("message", "").startswith("[tenant_")]
    assert {e["event"] for e in parts} >= {"migration_started", "migration_applied", "progress"}, events
    for e in parts:
        assert e.get("schema") in ("tenant_a", "tenant_b"), e
        assert not e.get("message", "").startswith("[") or e["message"].startswith(f"[{e['schema']}]"), e
    progress = {e["schema"] for e in parts if e["event"] == "progress"}
    assert progress == {"tenant_a", "tenant_b"}


def test_log_format_env_is_case_insensitive_others_refused_in_one_line_and_verbose_log_events_have_ts(db, sql_dir):
    from test_progress import runner

    proc = runner("-v", "migrate", "--sql-dir", sql_dir, "--database-url", db.url, env={"LOG_FORMAT": "JSON"})
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    events = [json.loads(line) for line in err.splitlines()]  # every line is JSON: the value was taken
    logs = [e for e in events if e["event"] == "log"]
    assert logs and all(e["ts"].endswith("Z") and e["logger"].startswith("yoyo") for e in logs), events
    for value in ("xml", "Jsonl"):
        proc = runner("status", "--database-url", db.url, env={"LOG_FORMAT": value})
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 2 and out == ""
        assert err.splitlines() == [f"error: --log-format (or LOG_FORMAT) '{value}': use one of human, json "
                                    "(see `runner.py --help`)"]
    # `text`, most tools' word for the human format (and what an operator copies), is the human format
    proc = runner("status", "--database-url", db.url, env={"LOG_FORMAT": "Text"})
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert out.startswith("PostgreSQL:") or "applied" in out
    assert not any(line.startswith("{") for line in (out + err).splitlines())
