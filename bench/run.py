"""The benchmark: the template against plain PyTorch training loops, side by side, in one run.

    python bench/run.py                                  # all workloads, 3 repeats, MNIST from ../shared/data
    python bench/run.py --workloads mlp --repeats 5 --epochs mlp=2
    python bench/run.py --device cuda                    # on a GPU: also bf16-mixed, channels_last, compile

Per workload (the straight-line regression y = 0.7x + 0.3, the MLP and the CNN on MNIST) it runs, in turn and
repeated: `raw-naive` (bench/raw_naive.py, the textbook loop; for the line, bench/raw_line.py, a plain script),
`raw-tensor` (bench/raw_tensor.py) and `template` (`python main.py ...` with the same net, optimizer, batch size,
epochs, split and seed, logging, checkpointing and progress bar on). Each is a fresh process, timed from its launch.
It writes bench/RESULTS.md (medians, spreads and the ratios against the targets), bench/ratios.png and the numbers in
bench/results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))

from bench.workloads import WORKLOADS  # noqa: E402

IMPLEMENTATIONS = ("raw-naive", "raw-tensor", "template")
# The implementations each workload runs: the line has no careful loop (its seed script already is one); the MLP,
# whose steps are small enough for Lightning's per-step cost to show, also runs with 8 optimizer steps per
# Lightning step (`--data.group_batches 8`).
IMPLEMENTATIONS_OF = {"line": ("raw-naive", "template"), "mlp": (*IMPLEMENTATIONS, "template-grouped")}
GROUPED = ["--data.group_batches", "8"]
# Targets: (workload, numerator, denominator, measure) -> the largest ratio of medians allowed.
TARGETS = {
    ("cnn", "template", "raw-tensor", "epoch"): 1.05,
    ("mlp", "template", "raw-tensor", "epoch"): 1.25,
    ("mlp", "template", "raw-naive", "epoch"): 0.25,
    ("cnn", "template", "raw-naive", "epoch"): 0.7,
    ("line", "template", "raw-naive", "wall"): 1.5,
    ("mlp", "template", "raw-tensor", "peak_rss_mb"): 1.1,
    ("mlp", "template-grouped", "raw-tensor", "epoch"): 1.25,
}
MEASURES = {"epoch": "per-epoch", "wall": "wall", "peak_rss_mb": "peak RSS"}
HELP_TARGET = 1.2  # `python main.py --help` against `python -c "import lightning.pytorch"`
PROFILE_HEAD = "ms per training step"  # where profile_step.py's table starts


@dataclass
class Run:
    """One process's measurements."""

    wall: float
    startup: float | None
    epochs: list[float]
    peak_rss_mb: float
    result: dict[str, Any] = field(default_factory=dict)


def timed(command: list[str]) -> tuple[float, float, str, float]:
    """Run `command` from the project root: its wall time, peak resident memory (MiB), output and start time."""
    start = time.time()
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)  # this child's own peak memory, unlike getrusage
    wall = time.time() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        sys.exit(f"failed ({process.returncode}): {' '.join(command)}\n{output[-3000:]}")
    scale = 1024 * 1024 if sys.platform == "darwin" else 1024  # ru_maxrss is in bytes on macOS, KiB on Linux
    return wall, usage.ru_maxrss / scale, output, start


