"""What a patch's processes leave behind: processes started in a session of their own (a daemon) escape the kill of
the patch's process group, and would outlive the run (a dry run's sealed ones too, past --patch-timeout).

While a patch runs, the runner is a child subreaper (Linux `PR_SET_CHILD_SUBREAPER`): whatever the patch's processes
orphan is re-parented to the runner instead of init. While it runs, a thread reaps every such orphan that has exited
(a zombie holds a pid: a patch that forks and lets the parent exit, or runs `cmd &` per document, would exhaust the
host's pid space before the patch ends); the patch's own process is left to its Popen. `Orphans.end()`, once the
patch's own process is dead, stops (SIGSTOP) every process below each child of the runner that was not there before
the patch, each before its own children are read, so that none can start another meanwhile; then SIGKILLs them all
and reaps what comes back to the runner, and looks again until none is left: a chain of nested daemons of any depth
ends in one pass. The runner starts nothing else while a patch runs, so every new child then is the patch's.
Elsewhere (not Linux) nothing is done, and the docs say so. A runner killed by SIGKILL cannot do this: its orphans
go to init.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
from typing import Iterator

from migrator import output

PR_SET_CHILD_SUBREAPER = 36
REAP_EVERY = 0.02  # seconds between two looks for exited orphans: a fast forker leaves a few dozen zombies at most
ENDING_PASSES = 100  # end()'s kill-and-reap passes at most: each ends a generation; a process it cannot end is said
_said_no_proc = False


def _prctl(value: int) -> bool:
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, value, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def children(pid: int | None = None) -> set[int]:
    """A process's children (this one's by default), from /proc/PID/task/*/children (every thread's), else from
    every process's stat."""
    where = pid or "self"  # not os.getpid(): as PID 1 of a namespace without its /proc, /proc/1 is the host's init
    if not os.path.exists("/proc/thread-self/children"):  # a kernel without CONFIG_PROC_CHILDREN
        return _scanned(pid or int(os.readlink("/proc/self")))
    found = set()
    try:
        tasks = os.listdir(f"/proc/{where}/task")
    except OSError:
        return found  # it ended meanwhile
    for task in tasks:
        try:
            with open(f"/proc/{where}/task/{task}/children", "rb") as f:
                found.update(map(int, f.read().split()))
        except OSError:
            pass  # that thread ended meanwhile
    return found


def _scanned(me: int) -> set[int]:
    """A process's children, from /proc (their parent is the 4th field of stat, after the name in parentheses)."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue  # ended meanwhile
        fields = stat[stat.rfind(b")") + 2:].split()
        if len(fields) > 1 and int(fields[1]) == me:
            found.add(int(entry))
    return found


def _running(pid: int) -> bool:
    """The process exists and has not exited (a zombie waiting for its Popen has)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2:][:1] not in (b"Z", b"X")


class Orphans:
    """Made just before a patch's process starts; end() after it is dead (and reaped)."""

    def __init__(self):
        self.on = sys.platform.startswith("linux") and _proc_is_ours() and _prctl(1)
        self.before = children() if self.on else set()  # the runner's own (a server it started): never touched
        self._stop, self._reaper = threading.Event(), None

    def reap(self, patch_pid: int) -> None:
        """Reap exited orphans from now until end(); `patch_pid`, the patch's own process, is left to its Popen."""
        if self.on:
            known = self.before | {patch_pid}
            self._reaper = threading.Thread(target=self._reap, args=(known, patch_pid), daemon=True, name="hcm-reaper")
            self._reaper.start()

    def _reap(self, known: set[int], patch_pid: int) -> None:
        while not self._stop.wait(REAP_EVERY) and _running(patch_pid):  # never outlives the patch's process: a
            for pid in children() - known:  # child the runner starts after it (mongosh, a test's) is not an orphan
                try:
                    os.waitpid(pid, os.WNOHANG)  # a zombie is reaped; a live one is left as it is
                except ChildProcessError:
                    pass  # reaped by end() meanwhile

    def end(self) -> None:
        if not self.on:
            return
        self._stop.set()
        if self._reaper is not None:
            self._reaper.join()
        try:
            for _ in range(ENDING_PASSES):
                if not (left := children() - self.before):
                    break
                for pid in _stopped_below(left):
                    _signal(pid, signal.SIGKILL)
                for pid in children() - self.before:  # the killed, and what they left: re-parented to the runner
                    _signal(pid, signal.SIGKILL)  # (one that escaped the walk: its children are found next pass)
                    try:
                        os.waitpid(pid, 0)
                    except ChildProcessError:
                        pass  # reaped by someone else meanwhile
            else:
                if left := children() - self.before:
                    pids = " ".join(map(str, sorted(left)))
                    output.note(f"warning: could not end process(es) {pids} that the patch left behind; they may "
                                f"still run: end them (`kill -9 {pids}`)")
        finally:
            _prctl(0)
            self.on = False


def _proc_is_ours() -> bool:
    """/proc shows this process's pid namespace. As PID 1 of a namespace without its own /proc (`unshare --pid`
    alone, some sandboxes) it is the host's: the pids it lists are not the ones kill() and waitpid() take here.
    Then orphans are not looked for, and one line says so."""
    global _said_no_proc
    try:
        if os.readlink("/proc/self") == str(os.getpid()):
            return True
    except OSError:
        pass
    if not _said_no_proc:
        _said_no_proc = True
        output.note("warning: /proc is not this process's (a PID namespace without its own /proc mount): a process "
                    "a patch detaches (a daemon) is not ended with it; mount one (`unshare --pid --fork --mount-proc`)")
    return False


@contextlib.contextmanager
def uninterrupted() -> Iterator[None]:
    """The block (killing a patch's processes and reaping them) finishes whatever SIGTERM/SIGINT comes meanwhile: a
    second one raised in its middle left the patch's daemons alive and writing after the runner exited. The first
    that came is delivered once after the block, to the handlers the block found (only the main thread has any)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    came: list[int] = []
    saved = {signum: signal.signal(signum, lambda signum, _frame: came.append(signum))
             for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)
        if came:
            signal.raise_signal(came[0])


def _stopped_below(top: set[int]) -> list[int]:
    """`top` and every process below them, each stopped (SIGSTOP) before its children are read: a fork it had not
    finished by then fails (the kernel restarts it once the signal is handled), so none is missed and none can start
    another while the rest are found."""
    found, todo = [], list(top)
    while todo:
        pid = todo.pop()
        if _signal(pid, signal.SIGSTOP):
            found.append(pid)
            todo.extend(children(pid))
    return found


def _signal(pid: int, signum: int) -> bool:
    try:
        os.kill(pid, signum)
        return True
    except ProcessLookupError:
        return False  # ended meanwhile
