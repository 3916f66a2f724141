"""The training log: train_log.jsonl records (one per SAE per log step), and the optional W&B / TensorBoard
mirrors."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from .config import ConfigError
from .fetch import atomic_write_bytes

if TYPE_CHECKING:
    from .trainer import TrainConfig

LOG = "train_log.jsonl"
"""The log's file name in a run's output directory."""


class Loggers:
    def __init__(self, out_dir: Path, train_cfg: "TrainConfig", start_step: int, process_rank: int,
                 names: list[str]):
        self.path = out_dir / LOG
        self.active = process_rank == 0
        self.wandb = self.tb = None
        if not self.active:
            return
        if self.path.exists():  # drop this run's records beyond the resume point; other SAEs' records stay
            def kept(record: dict) -> bool:
                return record.get("sae") not in names or record.get("step", 0) <= start_step
            keep = [json.dumps(record) for record in read_log(self.path) if kept(record)]
            # atomically: a kill during this rewrite must not lose the records of earlier runs and other SAEs
            atomic_write_bytes(self.path, "".join(line + "\n" for line in keep).encode())
        if train_cfg.wandb_project:
            try:
                import wandb
            except ImportError as error:
                raise ConfigError("wandb_project is set but wandb is not installed: "
                                  "pip install 'scaffold-sae[wandb]'") from error
            self.wandb = wandb.init(project=train_cfg.wandb_project, config=asdict(train_cfg))
        if train_cfg.tensorboard_dir:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as error:
                raise ConfigError("tensorboard_dir is set but tensorboard is not installed: "
                                  "pip install 'scaffold-sae[tensorboard]'") from error
            self.tb = SummaryWriter(train_cfg.tensorboard_dir)

    def write(self, records: list[dict]) -> None:
        if not self.active:
            return
        with open(self.path, "a") as out:
            for rec in records:
                out.write(json.dumps(rec) + "\n")
        for rec in records:
            scalars = {f"{rec['sae']}/{k}": v for k, v in rec.items() if isinstance(v, (int, float))}
            if self.wandb is not None:
                self.wandb.log(scalars, step=rec["step"])
            if self.tb is not None:
                for key, value in scalars.items():
                    self.tb.add_scalar(key, value, rec["step"])

    def close(self) -> None:
        if self.wandb is not None:
            self.wandb.finish()
        if self.tb is not None:
            self.tb.close()


def read_log(path: Path) -> list[dict]:
    """The records of a train_log.jsonl; a line that does not parse (the torn last line of a killed run) is
    skipped, so a rerun still resumes."""
    records = []
    for line in Path(path).read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


__all__ = ["LOG", "Loggers", "read_log"]
