"""Run one step of the GPU check under a time limit, and leave nothing of it running.

    python benchmarks/run_step.py --timeout S [--grace G] [--log FILE] -- COMMAND [ARG...]

The command runs in a session of its own. When it outlives ``S`` seconds it gets SIGINT (the
trainer saves a checkpoint and stops; ``execute_notebook.py`` shuts its kernel down), and ``G``
seconds later everything still running is killed: every descendant, found in ``/proc`` and
killed with its whole process group. A Jupyter kernel starts in a session of its own and a
``timeout`` that signals the step's process group never reaches it; this finds it by parenthood
instead, and, being a child subreaper (Linux's ``PR_SET_CHILD_SUBREAPER``), it inherits whatever
the step leaves orphaned, so a kernel whose client died first is still found. Leftovers of a
step that ended on its own are killed the same way.

Exit status: the command's; 124 when it timed out; 130 when this runner was interrupted.
Only the standard library: it runs on a bare machine before anything is installed.
"""
from __future__ import annotations

import argparse
import ctypes
import os
import signal
import subprocess
import sys
import time

PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> bool:
    """Make orphaned descendants this process's children (Linux); False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def descendants(root: int) -> list[int]:
    """Live (non-zombie) descendants of ``root``, from ``/proc``; [] where there is no /proc."""
    children: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z":
            children.setdefault(int(fields[1]), []).append(int(entry))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def reap() -> None:
    """Collect the exit status of finished children (orphans adopted as a subreaper included)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def signal_all(pids: list[int], sig: int) -> None:
    """Send ``sig`` to each pid and to its process group (never to this runner's own group)."""
    own_group = os.getpgrp()
    groups = set()
    for pid in pids:
        try:
            groups.add(os.getpgid(pid))
        except ProcessLookupError:
            pass
    for group in groups - {own_group}:
        try:
            os.killpg(group, sig)
        except (ProcessLookupError, PermissionError):
            pass
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def kill_everything(proc: subprocess.Popen, note) -> None:
    """SIGKILL the command and all that descends from this runner, until nothing is left."""
    killed: set[int] = set()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        pids = descendants(os.getpid())
        if proc.poll() is None:
            pids.append(proc.pid)
        if not pids:
            break
        killed.update(pids)
        signal_all(pids, signal.SIGKILL)
        time.sleep(0.1)
        reap()
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()
    reap()
    left = descendants(os.getpid())
    if killed:
        note(f"killed {len(killed)} process(es) of this step: {' '.join(map(str, sorted(killed)))}")
    if left:
        note(f"could not kill: {' '.join(map(str, left))}")


def run(command: list[str], timeout: float, grace: float, log) -> int:
    def note(message: str) -> None:
        print(f"run_step: {message}", file=log, flush=True)

    subreaper = become_subreaper()
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True)

    def interrupted(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    status = None
    try:
        try:
            status = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            note(f"timed out after {timeout:g} s: SIGINT to the step and its descendants, "
                 f"everything left killed {grace:g} s later")
            signal_all([proc.pid, *descendants(os.getpid())], signal.SIGINT)
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
            status = 124
    except KeyboardInterrupt:
        note("interrupted: killing the step")
        status = 130
    finally:
        if not subreaper and proc.poll() is None:
            note("not a child subreaper here: orphans of the step may escape")
        kill_everything(proc, note)
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--timeout", type=float, required=True, help="seconds the command may run")
    parser.add_argument("--grace", type=float, default=15.0, help="seconds between SIGINT and SIGKILL")
    parser.add_argument("--log", help="file for the command's output (default: this process's stdout)")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given (put it after --)")
    if args.log:
        with open(args.log, "w") as log:
            return run(command, args.timeout, args.grace, log)
    return run(command, args.timeout, args.grace, sys.stdout)


if __name__ == "__main__":
    sys.exit(main())