def command(impl: str, workload: str, epochs: int, args: argparse.Namespace, out: Path) -> list[str]:
    """The command line of one implementation on one workload; each writes its measurements to out/report.json."""
    report = str(out / "report.json")
    gpu = _gpu_options(args)
    if workload == "line":
        if impl == "template":
            return [
                sys.executable,
                "main.py",
                *WORKLOADS["line"].template_args,
                "--trainer.max_epochs",
                str(epochs),
                *template_common(out, report),
            ]
        return [sys.executable, "bench/raw_line.py", "--out_dir", str(out), "--report", report, "--epochs", str(epochs)]
    if impl.startswith("template"):
        options = {
            "--trainer.accelerator": "gpu" if args.device == "cuda" else "cpu",
            "--trainer.precision": args.precision,
            "--model.channels_last": str(args.channels_last).lower(),
            "--model.compile": str(args.compile).lower(),
        }
        if args.device == "cuda":
            options["--data.in_memory"] = "device"  # as raw-tensor: the data on the GPU
        return [
            sys.executable,
            "main.py",
            *WORKLOADS[workload].template_args,
            "--data.root",
            args.data_root,
            "--trainer.max_epochs",
            str(epochs),
            *[v for kv in options.items() for v in kv],
            *(GROUPED if impl == "template-grouped" else []),
            *template_common(out, report),
        ]
    script = {"raw-naive": "bench/raw_naive.py", "raw-tensor": "bench/raw_tensor.py"}[impl]
    return [
        sys.executable,
        script,
        workload,
        "--data-root",
        args.data_root,
        "--epochs",
        str(epochs),
        "--report",
        report,
        *gpu,
    ]


def template_common(out: Path, report: str) -> list[str]:
    """The options that send a template run's files to `out` and its timings to the JSON file `report`."""
    return [
        "--trainer.default_root_dir",
        str(out),
        "--trainer.logger.init_args.save_dir",
        str(out),
        "--trainer.callbacks+=bench.timing.BenchTiming",
        "--trainer.callbacks.report",
        report,
    ]


def _gpu_options(args: argparse.Namespace) -> list[str]:
    options = ["--device", args.device, "--precision", args.precision]
    return options + ["--channels-last"] * args.channels_last + ["--compile"] * args.compile


def measure(impl: str, workload: str, epochs: int, args: argparse.Namespace) -> Run:
    with tempfile.TemporaryDirectory() as directory:
        out = Path(directory)
        wall, rss, output, start = timed(command(impl, workload, epochs, args, out))
        report = json.loads((out / "report.json").read_text())
        if impl.startswith("template"):
            (results,) = out.glob("*/version_*/results.json")
            report.update(_template_result(json.loads(results.read_text())))
    first = report.get("first_step")
    return Run(wall, first - start if first else None, report["epoch_times"], rss, report)


def _template_result(results: dict[str, Any]) -> dict[str, Any]:
    """The final numbers of a template run, named as the raw loops name theirs."""
    test = results.get("test", {})
    found = {"test_loss": test.get("test/loss"), "test_acc": test.get("test/acc")}
    for name, value in results.get("parameters", {}).items():  # the line's learned weight and bias
        while isinstance(value, list):
            value = value[0]
        found[name] = value
    return {k: v for k, v in found.items() if v is not None}


def startup_times(repeats: int) -> dict[str, list[float]]:
    """Wall times of `python main.py --help` and of `python -c "import lightning.pytorch"`, interleaved."""
    times: dict[str, list[float]] = {"help": [], "import": []}
    for _ in range(repeats):
        times["import"].append(timed([sys.executable, "-c", "import lightning.pytorch"])[0])
        times["help"].append(timed([sys.executable, "main.py", "--help"])[0])
    return times


def summarize(runs: list[Run]) -> dict[str, Any]:
    """Medians and (min, max) spreads of a set of repeats. An epoch time is steady-state: the first epoch of
    each run (warm-up: first allocations, lazy imports) counts only when a run has one epoch."""
    epochs = [t for run in runs for t in (run.epochs[1:] if len(run.epochs) > 1 else run.epochs)]
    summary: dict[str, Any] = {}
    for name, values in {
        "epoch": epochs,
        "wall": [run.wall for run in runs],
        "startup": [run.startup for run in runs if run.startup is not None],
        "peak_rss_mb": [run.peak_rss_mb for run in runs],
    }.items():
        if values:
            summary[name] = {"median": statistics.median(values), "min": min(values), "max": max(values)}
    for key in ("test_acc", "test_loss", "weight", "bias"):
        values = [run.result[key] for run in runs if key in run.result]
        if values:
            summary[key] = {"median": statistics.median(values), "min": min(values), "max": max(values)}
    if any("gpu_peak_bytes" in run.result for run in runs):
        summary["gpu_peak_mb"] = max(run.result.get("gpu_peak_bytes", 0) for run in runs) / 1024**2
    return summary


