"""Child processes of the tests: the environment they need, `prunetune` run as a user would,
free ports, and stopping a process with everything it spawned."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the repository
BIN = Path(sys.executable).parent  # the environment's console scripts: ray, mlflow, prunetune
PRUNETUNE = (sys.executable, "-m", "search.cli")  # the command line, from the working tree


def subprocess_env(**extra: str) -> dict[str, str]:
    """This process's environment with the repository first on PYTHONPATH (a child `python`
    imports the working tree), and `extra` on top."""
    path = f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
    return os.environ | {"PYTHONPATH": path} | extra


def run_prunetune(
    *argv: str, cwd: Path, env: dict[str, str], timeout: float
) -> subprocess.CompletedProcess:
    """`prunetune argv...` to the end, its output captured as text."""
    return subprocess.run(
        [*PRUNETUNE, *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def start_prunetune(*argv: str, cwd: Path, env: dict[str, str]) -> subprocess.Popen:
    """`prunetune argv...` in the background; its stderr is a text pipe, its stdout discarded."""
    return subprocess.Popen(
        [*PRUNETUNE, *argv],
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def interrupt_search_at(config: Path, marker: str, cwd: Path, timeout: float = 300) -> None:
    """`prunetune search config` in the background, Ctrl-C'd (SIGINT) at the first line of its
    output holding `marker`; returns once it has exited."""
    proc = start_prunetune("search", str(config), cwd=cwd, env=subprocess_env())
    deadline = time.monotonic() + timeout
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            if marker in line:
                proc.send_signal(signal.SIGINT)  # what Ctrl-C does
                break
            assert time.monotonic() < deadline, f"no {marker!r} in {timeout:.0f} s"
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (yet)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:port."""
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def process_tree(pid: int) -> list[int]:
    """A process and all its descendants, parents first (found through /proc; no psutil here)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # fields[1]: the parent's pid
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    todo, tree = [pid], []
    while todo:
        current = todo.pop()
        tree.append(current)
        todo += children.get(current, [])
    return tree


def kill_tree(pid: int) -> None:
    """SIGKILL a process and all its descendants."""
    for member in process_tree(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(member, signal.SIGKILL)
