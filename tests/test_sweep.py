"""Sweeps through the CLI (in this process where the jobs run in it, as a process where they do not): a two-job multirun, DDP inside a sweep, the refused combination,
Optuna, and the submitit launcher."""

from __future__ import annotations

import csv
import importlib.util
import json

import pytest
from conftest import TINY, assert_one_line_error, run_cli, run_cli_here
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from vggtune.training.sweep import launcher_overrides

# Only the head trains: each job is a few seconds.
SWEEP = [a for a in TINY if not a.startswith("finetune=")] + ["finetune=linear_probe"]


def _sweep_dir(work):
    dirs = list((work / "outputs" / "multirun").iterdir())
    assert len(dirs) == 1, dirs
    return dirs[0]


def _summary(sweep_dir):
    with open(sweep_dir / "summary.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_two_job_multirun_has_two_job_folders_and_a_sorted_summary(tmp_path, tiny_data):
    proc = run_cli_here("train", "-m", f"data.root={tiny_data}", *SWEEP, "optim.lr=0.1,0.0001", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweep = _sweep_dir(tmp_path)
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1"]
    rows = _summary(sweep)
    assert sorted(r["optim.lr"] for r in rows) == ["0.0001", "0.1"]
    for row in rows:  # each row carries its own job's final metrics
        metrics = json.loads((sweep / row["job"] / "metrics.json").read_text())["metrics"]
        assert float(row["val/acc"]) == pytest.approx(metrics["val/acc"])
    accs = [float(r["val/acc"]) for r in rows]
    assert accs == sorted(accs, reverse=True)
    assert "Sweep summary (2 jobs" in proc.stdout + proc.stderr


def test_sweep_with_ddp_relaunching_is_refused_before_anything_starts(tmp_path, tiny_data):
    proc = run_cli_here("train", "-m", f"data.root={tiny_data}", *SWEEP, "trainer=cpu,ddp_cpu", cwd=tmp_path)
    assert_one_line_error(proc, "trainer.strategy=ddp", "ddp_spawn", "nothing was started")
    assert not (tmp_path / "outputs").exists()


@pytest.mark.slow
def test_ddp_spawn_inside_a_sweep_job_trains_on_two_ranks(tmp_path, tiny_data):
    args = [a for a in SWEEP if not a.startswith("trainer=")]
    proc = run_cli(
        "train",
        "-m",
        f"data.root={tiny_data}",
        *args,
        "trainer=ddp_cpu",
        "trainer.strategy=ddp_spawn",
        "data.test_split=0.0",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweep = _sweep_dir(tmp_path)
    summary = json.loads((sweep / "0" / "metrics.json").read_text())
    assert summary["replicas"] == {"world_size": 2, "identical": True}
    assert len(_summary(sweep)) == 1


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("hydra_plugins.hydra_optuna_sweeper") is None,
    reason="hydra-optuna-sweeper not installed: pip install 'vggtune[sweep]'",
)
def test_two_trial_optuna_search(tmp_path, tiny_data):
    proc = run_cli_here(
        "train",
        "-m",
        f"data.root={tiny_data}",
        *SWEEP,
        "hparams_search=optuna",
        "hydra.sweeper.n_trials=2",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweep = _sweep_dir(tmp_path)
    rows = _summary(sweep)
    assert len(rows) == 2 and all(r["status"] == "done" for r in rows)
    best = OmegaConf.load(sweep / "optimization_results.yaml")
    assert best.best_value == pytest.approx(max(float(r["val/acc"]) for r in rows))


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is None,
    reason="hydra-submitit-launcher not installed: pip install 'vggtune[slurm]'",
)
def test_submitit_local_launcher_runs_the_job_in_its_own_process(tmp_path, tiny_data):
    proc = run_cli("train", f"data.root={tiny_data}", *SWEEP, "hydra/launcher=submitit_local", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweep = _sweep_dir(tmp_path)
    assert (sweep / ".submitit").is_dir() and (sweep / "0" / "metrics.json").is_file()
    assert _summary(sweep)[0]["status"] == "done"


@pytest.mark.skipif(
    importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is None,
    reason="hydra-submitit-launcher not installed: pip install 'vggtune[slurm]'",
)
def test_slurm_launcher_resources_follow_the_trainer_unless_set():
    base = ["hydra/launcher=submitit_slurm", "trainer=ddp", "trainer.devices=8", "trainer.num_nodes=2"]
    with initialize_config_module("vggtune.conf", version_base="1.3"):
        cfg = compose("train", overrides=[*base, *launcher_overrides("submitit_slurm", base)], return_hydra_config=True)
        launcher = cfg.hydra.launcher
        assert (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node) == (2, 8, 8)
        mine = [*base, "hydra.launcher.gpus_per_node=4"]
        cfg = compose("train", overrides=[*mine, *launcher_overrides("submitit_slurm", mine)], return_hydra_config=True)
        assert cfg.hydra.launcher.gpus_per_node == 4


def test_failed_jobs_are_in_the_summary_with_their_reason_and_the_sweep_exits_non_zero(tmp_path, tiny_data):
    proc = run_cli_here(
        "train", "-m", f"data.root={tiny_data}", *SWEEP, "optim.lr=-1,0.001", "data.batch_size=0", cwd=tmp_path
    )
    sweep = _sweep_dir(tmp_path)
    rows = {r["job"]: r for r in _summary(sweep)}
    assert set(rows) == {"0", "1"} and {r["status"] for r in rows.values()} == {"failed"}
    assert "optim.lr must be a positive number" in rows["0"]["error"]
    assert "data.batch_size" in rows["1"]["error"]
    assert rows["1"]["error"] == (sweep / "1" / "error.txt").read_text().strip()
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors[-1].startswith("error: 2 of 2 sweep jobs failed") and "summary.csv" in errors[-1], errors
    assert "Traceback" not in proc.stderr


def test_an_unexpected_error_in_one_job_is_recorded_and_the_sweep_goes_on(tmp_path, tiny_data, monkeypatch):
    import vggtune.tasks.train

    def broken(cfg):
        raise RuntimeError(f"boom in {cfg.optim.lr}")

    monkeypatch.setattr(vggtune.tasks.train, "run", broken)
    proc = run_cli_here("train", "-m", f"data.root={tiny_data}", *SWEEP, "optim.lr=0.1,0.01", cwd=tmp_path)
    sweep = _sweep_dir(tmp_path)
    rows = {r["job"]: r for r in _summary(sweep)}
    assert set(rows) == {"0", "1"}, "the first job's error must not end the sweep"
    assert rows["0"]["error"].startswith("RuntimeError: boom in 0.1")
    assert rows["1"]["error"].startswith("RuntimeError: boom in 0.01")
    assert "Traceback" in (sweep / "0" / "train.log").read_text()  # the traceback is kept in the job's log
    assert proc.returncode == 2
