"""Training progress: a rich bar on a terminal, plain one-line records otherwise (logs, CI, pipes)."""

from __future__ import annotations

import sys
import time


def _fmt_eta(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class Progress:
    """Shows stage, step/total, loss, lr, tokens/s and ETA; silent on ranks other than 0."""

    def __init__(self, stage: str, total: int, *, start: int = 0, enabled: bool = True, every: int = 1):
        self.stage, self.total, self.start, self.every = stage, total, start, max(1, every)
        self.enabled = enabled
        self.t0 = time.perf_counter()
        self._bar = None
        if enabled and sys.stdout.isatty():
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("{task.fields[info]}"), TimeRemainingColumn())
            self._bar.start()
            self._task = self._bar.add_task(stage, total=total, completed=start, info="")

    def update(self, step: int, *, loss: float, lr: float, tokens_per_s: float) -> None:
        """step is the number of optimizer steps done so far (1-based after the first step)."""
        if not self.enabled:
            return
        done = step - self.start
        eta = (time.perf_counter() - self.t0) / max(1, done) * (self.total - step)
        info = f"loss {loss:.4f}  lr {lr:.2e}  {tokens_per_s:,.0f} tok/s"
        if self._bar is not None:
            self._bar.update(self._task, completed=step, info=info)
        elif step % self.every == 0 or step == self.total:
            print(f"[{self.stage}] step {step}/{self.total}  {info}  eta {_fmt_eta(eta)}", flush=True)

    def note(self, msg: str) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.console.print(msg)
        else:
            print(msg, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
