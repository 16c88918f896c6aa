"""Weights & Biases logging of a run: config, per-step metrics, the step table, plots, final metrics, masks.

``wandb`` is optional (``pip install 'prune-gym[wandb]'``). Without an API key the default mode is
``offline``: the run is written under ``<dir>/wandb/offline-run-*`` and can be uploaded later with
``wandb sync``. ``mode="disabled"`` makes every call a no-op inside wandb itself (used by the tests).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STEP_COLUMNS = ("step", "ppl", "ppl_ratio", "global_sparsity", "reward", "rolled_back", "changed_units", "seconds")


@dataclass(frozen=True)
class WandbSettings:
    """Where and how to log: ``mode`` None picks online with an API key, offline without."""

    project: str = "prune-gym"
    entity: str | None = None
    mode: str | None = None
    dir: str | None = None
    name: str | None = None
    group: str | None = None

    def resolved_mode(self) -> str:
        if self.mode is not None:
            if self.mode not in ("online", "offline", "disabled"):
                raise ValueError(f"--wandb-mode must be online, offline or disabled, got {self.mode!r}")
            return self.mode
        return "online" if os.environ.get("WANDB_API_KEY") else "offline"


def _wandb():
    try:
        import wandb
    except ImportError as err:
        raise ValueError("--wandb needs the wandb package: pip install 'prune-gym[wandb]'") from err
    return wandb


class WandbRun:
    """One W&B run for one policy episode. Use as a context manager; every method is safe to call once open."""

    def __init__(self, settings: WandbSettings, config: Mapping[str, Any]) -> None:
        self.settings = settings
        self._config = dict(config)
        self._rows: list[list[Any]] = []
        self.run: Any = None

    def __enter__(self) -> WandbRun:
        wandb = _wandb()
        s = self.settings
        if s.dir:
            Path(s.dir).mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(project=s.project, entity=s.entity, mode=s.resolved_mode(), dir=s.dir, name=s.name,
                              group=s.group, config=self._config, reinit="create_new")
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.run is not None:
            self.run.finish(exit_code=1 if exc[0] else 0)

    def log_record(self, record: Mapping[str, Any]) -> None:
        """A line of the runner's steps log as it is written (``run_episode(on_record=...)``): steps are logged,
        the other kinds (start, restore, error, end) are not metrics."""
        if record.get("kind") == "step":
            self.log_step(record)

    def log_step(self, record: Mapping[str, Any]) -> None:
        """One env step (a ``kind == "step"`` line of the runner's JSONL)."""
        metrics = {k: record[k] for k in ("ppl", "ppl_ratio", "global_sparsity", "reward") if k in record}
        metrics["rolled_back"] = int(bool(record.get("rolled_back")))
        self.run.log(metrics, step=int(record["step"]))
        self._rows.append([record.get("step"), record.get("ppl"), record.get("ppl_ratio"),
                           record.get("global_sparsity"), record.get("reward"), bool(record.get("rolled_back")),
                           ",".join(record.get("changed_units", [])),
                           (record.get("timings") or {}).get("step")])

    def log_final(self, metrics: Mapping[str, Any], *, plots: Mapping[str, Path] = (),
                  masks: Path | None = None) -> None:
        """Final metrics (run summary), the step table, plots as images and the masks file as an artifact."""
        wandb = _wandb()
        flat = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str, bool))}
        self.run.summary.update(flat)
        payload: dict[str, Any] = {"steps": wandb.Table(columns=list(STEP_COLUMNS), data=self._rows)}
        for name, path in dict(plots).items():
            if Path(path).is_file():
                payload[name] = wandb.Image(str(path))
        self.run.log(payload)
        if masks is not None and Path(masks).is_file():
            artifact = wandb.Artifact(name=f"masks-{self.run.id}", type="masks",
                                      description="bit-packed pruning masks of the final model")
            artifact.add_file(str(masks))
            self.run.log_artifact(artifact)
