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
