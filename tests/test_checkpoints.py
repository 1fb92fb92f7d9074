"""A checkpoint that is not a readable state dict is one paragraph from `replay` and `prune`,
never a traceback; a pickle that carries code is refused (weights_only) and never run."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

from pruning import schedule as S
from pruning.data import DataSpec
from pruning.models import vgg19
from pruning.run_info import RunInfo
from search.cli import main

DATA = DataSpec(name="synthetic", samples=600, num_classes=4, val_size=0.25)


class RunsCode:
    """Unpickling this would run `touch <marker>`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def write_bad(kind: str, path: Path, marker: Path) -> None:
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        torch.save(vgg19(4, 0.125).state_dict(), path)
        path.write_bytes(path.read_bytes()[:5000])
    elif kind == "random-bytes":
        path.write_bytes(
            torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0))
            .to(torch.uint8)
            .numpy()
            .tobytes()
        )
    elif kind == "pickle-with-code":
        path.write_bytes(pickle.dumps(RunsCode(marker)))
    elif kind == "torch-save-with-code":
        torch.save({"block0.0.weight": RunsCode(marker)}, path)
    elif kind == "not-a-state-dict":
        torch.save([1, 2, 3], path)


KINDS = {
    "empty": "the file is empty",
    "truncated": "ends too early",
    "random-bytes": "not a file torch.save wrote",
    "pickle-with-code": "carries code (it would call posix.system)",
    "torch-save-with-code": "carries code (it would call posix.system)",
    "not-a-state-dict": "does not hold a state dict",
}


@pytest.mark.parametrize("command", ["replay", "prune"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_unreadable_checkpoint_is_one_paragraph(capsys, tmp_path, command, kind) -> None:
    bad, marker = tmp_path / f"{kind}.pt", tmp_path / "code-ran"
    write_bad(kind, bad, marker)
    if command == "replay":
        schedule = S.save(tmp_path / "s.yaml", S.one_shot(2.0, 0), RunInfo(data=DATA))
        argv = ["replay", str(schedule), "--checkpoint", str(bad), "--out", str(tmp_path / "o")]
    else:
        argv = ["prune", "--speedup", "2", "--checkpoint", str(bad)]
    assert main([*argv, "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and not marker.exists()  # the code never ran
    message = err.split("\n(run with --debug")[0]
    assert "\n\n" not in message  # one paragraph
    assert f"checkpoint {bad} is not a readable state dict" in message
    assert KINDS[kind] in message
    if "code" in kind:
        assert "weights_only=True" in message and "refuses" in message