def machine() -> list[str]:
    """What the numbers were measured on."""
    import lightning
    import torch

    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [ln.split(":", 1)[1].strip() for ln in cpuinfo.read_text().splitlines() if ln.startswith("model name")]
        cpu = names[0] if names else cpu
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    lines = [
        f"- CPU: {cpu}, {cores} cores usable; {platform.system()} {platform.release()}",
        f"- Python {platform.python_version()}, torch {torch.__version__}, lightning {lightning.__version__}",
    ]
    if torch.cuda.is_available():
        lines.append(f"- GPU: {torch.cuda.get_device_name(0)}")
    return lines


def _cell(summary: dict[str, Any], key: str, unit: str = "", digits: int = 2) -> str:
    if key not in summary:
        return "-"
    value = summary[key]
    if not isinstance(value, dict):
        return f"{value:.{digits}f}{unit}"
    median, low, high = value["median"], value["min"], value["max"]
    return f"{median:.{digits}f}{unit} ({low:.{digits}f}-{high:.{digits}f})"


def _ratio(summaries: dict[str, dict[str, Any]], workload: str, top: str, bottom: str, measure: str) -> float | None:
    try:
        return summaries[workload][top][measure]["median"] / summaries[workload][bottom][measure]["median"]
    except KeyError:
        return None


def write_report(measured: dict[str, Any], out_dir: Path) -> list[tuple[str, float, float]]:
    """RESULTS.md in `out_dir` from what a run measured (as results.json holds it); returns (label, ratio,
    target) for the chart."""
    summaries, startup, profile = measured["summaries"], measured["startup"], measured["profile"]
    out = [
        "# Benchmark: the template against plain PyTorch loops",
        "",
        f"`{measured['command']}`",
        f"({measured['repeats']} repeats, interleaved; {measured['seconds'] / 60:.0f} min in all). Medians, with "
        "(min-max) over the "
        "repeats. Per-epoch: training time of one epoch, its batches only, steady state (a run's first epoch is "
        "left out when it has more). Wall: the whole command, imports included. Start-up: from launching the "
        "command to its first training step. Peak RSS: the process's peak resident memory.",
        "",
        *measured["machine"],
        "",
    ]
    for workload, by_impl in summaries.items():
        spec = WORKLOADS[workload]
        epochs = next(iter(by_impl.values())).get("epochs", spec.epochs)
        out += [
            f"## {workload}: {spec.net}, batch {spec.batch_size}, lr {spec.lr}, {epochs} epochs",
            "",
            "| implementation | per-epoch (s) | wall (s) | start-up (s) | result | peak RSS (MiB) |",
            "|---|---|---|---|---|---|",
        ]
        if workload == "line":
            out[-2:-2] = ["`raw-naive` is bench/raw_line.py, a plain script that already trains on tensors.", ""]
        for impl, summary in by_impl.items():
            if workload == "line":
                result = (
                    f"test L1 {_cell(summary, 'test_loss', digits=4)}; w {_cell(summary, 'weight', digits=4)}, "
                    f"b {_cell(summary, 'bias', digits=4)}"
                )
            else:
                result = f"test acc {_cell(summary, 'test_acc', digits=4)}"
            out.append(
                f"| {impl} | {_cell(summary, 'epoch', digits=3)} | {_cell(summary, 'wall', digits=1)} | "
                f"{_cell(summary, 'startup', digits=1)} | {result} | {_cell(summary, 'peak_rss_mb', digits=0)} |"
            )
        out.append("")
    chart: list[tuple[str, float, float]] = []
    out += ["## Targets", "", "| ratio of medians | measured | target | met |", "|---|---|---|---|"]
    for (workload, top, bottom, measure), target in TARGETS.items():
        ratio = _ratio(summaries, workload, top, bottom, measure)
        if ratio is None:
            continue
        label = f"{workload}: {top} / {bottom}, {MEASURES[measure]}"
        chart.append((label, ratio, target))
        out.append(f"| {label} | {ratio:.2f} | <= {target} | {'yes' if ratio <= target else '**no**'} |")
    if startup["help"]:
        ratio = statistics.median(startup["help"]) / statistics.median(startup["import"])
        label = "`main.py --help` / `import lightning.pytorch`"
        chart.append(("main.py --help / import lightning.pytorch", ratio, HELP_TARGET))
        out.append(f"| {label} | {ratio:.2f} | <= {HELP_TARGET} | {'yes' if ratio <= HELP_TARGET else '**no**'} |")
        out += [
            "",
            f"`python main.py --help`: {statistics.median(startup['help']):.2f} s; "
            f'`python -c "import lightning.pytorch"`: {statistics.median(startup["import"]):.2f} s (medians).',
        ]
    out += _misses(summaries)
    if profile:
        out += ["", "## Where an MLP training step's time goes", "", "`python bench/profile_step.py`:", "", "```"]
        out += [*profile.strip().splitlines(), "```", ""]
        out += [
            "`raw`: forward, loss, backward and Adam on the same in-memory batches. `lightning`: `Trainer.fit` of "
            "MInterface with no logger, checkpoint, progress bar or callback, so Lightning's automatic-optimization "
            "loop and the module's training step (the loss window, train accuracy). `template`: what `python "
            "main.py` adds to that (TensorBoard, checkpointing, early stopping, LR monitor, training summary, NaN "
            "guard, progress bar, classification figures)."
        ]
    (out_dir / "RESULTS.md").write_text("\n".join(out) + "\n" + _kept_notes(out_dir / "RESULTS.md"))
    return chart


