"""Health checks while training: windowed conditions on values the trainers already compute.

A window watches one series (a loss per step, an accuracy per validation) and says whether its
condition holds now. Conditions are on window means, not on single values: one noisy batch
neither triggers a check nor resets one. `Health` turns each named condition into one log
warning, the first time it holds, and a 0/1 TensorBoard scalar `health/<name>`. The checks only
warn (a run may recover); a non-finite loss is what stops a run (Trainer.check_finite). Windows
are not kept in checkpoints: a resumed run starts them afresh, and may warn again.
"""
import collections
import logging
import math

from talkingface.utils import distributed as dist_utils

logger = logging.getLogger(__name__)


class Window:
    """The means of a series' first `patience` values and of its last `patience` values (a running
    sum: O(1) per value, whatever the patience)."""

    def __init__(self, patience):
        self.patience = patience
        self.count = 0
        self.first_sum = self.recent_sum = 0.0
        self.recent = collections.deque(maxlen=patience)

    def add(self, x):
        self.count += 1
        if self.count <= self.patience:
            self.first_sum += x
        if len(self.recent) == self.patience:
            self.recent_sum -= self.recent[0]
        self.recent.append(x)
        self.recent_sum += x

    @property
    def first_mean(self):
        return self.first_sum / min(self.count, self.patience)

    @property
    def recent_mean(self):
        return self.recent_sum / len(self.recent)


class StaysWithin(Window):
    """Holds while the mean of the last `patience` values lies in [low, high] (from value `patience` on)."""

    def __init__(self, patience, low=-math.inf, high=math.inf):
        super().__init__(patience)
        self.low, self.high = low, high

    def update(self, x):
        self.add(x)
        return self.count >= self.patience and self.low <= self.recent_mean <= self.high


class MeanRatioAbove(Window):
    """Holds from value 2*patience on while the mean of the last `patience` values is over `ratio`
    times the mean of the first `patience` values: ratio 1 - margin, a loss that has not fallen by
    `margin`; ratio 10, a loss growing without bound."""

    def __init__(self, patience, ratio):
        super().__init__(patience)
        self.ratio = ratio

    def update(self, x):
        self.add(x)
        return self.count >= 2 * self.patience and self.recent_mean > self.ratio * self.first_mean


class Health:
    """Named conditions of one run: the first time one holds, one warning (from the main process
    only: every rank sees the same run); its 0/1 scalar is written when it changes and every
    `log_interval` steps, beside the training scalars."""

    def __init__(self, log_scalars, log_interval):
        self.log_scalars, self.log_interval = log_scalars, log_interval
        self.state, self.warned = {}, set()

    def report(self, name, holds, step, warning):
        """`holds`: the condition now; `warning()`: the warning's text, built only when it is logged."""
        holds = bool(holds)
        changed = self.state.get(name) != holds
        self.state[name] = holds
        if holds and name not in self.warned:
            self.warned.add(name)
            if dist_utils.is_main_process():
                logger.warning("%s", warning())
        if changed or step % self.log_interval == 0:
            self.log_scalars("health", {name: float(holds)})
