"""What is shown while training runs: a run's line per epoch (`RunProgress`), and a study's
progress display (`StudyProgress`), fed by every executor.

Executors (local job processes, Ray tasks) send small messages from wherever a run trains;
`drain` hands them to the display:

    ("start", key, where)          a run began; `where` (host, threads...) or None
    ("epoch", key, epoch, epochs)  a run finished an epoch
"""

from __future__ import annotations

import queue as queues
import sys
import time
from pathlib import Path

from .data import IMAGE_SIZE


def duration(seconds: float) -> str:
    """A time span as a person reads it: '45 s', '12 min', '2 h 05 min'."""
    if seconds >= 90 * 60:
        hours, minutes = divmod(round(seconds / 60), 60)
        return f"{hours} h {minutes:02d} min"
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"


def drain(queue, progress: "StudyProgress") -> None:
    """Show every message waiting in `queue` (a multiprocessing or Ray queue)."""
    while True:
        try:
            message = queue.get_nowait()
        except (queues.Empty, OSError, ValueError, EOFError):  # empty, or torn down by an
            return                                             # interrupt
        if message[0] == "start":
            progress.start(message[1])
            if message[2]:
                progress.note(f"started {message[1]} on {message[2]}")
        else:
            progress.epoch(*message[1:])


class StudyProgress:
    """Runs done / running / waiting, each running run's epoch, and the time left.

    On a terminal: one live bar over the study's planned epochs. In a file or pipe: one
    line per finished run, and while none finishes a line every HEARTBEAT_S with each
    running run's epoch (a full-scale run trains for an hour in silence otherwise).
    """

    HEARTBEAT_S = 600.0

    def __init__(self, total: int, skipped: int, work: dict[str, tuple[int, float]],
                 live: bool, enabled: bool = True, kinds: dict[str, str] | None = None,
                 timed: dict[str, list[float]] | None = None,
                 early: dict[str, tuple[str, int]] | None = None,
                 stopped: dict[str, list[int]] | None = None):
        """`work`: each run to train -> (its epochs left, the cost of one of its epochs, in
        any unit: schedule.epoch_cost). The time left follows the work left, not the
        epochs: a study's epochs differ in cost ten times and more (a tenth of the data, a
        smaller network), and the first runs' pace would say little of the rest.

        `kinds`: each run -> its network. The cost unit (multiply-adds) misjudges networks
        whose batch-norm and dropout passes are memory-bound (seen: `batchnorm` does 0.31 of
        `simple`'s multiply-adds in 0.6 of its time), so once a network's epochs have been
        timed, its work is weighed by its own measured seconds per unit.

        `timed`: network -> [seconds, units] its epochs took before this session
        (schedule.timed_epochs), so a resumed study weighs its networks from the start.

        `early`: each run that stops early -> (its variant, its epoch cap); `stopped`: each
        variant -> the epochs its finished runs trained (schedule.stopped_epochs). Once a
        variant's runs have stopped early, its others are expected to stop near their mean:
        counted to their caps, the seed study's early-stopping runs read 6 hours left where
        2 were. Until then a run goes to its cap and the time left is said as "up to"."""
        self.total, self.skipped, self.enabled, self.live = total, skipped, enabled, live
        self.done = skipped
        self.running: dict[str, str] = {}
        self.work = work
        self.kinds = kinds or {}
        self.planned = sum(left for left, _ in work.values())
        self.started = time.perf_counter()
        self.bar = None
        self._seen: dict[str, int] = {}  # epochs each run trained in this session
        self._done: dict[str, float] = {}  # each network's work done in this session
        self._ended: set[str] = set()
        self.early = early or {}
        self.stopped = {k: list(v) for k, v in (stopped or {}).items()}
        # network -> [seconds, units] of timed epochs, this session's added to earlier ones
        self._timed: dict[str, list[float]] = {k: list(v) for k, v in (timed or {}).items()}
        self._last: dict[str, float] = {}  # each running run's last start or epoch
        self._said = self.started  # when the last line about the whole study was written

    @property
    def work_done(self) -> float:
        return sum(self._done.values())

    @property
    def work_planned(self) -> float:
        return sum(self._work_left().values()) + self.work_done

    def _epochs_left(self, key: str) -> float:
        """Epochs `key` is still expected to train: to its cap, or for a run that stops early
        once runs of its variant have stopped, to their mean (one at least while unfinished)."""
        left, seen = self.work[key][0], self._seen.get(key, 0)
        to_cap = max(left - seen, 0)
        variant, cap = self.early.get(key, ("", 0))
        if not self.stopped.get(variant):
            return to_cap
        mean = sum(self.stopped[variant]) / len(self.stopped[variant])
        return min(to_cap, max(mean - (cap - left) - seen, 1.0))

    def _work_left(self) -> dict[str, float]:
        """Each network's work still expected, in cost units."""
        out: dict[str, float] = {}
        for key, (_, cost) in self.work.items():
            if key not in self._ended:
                kind = self.kinds.get(key, "")
                out[kind] = out.get(kind, 0.0) + self._epochs_left(key) * cost
        return out

    def _bounded(self) -> bool:
        """Some run still to end may stop early, and nothing yet says when."""
        return any(key not in self._ended and not self.stopped.get(variant)
                   for key, (variant, _) in self.early.items())

    def begin(self, out: Path) -> None:
        if not self.enabled:
            return
        print(f"Study in {out}: {self.total} runs, {self.skipped} already finished, "
              f"{self.total - self.skipped} to train ({self.planned} epochs at most).",
              flush=True)
        if self.live and self.total > self.skipped:
            from tqdm import tqdm
            self.bar = tqdm(total=self.planned, unit="epoch", file=sys.stdout,
                            dynamic_ncols=True)
            self._describe()

    def note(self, line: str) -> None:
        if self.enabled:
            self._print(line)

    def waiting(self) -> int:
        return self.total - self.done - len(self.running)

    def eta(self) -> str:
        if not self.work_done:
            return "unknown"
        seconds = (time.perf_counter() - self.started) * self._weighed(self._work_left()) / \
            self._weighed(self._done)
        return duration(seconds)

    def left(self) -> str:
        """'about 2 h 10 min left', or 'up to 6 h left' while runs that may stop early are
        counted to their caps."""
        eta = self.eta()
        return f"up to {eta} left" if self._bounded() and eta != "unknown" else \
            f"about {eta} left"

    def _weighed(self, work: dict[str, float]) -> float:
        """Work per network, each weighed by its measured seconds per unit against all timed
        epochs' (a network not timed yet: 1)."""
        seconds = sum(t for t, _ in self._timed.values())
        units = sum(u for _, u in self._timed.values())
        pace = seconds / units if seconds and units else 0.0

        def weight(kind: str) -> float:
            t, u = self._timed.get(kind, (0.0, 0.0))
            return t / u / pace if t and u and pace else 1.0
        return sum(w * weight(kind) for kind, w in work.items())

    def _describe(self) -> None:
        if self.bar is not None:
            self.bar.set_description(f"runs {self.done}/{self.total} done, {len(self.running)} "
                                     f"running, {self.waiting()} waiting", refresh=False)
            self.bar.set_postfix_str("; ".join(f"{k}: {v}" for k, v in self.running.items()))

    def start(self, key: str) -> None:
        self.running[key] = "starting"
        self._seen[key] = 0
        self._last[key] = time.perf_counter()
        self._describe()

    def epoch(self, key: str, epoch: int, epochs: int) -> None:
        self.running[key] = f"epoch {epoch}/{epochs}"
        self._seen[key] = self._seen.get(key, 0) + 1
        cost, kind = self.work.get(key, (0, 0.0))[1], self.kinds.get(key, "")
        self._done[kind] = self._done.get(kind, 0.0) + cost
        now = time.perf_counter()
        if self._seen[key] > 1 and cost:  # a run's first epoch also pays its start-up
            timed = self._timed.setdefault(kind, [0.0, 0.0])
            timed[0] += now - self._last[key]
            timed[1] += cost
        self._last[key] = now
        if self.bar is not None:
            self._describe()
            self.bar.update(1)
        elif self.enabled and now - self._said >= self.HEARTBEAT_S:
            self._print(f"{time.strftime('%H:%M')} {self.done}/{self.total} done; running: "
                        + ", ".join(f"{k} {v}" for k, v in self.running.items())
                        + f"; {self.waiting()} waiting, {self.left()}")

    def _end(self, key: str) -> None:
        """A run ended (finished, stopped early or failed): what it left untrained is no
        longer to come."""
        self.running.pop(key, None)
        self.done += 1
        left = self.work.get(key, (0, 0.0))[0]
        self.planned -= max(0, left - self._seen.get(key, 0))
        self._ended.add(key)
        self._last.pop(key, None)
        if self.bar is not None:
            self.bar.total = self.planned
        self._describe()

    def finish(self, key: str, metrics: dict) -> None:
        self._end(key)
        if key in self.early and metrics.get("epochs_run"):
            self.stopped.setdefault(self.early[key][0], []).append(int(metrics["epochs_run"]))
        if self.enabled:
            self._print(f"[{self.done}/{self.total}] {key}: test accuracy "
                        f"{metrics['test_accuracy']:.4f} after {metrics['epochs_run']} epochs "
                        f"({metrics['train_time_s']:.0f} s); {len(self.running)} running, "
                        f"{self.waiting()} waiting, {self.left()}")

    def fail(self, key: str, message: str) -> None:
        self._end(key)
        if self.enabled:
            self._print(f"[{self.done}/{self.total}] {key} FAILED: {message}")

    def _print(self, line: str) -> None:
        self._said = time.perf_counter()
        if self.bar is not None:
            self.bar.write(line, file=sys.stdout)
            if self.done == self.total:
                self.bar.close()
        else:
            print(line, flush=True)


