"""How long output.scrub takes on one long line (a patch's output, a server's message): it must grow with the
line's length, not its square (issue 20: a 100 KB run of letters took 23 s, a 20 MB line hours, holding the GIL).

    .venv/bin/python bench/scrub.py
"""

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from migrator import output  # noqa: E402

LINES = {"letters and digits": "a1", "one letter": "x", "scheme characters": "ab.c+", "digit first": "9a"}

if __name__ == "__main__":
    print("| line | 100 KB | 1 MB | 20 MB | 20 MB / 100 KB |")
    print("|---|---|---|---|---|")
    for name, unit in LINES.items():
        seconds = []
        for size in (100_000, 1_000_000, 20_000_000):
            line = unit * (size // len(unit)) + " postgresql://u:pw@h/d"
            started = time.perf_counter()
            assert output.scrub(line).endswith("postgresql://u:***@h/d")
            seconds.append(time.perf_counter() - started)
        print(f"| {name} | {seconds[0]:.3f} s | {seconds[1]:.3f} s | {seconds[2]:.3f} s | {seconds[2] / seconds[0]:.0f}x |")
