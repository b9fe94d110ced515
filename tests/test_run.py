"""The run engine: exact resumption, extension of finished runs, one writer per folder, bad files."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from conftest import ROOT, run_cli, tiny_config
from rlstruct.errors import RLStructError
from rlstruct.run import RunFolder
from rlstruct.runner import train

pytestmark = pytest.mark.slow


def config(tmp_path, env="cartpole", **overrides):
    settings = {"progress_bar": False, "eval.freq": 512, "eval.episodes": 2, "eval.final_episodes": 2,
                "checkpoint.freq": 512, "algo.kwargs.n_steps": 256, "algo.kwargs.batch_size": 64,
                "algo.kwargs.n_epochs": 2, "total_timesteps": 1536, "env": env, "policy": "toeplitz",
                "policy.hidden": "[16,16]"}
    settings.update(overrides)
    return OmegaConf.to_container(OmegaConf.create(tiny_config(tmp_path, **settings)), resolve=True)


def parameters(run_dir: Path) -> torch.Tensor:
    from stable_baselines3 import PPO

    model = PPO.load(run_dir / "model.zip")
    return torch.nn.utils.parameters_to_vector(model.policy.parameters()).detach()


def kill_after_first_checkpoint(monkeypatch):
    """Make the run die (as from a kill) right after it writes its first checkpoint."""
    original = RunFolder.write_checkpoint

    def write_then_die(self, *args, **kwargs):
        point = original(self, *args, **kwargs)
        raise KeyboardInterrupt(f"killed after the checkpoint at {point.steps}")

    monkeypatch.setattr(RunFolder, "write_checkpoint", write_then_die)


@pytest.mark.parametrize("env", ["cartpole", "hopper"])
def test_a_killed_run_resumes_bit_for_bit(tmp_path, monkeypatch, env):
    """Steps, updates, normalization statistics and parameters equal an uninterrupted run's."""
    whole = train(config(tmp_path, env), tmp_path / "whole")
    with monkeypatch.context() as patch:
        kill_after_first_checkpoint(patch)
        with pytest.raises(KeyboardInterrupt):
            train(config(tmp_path, env), tmp_path / "killed")
    point = RunFolder(tmp_path / "killed").latest_checkpoint()
    assert point is not None and point.steps == 512
    resumed = train(config(tmp_path, env, resume=True), tmp_path / "killed")
    assert resumed["steps"] == whole["steps"] == 1536
    assert torch.equal(parameters(tmp_path / "killed"), parameters(tmp_path / "whole"))
    from stable_baselines3 import PPO

    assert PPO.load(tmp_path / "killed" / "model.zip")._n_updates == PPO.load(tmp_path / "whole" / "model.zip")._n_updates == 12
    if env == "hopper":  # normalized: the statistics saw the same observations and returns
        stats = [pickle.loads((tmp_path / run / "vecnormalize.pkl").read_bytes()) for run in ("killed", "whole")]
        assert stats[0].obs_rms.count == stats[1].obs_rms.count
        np.testing.assert_array_equal(stats[0].obs_rms.mean, stats[1].obs_rms.mean)
        np.testing.assert_array_equal(stats[0].ret_rms.var, stats[1].ret_rms.var)
    assert resumed["final_eval"]["rewards"] == whole["final_eval"]["rewards"]
    # the evaluations the killed session wrote after its checkpoint are not duplicated
    steps = [int(r["step"]) for r in RunFolder(tmp_path / "killed").evaluations()]
    assert steps == [int(r["step"]) for r in RunFolder(tmp_path / "whole").evaluations()] == [512, 1024, 1536]


def test_extending_a_finished_run_continues_from_its_final_model(tmp_path):
    whole = train(config(tmp_path, total_timesteps=1536), tmp_path / "whole")
    train(config(tmp_path, total_timesteps=1024), tmp_path / "short")
    assert not (tmp_path / "short" / "checkpoints").exists()
    again = train(config(tmp_path, total_timesteps=1024, resume=True), tmp_path / "short")
    assert again["steps"] == 1024  # already finished: nothing to do, nothing replaced
    extended = train(config(tmp_path, total_timesteps=1536, resume=True), tmp_path / "short")
    assert extended["steps"] == whole["steps"]
    assert torch.equal(parameters(tmp_path / "short"), parameters(tmp_path / "whole"))
    assert not (tmp_path / "short" / "checkpoints").exists()


def test_a_finished_run_is_not_replaced_without_resume(tmp_path):
    train(config(tmp_path), tmp_path / "run")
    before = (tmp_path / "run" / "model.zip").read_bytes()
    with pytest.raises(RLStructError, match="already holds a finished run .* pass resume=true"):
        train(config(tmp_path), tmp_path / "run")
    assert (tmp_path / "run" / "model.zip").read_bytes() == before


def test_a_second_writer_is_refused_and_a_dead_writers_lock_is_not_stale(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'a+'); "
         "fcntl.flock(f, fcntl.LOCK_EX); f.write('pid 4242'); f.flush(); print('locked', flush=True); time.sleep(60)",
         str(run_dir / ".lock")], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    try:
        with pytest.raises(RLStructError, match="is being written by pid 4242"):
            train(config(tmp_path), run_dir)
        assert not (run_dir / "config.yaml").exists(), "a refused writer must not touch the folder"
    finally:
        holder.kill()  # as kill -9: the kernel drops the lock
        holder.wait()
    assert train(config(tmp_path), run_dir)["status"] == "finished"


