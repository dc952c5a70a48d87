"""The straight-line regression as a plain PyTorch script, as a first tutorial writes it: y = 0.7x + 0.3, L1 loss,
SGD, 1000 epochs, a test pass every epoch, a plot of the predictions, and the state_dict saved and loaded back.

    python bench/raw_line.py --out_dir DIR --report out.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402


class LinearRegressionModelV2(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear_layer = nn.Linear(in_features=1, out_features=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_layer(x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out_dir", required=True)
    parser.add_argument("--report", required=True)
    parser.add_argument("--epochs", type=int, default=1000)
    args = parser.parse_args()
    report: dict = {"workload": "line", "epoch_times": []}

    weight, bias = 0.7, 0.3
    X = torch.arange(0, 1, 0.02).unsqueeze(dim=1)
    y = weight * X + bias
    train_split = int(0.8 * len(X))
    X_train, y_train, X_test, y_test = X[:train_split], y[:train_split], X[train_split:], y[train_split:]

    torch.manual_seed(42)
    model_1 = LinearRegressionModelV2()
    loss_fn = nn.L1Loss()
    optimizer = torch.optim.SGD(params=model_1.parameters(), lr=0.01)
    for epoch in range(args.epochs):
        start = time.perf_counter()
        report.setdefault("first_step", time.time())
        model_1.train()
        y_pred = model_1(X_train)
        loss = loss_fn(y_pred, y_train)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        report["epoch_times"].append(time.perf_counter() - start)
        model_1.eval()
        with torch.inference_mode():
            test_pred = model_1(X_test)
            test_loss = loss_fn(test_pred, y_test)
        if epoch % 100 == 0:
            print(f"Epoch: {epoch} | Train loss: {loss} | Test loss: {test_loss}")

    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plt.figure(figsize=(10, 7))
    plt.scatter(X_train, y_train, c="b", s=4, label="Training data")
    plt.scatter(X_test, y_test, c="g", s=4, label="Testing data")
    plt.scatter(X_test, test_pred, c="r", s=4, label="Predictions")
    plt.legend(prop={"size": 14})
    plt.savefig(out / "predictions.png")
    torch.save(obj=model_1.state_dict(), f=out / "01_pytorch_workflow_model_1.pth")
    loaded = LinearRegressionModelV2()
    loaded.load_state_dict(torch.load(out / "01_pytorch_workflow_model_1.pth"))
    loaded.eval()
    with torch.inference_mode():
        assert torch.equal(loaded(X_test), test_pred)
    report.update(
        test_loss=float(test_loss),
        weight=model_1.linear_layer.weight.item(),
        bias=model_1.linear_layer.bias.item(),
    )
    Path(args.report).write_text(json.dumps(report))


if __name__ == "__main__":
    main()
