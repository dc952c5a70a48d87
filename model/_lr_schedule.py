"""Learning-rate schedule helpers: a LambdaLR factor written as text in a config, and linear warm-up."""

from __future__ import annotations

import ast
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from torch.optim import Optimizer

from utils import ConfigError

# What a factor expression may use: the step counter, numbers, arithmetic, comparisons and these functions.
# All in floats: an integer power could compute for ever, a float one overflows at once.
FUNCTIONS = {name: getattr(math, name) for name in ("cos", "sin", "exp", "log", "sqrt")}
FUNCTIONS |= {"floor": lambda x: float(math.floor(x)), "ceil": lambda x: float(math.ceil(x))}
CONSTANTS = {"pi": math.pi, "e": math.e}
ALLOWED_NODES = (
    ast.Expression, ast.BinOp, ast.UnaryOp, ast.BoolOp, ast.Compare, ast.IfExp, ast.Call, ast.Name, ast.Load,
    ast.Constant, ast.operator, ast.unaryop, ast.boolop, ast.cmpop,
)  # fmt: skip


def lr_lambda(expression: str) -> Callable[[int], float]:
    """The factor function of LambdaLR (or MultiplicativeLR) written as text, e.g. ``"1 / (epoch + 1)"``.

    `epoch` (also named `step`) counts the scheduler's steps: epochs, or optimizer steps with interval `step`.
    Only arithmetic, comparisons, `x if cond else y`, min/max/abs and math's cos, sin, exp, log, sqrt, floor,
    ceil, pi and e are allowed, so a config cannot run code.
    """
    names = {**FUNCTIONS, **CONSTANTS, "min": min, "max": max, "abs": abs}
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as error:
        raise ConfigError(f"lr_lambda {expression!r} is not a valid expression: {error.msg}") from error
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant):
            if type(node.value) not in (int, float):
                raise ConfigError(f"lr_lambda {expression!r}: only numbers may appear as constants")
            node.value = float(node.value)
        if not isinstance(node, ALLOWED_NODES) or (isinstance(node, ast.Call) and not isinstance(node.func, ast.Name)):
            raise ConfigError(f"lr_lambda {expression!r}: {type(node).__name__} is not allowed in a factor expression")
        if isinstance(node, ast.Name) and node.id not in (*names, "epoch", "step"):
            raise ConfigError(
                f"lr_lambda {expression!r}: unknown name {node.id!r}; use epoch (or step), numbers, {', '.join(names)}"
            )
    code = compile(tree, "<lr_lambda>", "eval")

    def factor(epoch: int) -> float:
        try:
            return float(eval(code, {"__builtins__": {}}, {**names, "epoch": float(epoch), "step": float(epoch)}))
        except (ArithmeticError, ValueError, TypeError, MemoryError, RecursionError) as error:
            raise ConfigError(f"lr_lambda {expression!r} fails at epoch={epoch}: {error}") from error

    factor(0)
    return factor


class LinearWarmup:
    """Scales an optimizer's learning rates by a factor rising linearly from `start_factor` to 1 over `steps`.

    It works on top of any schedule: each param group keeps the schedule's own learning rate under
    `SCHEDULED`, the schedule steps on that (see `scheduling`), and `lr` is that times the warm-up factor, so
    that whatever reads `lr` (the optimizer, LearningRateMonitor) sees the learning rate really used. Both live
    in the optimizer's state, so a resumed run carries on where it stopped.
    """

    SCHEDULED = "scheduled_lr"
    STEPS = "warmup_steps"

    def __init__(self, optimizer: Optimizer, steps: int, start_factor: float = 0.0) -> None:
        self.optimizer, self.start_factor = optimizer, start_factor
        for group in optimizer.param_groups:
            group.setdefault(self.SCHEDULED, group["lr"])
            group.setdefault(self.STEPS, steps)
        self.apply(0)

    @property
    def steps(self) -> int:
        # From the optimizer's state: a resumed run keeps the length it started with, even a fraction of a
        # training whose length has changed since.
        return self.optimizer.param_groups[0].get(self.STEPS, 0)  # none in a checkpoint written without warm-up

    def factor(self, step: int) -> float:
        """The warm-up factor of optimizer step `step` (counted from 0)."""
        if step >= self.steps:
            return 1.0
        return self.start_factor + (1 - self.start_factor) * step / self.steps

    def apply(self, step: int) -> None:
        """Set the learning rates for optimizer step `step`."""
        factor = self.factor(step)
        for group in self.optimizer.param_groups:
            group["lr"] = group.setdefault(self.SCHEDULED, group["lr"]) * factor

    @contextmanager
    def scheduling(self, next_step: int) -> Iterator[None]:
        """Within it, `lr` is the schedule's own, for a scheduler to step on; after it, `next_step`'s warmed one."""
        for group in self.optimizer.param_groups:
            group["lr"] = group[self.SCHEDULED]
        try:
            yield
        finally:
            for group in self.optimizer.param_groups:
                group[self.SCHEDULED] = group["lr"]
            self.apply(next_step)