def test_two_train_py_into_one_folder(tmp_path):
    """The second of two concurrent CLI runs into one folder stops with one line."""
    args = ["train.py", "env=cartpole", "progress_bar=false", "eval.freq=0", "checkpoint.freq=0",
            "total_timesteps=20000", f"hydra.run.dir={tmp_path / 'run'}"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    first = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    assert "->" in first.stdout.readline()  # the banner: the first run holds the lock
    second = run_cli(*args)
    first.kill()
    first.wait()
    assert second.returncode == 2 and "Traceback" not in second.stderr
    assert second.stderr.strip().splitlines()[-1].startswith("error: ") and "is being written by pid" in second.stderr


@pytest.mark.parametrize("damage,needle", [
    ("pointer", "checkpoint pointer .* is corrupt"),
    ("model", "is corrupt or truncated"),
    ("metrics", "metrics.json is corrupt"),
])
def test_damaged_run_files_give_one_line_errors(tmp_path, monkeypatch, damage, needle):
    with monkeypatch.context() as patch:
        kill_after_first_checkpoint(patch)
        with pytest.raises(KeyboardInterrupt):
            train(config(tmp_path), tmp_path / "run")
    folder = RunFolder(tmp_path / "run")
    point = folder.latest_checkpoint()
    if damage == "pointer":
        (tmp_path / "run" / "checkpoints" / "latest.json").write_text("{not json")
    elif damage == "model":
        point.model.write_bytes(point.model.read_bytes()[:100])
    else:
        (tmp_path / "run" / "metrics.json").write_text("{")
    with pytest.raises(RLStructError, match=needle):
        train(config(tmp_path, resume=True), tmp_path / "run")


def test_an_out_dir_that_cannot_be_created(tmp_path):
    (tmp_path / "file").write_text("in the way")
    proc = run_cli("train.py", "env=cartpole", "progress_bar=false", f"out_dir={tmp_path / 'file'}")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "cannot create the run folder" in proc.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("override,needle", [
    ("seed=abc", "seed must be an integer >= 0, got 'abc'; fix seed"),
    ("total_timesteps=lots", "total_timesteps must be a positive integer, got 'lots'"),
])
def test_a_bad_count_is_a_one_line_error(tmp_path, override, needle):
    proc = run_cli("train.py", "env=cartpole", f"out_dir={tmp_path}", override)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == [f"error: {proc.stderr.strip()[7:]}"]
    assert needle in proc.stderr


def test_an_unwritable_checkpoint_folder_is_a_one_line_error(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root ignores folder permissions")
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints").chmod(0o500)
    try:
        with pytest.raises(RLStructError, match="cannot write a checkpoint"):
            train(config(tmp_path), run_dir)
    finally:
        (run_dir / "checkpoints").chmod(0o700)


def test_a_checkpoint_folder_replaced_by_a_file_is_a_one_line_error(tmp_path):
    """Works as root too: a file where the checkpoints folder should be."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "checkpoints").write_text("not a folder")
    with pytest.raises(RLStructError, match="cannot write a checkpoint"):
        train(config(tmp_path), run_dir)


def test_evaluating_on_an_env_with_other_spaces(tmp_path):
    train(config(tmp_path), tmp_path / "run")
    saved = (tmp_path / "run" / "config.yaml").read_text().replace("CartPole-v1", "Acrobot-v1")
    (tmp_path / "run" / "config.yaml").write_text(saved)
    proc = run_cli("evaluate.py", str(tmp_path / "run"), "--episodes", "1")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "was trained on another observation space" in proc.stderr


def test_a_compact_folder_without_meta_json(tmp_path):
    folder = tmp_path / "policy"
    folder.mkdir()
    (folder / "policy.safetensors").write_bytes(b"x")
    proc = run_cli("evaluate.py", str(folder))
    assert proc.returncode == 2 and "no meta.json" in proc.stderr, proc.stderr[-2000:]


def test_metrics_record_the_evaluation_protocol(tmp_path):
    metrics = train(config(tmp_path, **{"eval.seed": 123}), tmp_path / "run")
    final = metrics["final_eval"]
    assert final["eval_seed"] == 123 and len(final["rewards"]) == final["episodes"] == 2
    assert "population" in final["std_kind"]
    rows = RunFolder(tmp_path / "run").evaluations()
    assert len(rows[0]["rewards"].split()) == 2
    json.dumps(metrics)  # plain JSON


def test_rescore_replays_the_runs_own_final_episodes_and_keeps_the_old_evaluation(tmp_path):
    metrics = train(config(tmp_path, **{"eval.seed": 77}), tmp_path / "run")
    proc = run_cli("evaluate.py", str(tmp_path / "run"), "--episodes", "2", "--seed", "77", "--rescore")
    assert proc.returncode == 0, proc.stderr[-2000:]
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    # the same seed replays the run's own final evaluation exactly
    assert saved["final_eval"]["rewards"] == metrics["final_eval"]["rewards"]
    assert saved["final_eval_history"] == [metrics["final_eval"]]
    assert saved["final_eval"]["rescored_by"].startswith("python evaluate.py")


def test_a_run_killed_before_its_first_checkpoint_starts_over(tmp_path, monkeypatch):
    def die(self, *args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:  # killed at its first checkpoint, before writing it
        patch.setattr(RunFolder, "write_checkpoint", die)
        with pytest.raises(KeyboardInterrupt):
            train(config(tmp_path), tmp_path / "run")
    folder = RunFolder(tmp_path / "run")
    assert folder.read_metrics()["status"] == "running" and folder.evaluations()  # one row written
    assert train(config(tmp_path, resume=True), tmp_path / "run")["status"] == "finished"
    steps = [int(r["step"]) for r in folder.evaluations()]
    assert steps == sorted(set(steps))  # the killed attempt's rows are not kept beside the new ones