# RESULTS.md from this line on is written by hand (measurements of other scripts); a new report keeps it.
NOTES_MARK = "<!-- notes: kept when bench/run.py rewrites this file -->"


def _kept_notes(path: Path) -> str:
    text = path.read_text() if path.is_file() else ""
    return "\n" + text[text.index(NOTES_MARK) :] if NOTES_MARK in text else ""


def _misses(summaries: dict[str, dict[str, Any]]) -> list[str]:
    """A line per missed target saying what bounds it, from the measurements themselves."""
    lines = []
    for (workload, top, bottom, measure), target in TARGETS.items():
        ratio = _ratio(summaries, workload, top, bottom, measure)
        if ratio is None or ratio <= target:
            continue
        if bottom == "raw-naive" and measure == "epoch":
            floor = _ratio(summaries, workload, "raw-tensor", "raw-naive", "epoch")
            if floor is not None and floor > target:
                lines.append(
                    f"- {workload}, template / raw-naive: even the careful loop takes {floor:.2f} of the naive one's "
                    "time here, so no data path reaches the target: the step's compute, not the data, sets the time."
                )
            else:
                lines.append(
                    f"- {workload}, template / raw-naive: serving the data costs the template what it costs the "
                    f"careful loop ({floor:.2f} of the naive time); the rest is the per-step overhead split below."
                )
        elif bottom == "raw-tensor" and measure == "epoch":
            line = (
                f"- {workload}, {top} / raw-tensor: the difference is Lightning's training loop and what the "
                "template adds to each step; the profile below splits it."
            )
            grouped = _ratio(summaries, workload, "template-grouped", "raw-tensor", "epoch")
            if top == "template" and grouped is not None:
                line += f" With 8 optimizer steps per Lightning step (`{' '.join(GROUPED)}`) it is {grouped:.2f}."
            lines.append(line)
        else:
            lines.append(f"- {workload}, {top} / {bottom} ({MEASURES[measure]}): {ratio:.2f} over the target {target}.")
    return ["", "Missed targets:", "", *lines] if lines else []


