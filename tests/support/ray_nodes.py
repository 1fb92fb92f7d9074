"""Real Ray nodes on loopback, each a `ray start --block` process, so that stopping the process
stops its node. Token authentication stays on, as on a real cluster."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

from .polling import wait_for
from .procs import BIN, free_port, port_open, subprocess_env

COMMON = ("--block", "--disable-usage-stats")


def cluster_env() -> dict[str, str]:
    """The environment of every process that joins or drives a loopback cluster."""
    return subprocess_env(RAY_AUTH_MODE="token", RAY_USAGE_STATS_ENABLED="0")


@contextmanager
def ray_node(*flags: str) -> Iterator[subprocess.Popen]:
    """One `ray start --block flags...` process, stopped (then killed) on the way out."""
    proc = subprocess.Popen(
        [str(BIN / "ray"), "start", *flags, *COMMON],
        env=cluster_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()


@contextmanager
def head_node(*flags: str) -> Iterator[tuple[str, subprocess.Popen]]:
    """A head node (`flags` give its resources), yielded with its address once it is up."""
    port = free_port()
    address = f"127.0.0.1:{port}"
    with ray_node("--head", f"--port={port}", "--include-dashboard=false", *flags) as proc:
        wait_for(lambda: port_open(port), f"the Ray head's port {port}", timeout=120)
        wait_for_nodes(address, 1)
        yield address, proc


@contextmanager
def head_and_worker() -> Iterator[tuple[str, list[subprocess.Popen]]]:
    """A head and one worker node, one CPU each: the address and [head, worker] processes."""
    with ExitStack() as nodes:
        address, head = nodes.enter_context(head_node("--num-cpus=1"))
        worker = nodes.enter_context(ray_node(f"--address={address}", "--num-cpus=1"))
        wait_for_nodes(address, 2)
        yield address, [head, worker]


def ray_probe(address: str, code: str) -> str:
    """The last line a `python -c code` connected to the cluster prints ('' if it printed
    nothing or took over a minute); `code` runs after `ray.init(address=...)`."""
    script = f"import ray, sys; ray.init(address=sys.argv[1], log_to_driver=False); {code}"
    try:
        out = subprocess.run(
            [sys.executable, "-c", script, address],
            env=cluster_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
    except subprocess.TimeoutExpired:
        return ""
    lines = out.stdout.strip().splitlines()
    return lines[-1] if lines else ""


def wait_for_nodes(address: str, count: int) -> None:
    alive = "print(sum(n['Alive'] for n in ray.nodes()))"
    wait_for(
        lambda: ray_probe(address, alive) == str(count),
        f"{count} live nodes in the Ray cluster at {address}",
        timeout=120,
        every=2,
    )


def worker_node_id(address: str) -> str:
    """The Ray node id of the cluster's one live worker (not the head)."""
    code = (
        "print([n['NodeID'] for n in ray.nodes() if n['Alive'] and "
        "'node:__internal_head__' not in n['Resources']][0])"
    )
    node = ray_probe(address, code)
    assert node, f"no live worker node in the Ray cluster at {address}"
    return node
