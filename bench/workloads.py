"""The benchmark's workloads, defined once for the three implementations: the same net, optimizer, batch size,
schedule, split and seed in the raw loops as in the template's configs (configs/linear.yaml, mlp.yaml, cnn.yaml)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SEED = 42
SPLIT_SEED = 42  # DInterface's default split_seed
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


@dataclass(frozen=True)
class Workload:
    """One workload: what is trained and how, and the template command line that trains the same."""

    name: str
    net: str  # model/<net>.py
    net_args: dict[str, Any]
    batch_size: int
    lr: float
    epochs: int
    val_fraction: float = 0.1
    cosine_t_max: int | None = None  # CosineAnnealingLR stepped per epoch, as in configs/cnn.yaml
    template_args: list[str] = field(default_factory=list)


WORKLOADS = {
    "line": Workload(
        name="line", net="linear", net_args={}, batch_size=32, lr=0.01, epochs=1000, template_args=["--model", "linear"]
    ),
    "mlp": Workload(
        name="mlp",
        net="mlp",
        net_args={"input_size": 784, "output_size": 10, "hidden_sizes": [256]},
        batch_size=64,
        lr=1e-3,
        epochs=5,
        template_args=["--model", "mlp", "--data", "mnist"],
    ),
    "cnn": Workload(
        name="cnn",
        net="cnn",
        net_args={"in_channels": 1, "num_classes": 10, "channels": [32, 64, 128], "convs_per_block": 2},
        batch_size=128,
        lr=3e-3,
        epochs=3,
        cosine_t_max=3,
        template_args=["--model", "cnn"],
    ),
}