class RunProgress:
    """A live bar with ETA on a terminal, then one Keras-style line per epoch.

    When stdout is a file or a pipe only the per-epoch lines are written.
    """

    def __init__(self, epochs: int, steps: int, enabled: bool = True):
        self.epochs, self.steps, self.enabled = epochs, steps, enabled
        self.live = enabled and sys.stdout.isatty()
        self.bar = None

    def start(self, epoch: int) -> None:
        if self.live:
            from tqdm import tqdm
            self.bar = tqdm(total=self.steps, desc=f"Epoch {epoch}/{self.epochs}", leave=False,
                            unit="step", file=sys.stdout, dynamic_ncols=True)

    def step(self, step: int, loss_sum, correct, batch_size: int) -> None:
        if self.bar is not None and (step % 25 == 0 or step == self.steps):
            seen = min(step * batch_size, self.bar.total * batch_size)
            self.bar.set_postfix(loss=f"{loss_sum.item() / seen:.4f}",
                                 acc=f"{correct.item() / seen:.4f}", refresh=False)
            self.bar.update(step - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def end(self, row: dict, epochs: int) -> None:
        self.close()
        if self.enabled:
            print(f"Epoch {row['epoch']}/{epochs} - {row['epoch_time_s']:.1f}s - "
                  f"loss: {row['loss']:.4f} - accuracy: {row['accuracy']:.4f} - "
                  f"val_loss: {row['val_loss']:.4f} - val_accuracy: {row['val_accuracy']:.4f} - "
                  f"lr: {row['lr']:.2e}"
                  + (f" - on {row['image_size']}x{row['image_size']} images"
                     if row["image_size"] < IMAGE_SIZE else ""), flush=True)
