"""An embedded classification set generated in code: `python main.py --model mlp` needs no data on disk."""

import torch
from torch.utils.data import Dataset


class SyntheticClassification(Dataset):
    """Gaussian blobs: each class is a cloud of points around its own random centre.

    Seeded, so every run sees the same data; `class_sep` sets how far apart the centres lie in units of the
    clouds' spread, so how hard the task is.

    Args:
        num_samples: Number of points, spread evenly over the classes.
        num_features: Dimension of each point (the MLP's default input size is 20).
        num_classes: Number of classes.
        class_sep: Scale of the class centres relative to the unit spread of each cloud.
        seed: Seed of the centres and the points.
    """

    def __init__(
        self,
        num_samples: int = 4000,
        num_features: int = 20,
        num_classes: int = 10,
        class_sep: float = 1.0,
        seed: int = 0,
    ) -> None:
        if num_samples < num_classes or num_features < 1 or num_classes < 2:
            raise ValueError(
                "synthetic: need num_samples >= num_classes >= 2 and num_features >= 1, got "
                f"num_samples={num_samples}, num_classes={num_classes}, num_features={num_features}"
            )
        generator = torch.Generator().manual_seed(seed)
        centres = class_sep * torch.randn(num_classes, num_features, generator=generator)
        self.targets = torch.arange(num_samples) % num_classes
        self.x = centres[self.targets] + torch.randn(num_samples, num_features, generator=generator)
        self.classes = [f"class {i}" for i in range(num_classes)]

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.x[index], int(self.targets[index])
