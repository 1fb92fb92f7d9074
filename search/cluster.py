"""The Ray cluster a search runs on: the embedded local one (loopback only) or the one --address
names, and the check that a trial's resources fit on it before any trial is started."""

from __future__ import annotations

import os
import time

import ray
from ray._private import ray_constants

from search.config import ExperimentConfig
from search.progress import say

# Seconds to wait on a cluster given by --address for a node that fits one trial: an autoscaling
# cluster adds such nodes on demand. The embedded local cluster never grows, so it never waits.
WAIT_ENV = "PRUNETUNE_RESOURCE_WAIT_S"
DEFAULT_WAIT_S = 300.0
POLL_S = 5.0


def init_ray(config: ExperimentConfig) -> None:
    # A checkpoint per stage is the design (restarts continue from the last stage); Tune's
    # "snapshotting too often" warning would repeat on every short stage.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    if ray.is_initialized():
        return
    if config.ray_address:
        ray.init(address=config.ray_address, log_to_driver=False)
    else:
        _loopback_only()
        # "local": start a fresh cluster, never join one that RAY_ADDRESS or a past `ray start`
        # points at; joining a cluster is what --address is for.
        ray.init(
            address="local",
            include_dashboard=False,
            log_to_driver=False,
            _node_ip_address="127.0.0.1",
        )


def _loopback_only() -> None:
    """Ray's single-machine mode (its default on macOS and Windows): the node's address is
    127.0.0.1 and its GCS, raylet, agents and workers listen there only. On Linux Ray would turn
    127.0.0.1 into the machine's external address and listen on every interface. The variable
    reaches the processes Ray spawns; the constant, this process, where ray is already imported."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False


def trial_needs(config: ExperimentConfig) -> dict[str, float]:
    """Ray resource name -> amount one trial asks for (the zero ones left out)."""
    needs = {"CPU": config.resources.cpu, "GPU": config.resources.gpu}
    return {k: v for k, v in needs.items() if v > 0}


def _fits(needs: dict[str, float]) -> bool:
    """A trial runs on one node: some alive node must hold all of it."""
    for node in ray.nodes():
        if node.get("Alive") and all(
            node.get("Resources", {}).get(k, 0.0) >= v for k, v in needs.items()
        ):
            return True
    return False


def _shortfall(config: ExperimentConfig, needs: dict[str, float]) -> str:
    have = ray.cluster_resources()
    asked = ", ".join(
        f"resources.{k.lower()}={v:g}" for k, v in needs.items() if have.get(k, 0.0) < v
    ) or ", ".join(f"resources.{k.lower()}={v:g}" for k, v in needs.items())
    total = ", ".join(f"{k} {have.get(k, 0.0):g}" for k in ("CPU", "GPU"))
    return (
        f"each trial asks for {asked}, but no node of the Ray cluster has that much "
        f"(the whole cluster has {total}); lower `resources` in the experiment file "
        "(resources.gpu: 0 runs on CPUs)"
    )


def check_resources(config: ExperimentConfig) -> None:
    """Raise before any trial starts when no node can ever run one (Ray would wait forever,
    printing "cluster only has 0 GPUs" once a minute). A cluster given by --address may
    autoscale: wait up to PRUNETUNE_RESOURCE_WAIT_S seconds for a node that fits."""
    needs = trial_needs(config)
    if _fits(needs):
        return
    if not config.ray_address:
        raise RuntimeError(_shortfall(config, needs))
    wait = float(os.environ.get(WAIT_ENV, DEFAULT_WAIT_S))
    say(
        f"{_shortfall(config, needs)}. An autoscaling cluster may add such a node: waiting up "
        f"to {wait:g} s ({WAIT_ENV} changes it)"
    )
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        time.sleep(min(POLL_S, max(deadline - time.monotonic(), 0.0)))
        if _fits(needs):
            return
    raise RuntimeError(f"{_shortfall(config, needs)}; waited {wait:g} s ({WAIT_ENV})")
