"""Model selection on the validation classes: the best epoch and early stopping."""

import math
from typing import Any, Dict, Optional


class Selection:
    """Tracks the epoch with the highest validation ``metric``.

    ``patience``: stop after that many epochs without improvement (None: never).
    """

    def __init__(self, metric: str, patience: Optional[int] = None):
        self.metric = metric
        self.patience = patience
        self.best_epoch: Optional[int] = None
        self.best_value = -math.inf

    def update(self, epoch: int, metrics: Dict[str, float]) -> bool:
        """True when ``epoch`` is the new best (its weights should be kept)."""
        value = metrics[self.metric]
        if value > self.best_value:
            self.best_epoch, self.best_value = epoch, value
            return True
        return False

    def keep_going(self, epoch: int) -> bool:
        if self.patience is None or self.best_epoch is None:
            return True
        return epoch - self.best_epoch <= self.patience

    def describe(self) -> str:
        if self.best_epoch is None:
            return "last epoch"
        return f"epoch {self.best_epoch} (best validation {self.metric})"

    def state_dict(self) -> Dict[str, Any]:
        value = self.best_value if math.isfinite(self.best_value) else None
        return {"best_epoch": self.best_epoch, "best_value": value}

    def load_state_dict(self, state: Dict[str, Any]):
        self.best_epoch = state["best_epoch"]
        value = state["best_value"]
        self.best_value = -math.inf if value is None else value
