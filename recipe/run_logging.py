"""Training progress for humans and for tools: a tqdm bar, metrics.jsonl and TensorBoard (rank 0).

    logger = create_logger(run_dir, total_steps=cfg.max_steps, initial_step=start_step, enabled=is_main())
    timer = StepTimer()
    for step, batch in enumerate(batches, start=start_step + 1):
        timer.batch_ready()                               # time spent waiting for data ends here
        ... forward / backward / step ...
        timer.step_done(num_samples=global_batch_size)
        logger.advance(step)
        if step % log_every == 0:
            logger.log(step, {"epoch": epoch, "loss": loss, "lr": lr, "temperature": t, **timer.read()})
    logger.close()

Only rank 0 writes: every other rank gets a `NullLogger` with the same methods, so the loop has
no `if rank == 0` around each call (and nothing monkeypatches `print`).

On resume (`initial_step` > 0) lines of metrics.jsonl and TensorBoard events past `initial_step`
are dropped: they came from steps after the checkpoint that will now be run again.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Mapping

from tqdm.auto import tqdm

from recipe.run_dir import RunDir, write_text_atomic


def _to_float(value: Any) -> float:
    """Tensors and numpy scalars become plain floats (JSON and TensorBoard want numbers)."""
    return float(value.item()) if hasattr(value, "item") else float(value)


class MetricsLogger:
    """Rank 0's logger: progress bar, JSONL metrics, TensorBoard scalars."""

    def __init__(self, run_dir: RunDir, total_steps: int | None, initial_step: int = 0) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.run_dir = run_dir
        run_dir.root.mkdir(parents=True, exist_ok=True)
        if initial_step > 0:
            self._drop_metrics_after(initial_step)
        self._metrics_file = open(run_dir.metrics, "a", encoding="utf-8")
        # purge_step hides events written past the checkpoint by the run that was interrupted.
        self._writer = SummaryWriter(log_dir=str(run_dir.tensorboard),
                                     purge_step=initial_step + 1 if initial_step > 0 else None)
        # In a batch job's log file a bar redrawn ten times a second is noise: redraw every 30 s.
        self._bar = tqdm(total=total_steps, initial=initial_step, desc="train", unit="step", dynamic_ncols=True,
                         mininterval=0.1 if sys.stderr.isatty() else 30.0)

    def _drop_metrics_after(self, step: int) -> None:
        path = self.run_dir.metrics
        if not path.is_file():
            return
        kept = []
        for line in path.read_text(encoding="utf-8").splitlines(keepends=True):
            try:
                if json.loads(line)["step"] <= step:
                    kept.append(line if line.endswith("\n") else line + "\n")
            except (json.JSONDecodeError, KeyError, TypeError):
                pass  # e.g. the last line, cut short when the previous run was killed
        write_text_atomic(path, "".join(kept))

    def advance(self, step: int) -> None:
        """Move the progress bar to `step` (call once per optimizer step)."""
        self._bar.update(step - self._bar.n)

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Record one step's metrics: a metrics.jsonl line, TensorBoard scalars, the bar's postfix.

        Values may be numbers, 0-d tensors or numpy scalars; the key "epoch" is recorded as is.
        """
        values = {name: _to_float(value) for name, value in metrics.items()}
        record = {"step": step, "time": round(time.time(), 3), **values}
        self._metrics_file.write(json.dumps(record) + "\n")
        self._metrics_file.flush()
        for name, value in values.items():
            if math.isfinite(value):
                self._writer.add_scalar(f"train/{name}", value, global_step=step)
        self._bar.set_postfix({name: f"{value:.4g}" for name, value in values.items()
                               if name in ("loss", "lr", "samples_per_s")}, refresh=False)

    def log_eval(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Record evaluation results (BLEU, ROUGE-L, retrieval recall...) under "eval/"."""
        values = {name: _to_float(value) for name, value in metrics.items()}
        self._metrics_file.write(json.dumps({"step": step, "time": round(time.time(), 3), "eval": values}) + "\n")
        self._metrics_file.flush()
        for name, value in values.items():
            self._writer.add_scalar(f"eval/{name}", value, global_step=step)

    def message(self, text: str) -> None:
        """Print a line without breaking the progress bar."""
        self._bar.write(text)

    def close(self) -> None:
        self._bar.close()
        self._writer.close()
        self._metrics_file.close()


class NullLogger:
    """The logger of every rank but 0: same methods, does nothing."""

    def advance(self, step: int) -> None:
        pass

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        pass

    def log_eval(self, step: int, metrics: Mapping[str, Any]) -> None:
        pass

    def message(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass


def create_logger(run_dir: RunDir | str | Path, total_steps: int | None, initial_step: int = 0,
                  enabled: bool = True) -> MetricsLogger | NullLogger:
    """A `MetricsLogger` when `enabled` (rank 0), else a `NullLogger`."""
    if not enabled:
        return NullLogger()
    run_dir = run_dir if isinstance(run_dir, RunDir) else RunDir(Path(run_dir))
    return MetricsLogger(run_dir, total_steps=total_steps, initial_step=initial_step)


class StepTimer:
    """Measures, between two `read()` calls, the throughput and the time spent waiting for data.

    Data wait = time from the end of one step (`step_done`) to the arrival of the next batch
    (`batch_ready`): large values mean the input pipeline, not the model, is the bottleneck.
    """

    def __init__(self) -> None:
        self._last_step_end = time.perf_counter()
        self._window_start = self._last_step_end
        self._data_wait = 0.0
        self._samples = 0
        self._steps = 0

    def batch_ready(self) -> None:
        self._data_wait += time.perf_counter() - self._last_step_end

    def step_done(self, num_samples: int) -> None:
        self._last_step_end = time.perf_counter()
        self._samples += num_samples
        self._steps += 1

    def read(self) -> dict[str, float]:
        """{"samples_per_s", "data_wait_s" (per step, averaged), "step_time_s"} since the last read."""
        elapsed = max(self._last_step_end - self._window_start, 1e-9)
        steps = max(self._steps, 1)
        result = {"samples_per_s": self._samples / elapsed, "data_wait_s": self._data_wait / steps,
                  "step_time_s": elapsed / steps}
        self._window_start = self._last_step_end
        self._data_wait, self._samples, self._steps = 0.0, 0, 0
        return result
