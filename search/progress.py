"""Terminal progress for long work: one tqdm bar per training phase, on stderr."""

from __future__ import annotations

import sys
from collections import deque

from tqdm import tqdm


def say(text: str) -> None:
    """A status line on stderr, printed above an open progress bar rather than through it."""
    tqdm.write(text, file=sys.stderr)


class EpochBar:
    """Feed it fit()'s on_epoch callbacks; phases (label, epochs) open and close in order."""

    def __init__(self, phases: list[tuple[str, int]], enabled: bool = True) -> None:
        self.phases = deque((label, n) for label, n in phases if n > 0)
        self.enabled = enabled
        self.bar: tqdm | None = None
        self._open_next()  # now, so the first epoch's time shows

    def _open_next(self) -> None:
        if self.enabled and self.bar is None and self.phases:
            label, total = self.phases.popleft()
            self.bar = tqdm(
                total=total, desc=label, unit="epoch", file=sys.stderr, dynamic_ncols=True
            )

    def __call__(self, epoch: int, stats: dict[str, float]) -> None:
        self._open_next()
        if self.bar is None:
            return
        shown = {"loss": f"{stats['train_loss']:.3f}", "train": f"{stats['train_acc']:.1%}"}
        if "val_acc" in stats:
            shown["val"] = f"{stats['val_acc']:.1%}"
        self.bar.set_postfix(shown)
        self.bar.update(1)
        if self.bar.n >= self.bar.total:
            self.close()
            self._open_next()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