def plot(chart: list[tuple[str, float, float]], out: Path) -> None:
    """ratios.png in `out`: each measured ratio as a bar, its target as a tick."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(9, 0.6 * len(chart) + 1.2))
    labels = [label for label, _, _ in chart]
    ratios = [ratio for _, ratio, _ in chart]
    colours = ["tab:green" if ratio <= target else "tab:red" for _, ratio, target in chart]
    axes.barh(labels, ratios, color=colours)
    axes.scatter([target for _, _, target in chart], labels, marker="|", s=400, color="black", label="target")
    for y, ratio in enumerate(ratios):
        axes.text(ratio, y, f" {ratio:.2f}", va="center")
    axes.invert_yaxis()
    axes.set_xlabel("ratio of medians (lower is faster)")
    axes.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(out / "ratios.png", dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workloads", nargs="+", choices=list(WORKLOADS), default=list(WORKLOADS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", nargs="*", default=[], metavar="WORKLOAD=N", help="e.g. cnn=1")
    parser.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data"), help="folder holding MNIST/raw/")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--precision", default="32-true", choices=["32-true", "bf16-mixed"])
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--out", type=Path, default=BENCH, help="folder for RESULTS.md, ratios.png, results.json")
    parser.add_argument("--report-from", type=Path, help="only write the report, from a run's results.json")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.report_from:
        measured = json.loads(args.report_from.read_text())
    else:
        measured = run_all(args)
        (args.out / "results.json").write_text(json.dumps(measured, indent=2) + "\n")
    plot(write_report(measured, args.out), args.out)
    print((args.out / "RESULTS.md").read_text())


def run_all(args: argparse.Namespace) -> dict[str, Any]:
    """Every workload and implementation, repeated, then the start-up and per-step profiles: what the report
    needs, as results.json holds it."""
    epochs = {w: WORKLOADS[w].epochs for w in args.workloads}
    epochs.update({w: int(n) for w, n in (item.split("=") for item in args.epochs)})
    workloads = list(args.workloads)
    if not (Path(args.data_root) / "MNIST" / "raw").is_dir() and {"mlp", "cnn"} & set(workloads):
        print(f"skipping the MNIST workloads: no MNIST/raw under {Path(args.data_root).resolve()} (--data-root)")
        workloads = [w for w in workloads if w == "line"]
    began = time.time()
    runs: dict[str, dict[str, list[Run]]] = {w: {} for w in workloads}
    for repeat in range(args.repeats):
        for workload in workloads:
            # Interleaved, so that a slow spell of the machine touches every implementation.
            for impl in IMPLEMENTATIONS_OF.get(workload, IMPLEMENTATIONS):
                run = measure(impl, workload, epochs[workload], args)
                runs[workload].setdefault(impl, []).append(run)
                print(
                    f"[{repeat + 1}/{args.repeats}] {workload:4} {impl:16} wall {run.wall:6.1f} s, epoch "
                    f"{statistics.median(run.epochs):.3f} s",
                    flush=True,
                )
    startup = startup_times(args.repeats)
    profile = ""
    if "mlp" in workloads:
        output = timed([sys.executable, "bench/profile_step.py", "--data-root", args.data_root])[2]
        profile = output[output.index(PROFILE_HEAD) :]
    device = f"- Device: {args.device}, precision {args.precision}"
    device += (", channels_last" if args.channels_last else "") + (", torch.compile" if args.compile else "")
    return {
        "command": f"python bench/run.py {' '.join(sys.argv[1:])}".strip(),
        "repeats": args.repeats,
        "seconds": time.time() - began,
        "machine": [*machine(), device],
        "summaries": {w: {i: {**summarize(r), "epochs": epochs[w]} for i, r in by.items()} for w, by in runs.items()},
        "startup": startup,
        "profile": profile,
    }


if __name__ == "__main__":
    main()
