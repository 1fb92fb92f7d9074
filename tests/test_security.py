"""The embedded local Ray cluster listens on loopback only (issue 15, item 14): every listening
TCP socket of a running local search's process tree (driver, GCS, raylet, agents, workers) is
bound to 127.0.0.1 or ::ffff:127.0.0.1, none to a wildcard or the machine's external address."""

from __future__ import annotations

import ipaddress
import os
import socket
import time
from pathlib import Path

import yaml
from support.experiment import tiny_experiment
from support.procs import kill_tree, process_tree, start_prunetune, subprocess_env


def _address(hex_address: str, v6: bool) -> tuple[str, int]:
    """/proc/net/tcp's "0100007F:1F90" (little-endian 32-bit words) -> ("127.0.0.1", 8080)."""
    ip, port = hex_address.split(":")
    raw = bytes.fromhex(ip)
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    family = socket.AF_INET6 if v6 else socket.AF_INET
    return socket.inet_ntop(family, words), int(port, 16)


def listening_sockets(pids: list[int]) -> list[tuple[str, int, str, int]]:
    """(process name, pid, address, port) of every listening TCP socket the processes hold."""
    listening = {}
    for table, v6 in (("tcp", False), ("tcp6", True)):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A":  # TCP_LISTEN
                listening[fields[9]] = _address(fields[1], v6)  # by socket inode
    found = []
    for pid in pids:
        try:
            name = Path(f"/proc/{pid}/comm").read_text().strip()
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:
            continue  # ended meanwhile
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            inode = target.removeprefix("socket:[").removesuffix("]")
            if target.startswith("socket:[") and inode in listening:
                found.append((name, pid, *listening[inode]))
    return found


def _loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def test_a_local_search_listens_on_loopback_only(tmp_path) -> None:
    config = tmp_path / "exp.yaml"
    experiment = tiny_experiment("loopback", num_trials=2, out=str(tmp_path / "run"))
    config.write_text(yaml.safe_dump(experiment))
    proc = start_prunetune("search", str(config), cwd=tmp_path, env=subprocess_env())
    try:
        assert proc.stderr is not None
        deadline, said = time.monotonic() + 400, []
        for line in proc.stderr:  # once a stage is saved, Ray's trial workers are all up
            said.append(line)
            if "stage 1 saved" in line:
                break
            assert time.monotonic() < deadline, "no trial saved a stage in time"
        else:
            raise AssertionError(f"the search ended before a stage was saved: {''.join(said)}")
        sockets = listening_sockets(process_tree(proc.pid))
        names = {name for name, *_ in sockets}
        assert {"gcs_server", "raylet"} <= names, sockets  # Ray's own servers were seen
        exposed = [s for s in sockets if not _loopback(s[2])]
        assert not exposed, f"listening beyond loopback: {exposed}"
    finally:
        kill_tree(proc.pid)
        proc.wait(timeout=60)
