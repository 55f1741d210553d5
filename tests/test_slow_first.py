"""The slow-first order (conftest): tests/slow_tests.json names only tests that exist, so a renamed or re-parametrised
slow test is not silently left to start late (a 25 s test begun in the run's last minute is the run's tail)."""

from __future__ import annotations

import json

from conftest import DESELECTED, SLOW_FIRST, SLOW_TESTS, last_durations


def test_every_test_the_slow_list_names_exists(request):
    listed = json.loads(SLOW_TESTS.read_text())
    collected = {item.nodeid for item in request.session.items} | DESELECTED
    files = {nodeid.split("::")[0] for nodeid in collected}
    stale = [nodeid for nodeid in listed if nodeid.split("::")[0] in files and nodeid not in collected]
    assert stale == [], f"tests/slow_tests.json names tests that are not collected (renamed?): {stale}"
    gone = [nodeid for nodeid in listed if not (request.config.rootpath / nodeid.split("::")[0]).is_file()]
    assert gone == [], f"tests/slow_tests.json names files that do not exist: {gone}"
    assert all(seconds >= SLOW_FIRST for seconds in listed.values()), "entries below SLOW_FIRST start nothing first"


def test_the_slow_tests_of_this_session_are_started_first_longest_first(request):
    last = last_durations(request.config)
    order = [last.get(item.nodeid, 0.0) for item in request.session.items]
    slow = [seconds for seconds in order if seconds >= SLOW_FIRST]
    assert order[:len(slow)] == sorted(slow, reverse=True), "a slow test is collected after a quick one"
