"""Cluster signals and shared run directories: SIGTERM and SLURM's pre-emption stop a run non-zero with a checkpoint
that the same command resumes exactly; one run at a time resumes a run directory; options a checkpoint overrides."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, Run, run_main

from callbacks.run_directory import lock_run
from utils import ConfigError

# 350 steps an epoch; dropout draws random numbers at every one of them.
DROPOUT = (
    "--model", "mlp", "--model.net_args.dropout=0.5", "--trainer.max_epochs=2", "--data.batch_size=8",
    "--trainer.deterministic=true", "--trainer.enable_progress_bar=false", "--test_after_fit=false",
)  # fmt: skip
SIGTERM_STATUS = 128 + signal.SIGTERM


def start(
    args: tuple[str, ...], cwd: Path, env: dict[str, str] | None = None, new_group: bool = False
) -> subprocess.Popen:
    """Start main.py with `args`; with `new_group`, in a process group of its own, as a scheduler starts a job."""
    return subprocess.Popen(
        [sys.executable, str(ROOT / "main.py"), *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}, start_new_session=new_group,
    )  # fmt: skip


def signal_mid_epoch(proc: subprocess.Popen, signum: int) -> tuple[str, str]:
    """Send `signum` once the second epoch has begun, and wait for the process to end."""
    for line in proc.stdout:
        if line.startswith("epoch 1/"):  # printed as the second epoch starts
            time.sleep(0.3)  # into its steps
            proc.send_signal(signum)
            break
    out, err = proc.communicate(timeout=120)
    return out, err


@pytest.mark.slow
def test_sigterm_exits_non_zero_with_a_checkpoint_that_resumes_exactly(tmp_path: Path) -> None:
    # On one device: under DDP, Lightning raises a SIGTERM on the process that received it at some points, not on
    # all of them together, and a run stopped there can hang (see the README's signals section).
    args = (*DROPOUT, "--trainer.accelerator=cpu", "--trainer.devices=1")
    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    whole.mkdir()
    stopped.mkdir()
    uninterrupted = run_main(*args, cwd=whole)
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-2000:]
    proc = start(args, stopped)
    out, err = signal_mid_epoch(proc, signal.SIGTERM)
    assert proc.returncode == SIGTERM_STATUS, err[-2000:]
    assert "error: stopped by SIGTERM at training step" in err and "Traceback" not in err
    assert "resume with the same command and --ckpt_path last" in err
    last = torch.load(stopped / "runs/mlp/version_0/checkpoints/last.ckpt", weights_only=True)
    steps = 350  # per epoch
    assert steps < last["global_step"] < 2 * steps  # in the middle of the second epoch
    resumed = run_main(*args, "--ckpt_path", "last", cwd=stopped)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    expected = torch.load(uninterrupted.run_dir / "model.pth", weights_only=True)
    got = torch.load(resumed.run_dir / "model.pth", weights_only=True)
    assert all(torch.equal(expected[k], got[k]) for k in expected)


@pytest.mark.slow
def test_slurm_preemption_requeues_and_the_requeued_job_resumes_its_own_run(tmp_path: Path) -> None:
    # A stand-in scontrol: records the requeue, then ends the job as SLURM does, with SIGTERM to all its processes
    # (the loader worker too).
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(
        f"#!{sys.executable}\nimport os, signal, sys\n"
        "with open(os.environ['SCONTROL_LOG'], 'a') as log:\n    log.write(' '.join(sys.argv[1:]) + '\\n')\n"
        "os.killpg(os.getpgid(os.getppid()), signal.SIGTERM)\n"
    )
    scontrol.chmod(0o755)
    log = tmp_path / "scontrol.log"
    slurm = {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "SCONTROL_LOG": str(log), "SLURM_JOB_ID": "4242",
        "SLURM_NTASKS": "1", "SLURM_JOB_NAME": "train", "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0",
    }  # fmt: skip
    args = (*DROPOUT, "--data.in_memory=off", "--data.num_workers=1")
    proc = start(args, tmp_path, slurm, new_group=True)
    out, err = signal_mid_epoch(proc, signal.SIGUSR1)
    assert proc.returncode == SIGTERM_STATUS and "Traceback" not in err, err[-2000:]
    assert err.splitlines()[-1].startswith("error: stopped by SIGTERM at training step")
    assert log.read_text() == "requeue 4242\n"
    run = tmp_path / "runs/mlp/version_0"
    assert (run / "checkpoints/hpc_ckpt_1.ckpt").is_file() and (run / "checkpoints/last.ckpt").is_file()
    assert (run / "slurm_job").read_text() == "4242\n"
    # A later run of the same model by another job, which `--ckpt_path last` would take.
    other = tmp_path / "runs/mlp/version_1"
    (other / "checkpoints").mkdir(parents=True)
    shutil.copy(run / "checkpoints/last.ckpt", other / "checkpoints/last.ckpt")
    (other / "slurm_job").write_text("999\n")
    # The requeued job: the same command, with SLURM's restart count.
    requeued = start(args, tmp_path, {**slurm, "SLURM_RESTART_COUNT": "1"})
    out, err = requeued.communicate(timeout=300)
    assert requeued.returncode == 0, err[-2000:]
    assert "SLURM requeued job 4242: it goes on with its run runs/mlp/version_0" in out
    assert "Resuming version_0 from runs/mlp/version_0/checkpoints/last.ckpt" in out
    assert "Trained 2 epochs (700 steps)" in out
    assert not (tmp_path / "runs/mlp/version_2").exists()


def test_a_run_directory_is_resumed_by_one_process_at_a_time(tmp_path: Path) -> None:
    run = tmp_path / "version_0"
    lock = lock_run(run)
    with pytest.raises(ConfigError, match=rf"{run} is in use by process {os.getpid()}, which trains into it"):
        lock_run(run)
    lock.close()
    lock_run(run).close()  # free again once the holder is done
    # A holder that crashes (here: one that holds the lock as lock_run does, then is killed) leaves nothing stuck.
    code = (
        f"import fcntl, os, time; lock = open({str(run / '.lock')!r}, 'a+'); "
        "fcntl.flock(lock, fcntl.LOCK_EX); "
        "lock.truncate(0); lock.write(f'process {os.getpid()}'); lock.flush(); print('locked', flush=True); "
        "time.sleep(60)"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "locked\n"
    with pytest.raises(ConfigError, match=f"in use by process {holder.pid}"):
        lock_run(run)
    holder.kill()
    holder.wait()
    lock_run(run).close()


@pytest.mark.slow
def test_resuming_a_run_in_use_and_options_a_checkpoint_overrides_are_one_line_each(
    tmp_path: Path, line_run: Run
) -> None:
    run = line_run.run_dir
    lock = lock_run(run)
    busy = run_main("--model", "linear", "--ckpt_path", str(run / "checkpoints/last.ckpt"), cwd=line_run.cwd)
    lock.close()
    assert busy.returncode == 2 and "Traceback" not in busy.stderr
    assert f"error: {run.relative_to(line_run.cwd)} is in use by process {os.getpid()}" in busy.stderr
    ckpt = str(run / "checkpoints/last.ckpt")
    overridden = run_main("test", "--model", "linear", "--model.lr=0.05", "--ckpt_path", ckpt, cwd=tmp_path)
    assert overridden.returncode == 2 and "Traceback" not in overridden.stderr
    assert "error: --model.lr 0.05: the checkpoint of --ckpt_path has model.lr 0.01, and a" in overridden.stderr
    same = run_main("test", "--model", "linear", "--model.lr=0.01", "--ckpt_path", ckpt, cwd=tmp_path)
    assert same.returncode == 0, same.stderr[-2000:]


@pytest.mark.slow
def test_a_parse_error_is_one_line_and_a_pointer_to_help(tmp_path: Path) -> None:
    run = run_main("--model", "linear", "--trainer.max_epochs=many", cwd=tmp_path)
    assert run.returncode == 2
    error, pointer = run.stderr.splitlines()  # no usage before them
    assert error.startswith('error: Parser key "trainer.max_epochs":') and error.endswith("Given value: many")
    assert pointer == "(python main.py fit --help lists the options)"


@pytest.mark.slow
def test_sigterm_during_the_evaluation_after_training_says_what_was_not_done(tmp_path: Path) -> None:
    args = ("--model", "mlp", "--trainer.max_epochs=1", "--trainer.limit_train_batches=2",
            "--data.dataset_args.num_samples=300000", "--trainer.enable_progress_bar=false")  # fmt: skip
    proc = start(args, tmp_path)
    for line in proc.stdout:
        if line.startswith("Trained 1 epoch"):  # printed as fit ends; validation and test of 60,000 items follow
            time.sleep(0.2)
            proc.send_signal(signal.SIGTERM)
            break
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == SIGTERM_STATUS and "Traceback" not in err
    assert err.splitlines()[-1] == (
        "error: stopped by SIGTERM after training had finished (its checkpoints are kept): the validation and test "
        "of the best checkpoint, results.json and model.pth were not done; run them with "
        "python main.py test --model mlp --ckpt_path best"
    )
    assert not (tmp_path / "runs/mlp/version_0/results.json").exists()
