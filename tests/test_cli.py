"""train.py / evaluate.py end to end on CartPole: learning, evaluation, resume, bad input."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, run_cli

FAST = ["env=cartpole", "progress_bar=false", "eval.freq=0", "eval.final_episodes=5"]
# the shared run: periodic evaluations too, so that evaluations.csv exists
TRAINED = [*FAST[:2], "eval.freq=2048", "eval.episodes=2", "eval.final_episodes=5"]


def one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("error: "), proc.stderr
    for needle in needles:
        assert needle in line, line
    return line


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """One short KAMA PPO run on CartPole shared by the tests below."""
    out = tmp_path_factory.mktemp("runs")
    proc = run_cli(
        "train.py", *TRAINED, "policy=kama", "total_timesteps=6000", "checkpoint.freq=2048",
        f"out_dir={out}", "seed=1",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run_dir,) = [p for p in out.iterdir() if p.is_dir()]
    return run_dir


def test_train_writes_the_run_folder(trained_run):
    for name in ["config.yaml", "metrics.json", "model.zip", "state.pkl", "evaluations.csv"]:
        assert (trained_run / name).exists(), name
    assert not (trained_run / "checkpoints").exists(), "a finished run keeps no checkpoints"
    assert any((trained_run / "tb").iterdir()), "no tensorboard events"
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert metrics["status"] == "finished"
    assert metrics["structure"] == "kama" and metrics["env_id"] == "CartPole-v1"
    assert metrics["steps"] >= 6000 and metrics["steps_per_s"] > 0
    assert metrics["params"]["total"] < metrics["params"]["dense_total"]
    assert metrics["command"].startswith("python train.py") and "policy=kama" in metrics["command"]
    assert metrics["config"]["seed"] == 1


def test_trained_policy_beats_random(trained_run):
    # a uniformly random CartPole policy averages ~22 steps; PPO must clearly beat it
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert metrics["final_eval"]["mean"] > 60, metrics["final_eval"]


def test_evaluate_rolls_out_the_run(trained_run):
    proc = run_cli("evaluate.py", str(trained_run), "--episodes", "3", "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["episodes"] == 3 and result["structure"] == "kama"
    assert result["mean"] > 60
    assert result["params"]["total"] == json.loads((trained_run / "metrics.json").read_text())["params"]["total"]


def test_rerun_into_existing_folder_is_refused(trained_run):
    proc = run_cli("train.py", *FAST, "policy=kama", "seed=1", f"out_dir={trained_run.parent}")
    one_line_error(proc, "already holds")


def test_resume_after_kill(tmp_path):
    args = [*FAST, "policy=toeplitz", "checkpoint.freq=1024", f"out_dir={tmp_path}"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "train.py", *args, "total_timesteps=40000"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    pointer = None
    while time.time() < deadline:
        found = list(tmp_path.glob("*/checkpoints/latest.json"))
        if found and json.loads(found[0].read_text())["steps"] >= 2048:
            pointer = found[0]
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert pointer is not None, "no checkpoint was written before the kill"
    run_dir = pointer.parent.parent
    assert not (run_dir / "model.zip").exists(), "run finished before it was killed"
    saved = json.loads(pointer.read_text())["steps"]
    proc = run_cli("train.py", *args, "total_timesteps=6000", "resume=true")
    # total_timesteps is part of the config but not of the run's identity: it may be extended
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"resuming at {saved} steps" in proc.stdout
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "finished" and metrics["steps"] >= 6000


def test_resume_with_another_structure_is_refused(trained_run, tmp_path):
    copy = tmp_path / trained_run.name
    shutil.copytree(trained_run, copy)
    proc = run_cli("train.py", *FAST, "policy=toeplitz", "seed=1", "resume=true",
                   f"hydra.run.dir={copy}")
    one_line_error(proc, "cannot resume", "'policy'")


@pytest.mark.parametrize("override,needles", [
    ("policy.structure=toplitz", ("unknown structure 'toplitz'", "kama")),
    ("env.id=Hoper-v5", ("unknown gymnasium environment",)),
    ("algo.name=sac", ("unknown algo 'sac'",)),
    ("policy.hidden=[0]", ("positive integer",)),
    ("n_envs=0", ("n_envs must be a positive integer",)),
    ("+algo.kwargs.n_step=64", ("PPO has no settings ['n_step']", "n_steps")),
])
def test_bad_config_values_give_one_line_errors(tmp_path, override, needles):
    proc = run_cli("train.py", *FAST, "total_timesteps=100", f"out_dir={tmp_path}", override)
    one_line_error(proc, *needles)


@pytest.mark.parametrize("override", ["seeds=3", "policy=kamma"])
def test_hydra_typos_are_reported_without_traceback(tmp_path, override):
    proc = run_cli("train.py", *FAST, f"out_dir={tmp_path}", override)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert override.split("=")[0 if override.startswith("seeds") else 1] in proc.stderr


def test_evaluate_missing_folder():
    one_line_error(run_cli("evaluate.py", "no/such/run"), "does not exist")


def test_evaluate_corrupt_model(trained_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(trained_run, copy)
    data = (copy / "model.zip").read_bytes()
    (copy / "model.zip").write_bytes(data[: len(data) // 2])
    one_line_error(run_cli("evaluate.py", str(copy)), "corrupt or truncated")


def test_evaluate_checkpoint_from_another_structure(trained_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(trained_run, copy)
    config = (copy / "config.yaml").read_text().replace("structure: kama", "structure: toeplitz")
    (copy / "config.yaml").write_text(config)
    # the zip records its own policy class and kwargs, so loading it is self-consistent; what
    # must fail is loading its weights into a policy built from the (edited) config
    import yaml
    from stable_baselines3 import PPO

    import rlstruct.policies  # noqa: F401  (registers "StructuredMlpPolicy")
    from rlstruct.errors import RLStructError
    from rlstruct.io import load_policy_weights
    from rlstruct.envs import make_vec_env
    from rlstruct.policies import policy_kwargs_from_config

    cfg = yaml.safe_load(config)
    cfg["policy"]["layer_kwargs"] = {}
    other = PPO("StructuredMlpPolicy", make_vec_env(cfg["env"], 1, 0),
                policy_kwargs=policy_kwargs_from_config(cfg["policy"]))
    with pytest.raises(RLStructError, match="another structure or shape"):
        load_policy_weights(other, copy / "model.zip")


def test_multirun_sweep_with_joblib(tmp_path):
    proc = run_cli(
        "train.py", "-m", "env=cartpole", "policy=dense,toeplitz", "total_timesteps=256",
        "progress_bar=false", "eval.freq=0", "eval.final_episodes=1", "checkpoint.freq=0",
        "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", f"out_dir={tmp_path}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = sorted(p.parent.name for p in tmp_path.rglob("metrics.json"))
    assert runs == ["cartpole-ppo-dense-h64-64-s0", "cartpole-ppo-toeplitz-h64-64-s0"]


def test_projunn_optimizer_from_config(tmp_path):
    from omegaconf import OmegaConf

    from conftest import tiny_config
    from rlstruct.optim import ProjUNND
    from rlstruct.runner import train

    cfg = tiny_config(tmp_path, policy="dense", total_timesteps=256, progress_bar=False,
                      optimizer="projunn_d", **{"eval.freq": 0, "eval.final_episodes": 1, "checkpoint.freq": 0,
                                                "+optimizer_kwargs.rank": 4})
    metrics = train(OmegaConf.to_container(OmegaConf.create(cfg), resolve=True), tmp_path / "run")
    assert metrics["status"] == "finished"
    from stable_baselines3 import PPO

    model = PPO.load(tmp_path / "run" / "model.zip")
    assert isinstance(model.policy.optimizer, ProjUNND)


def test_precedence_algo_then_env_algo_then_recipe_then_command_line(tmp_path):
    from conftest import tiny_config

    # conf/env_algo/cartpole_ppo.yaml beats conf/algo/ppo.yaml
    assert tiny_config(tmp_path)["algo"]["kwargs"]["learning_rate"] == 1e-3
    # conf/tuned/zoo_hopper_ppo.yaml beats both; the command line beats the recipe
    zoo = tiny_config(tmp_path, env="hopper", recipe="zoo")
    assert zoo["algo"]["kwargs"]["learning_rate"] == 9.80828e-05 and zoo["policy"]["hidden"] == [256, 256]
    mine = tiny_config(tmp_path, env="hopper", recipe="zoo", **{"algo.kwargs.learning_rate": 1e-4, "policy.hidden": "[64,64]"})
    assert mine["algo"]["kwargs"]["learning_rate"] == 1e-4 and mine["policy"]["hidden"] == [64, 64]
    assert mine["recipe"] == {"name": "zoo", "applied": "zoo_hopper_ppo"}
    # ES on Hopper gets its alive bonus from conf/env_algo, unless the command line says otherwise
    assert tiny_config(tmp_path, env="hopper", algo="es")["algo"]["alive_bonus"] == 1.0
    assert tiny_config(tmp_path, env="hopper", algo="es", **{"algo.alive_bonus": 0.0})["algo"]["alive_bonus"] == 0.0


def test_a_recipe_without_settings_for_the_env_is_refused(tmp_path):
    proc = run_cli("train.py", *FAST, "recipe=zoo", f"out_dir={tmp_path}")
    one_line_error(proc, "recipe=zoo has no settings for env=cartpole algo=ppo")


def test_command_line_learning_rate_reaches_the_model(tmp_path):
    from stable_baselines3 import PPO

    proc = run_cli("train.py", *FAST, "total_timesteps=256", f"hydra.run.dir={tmp_path / 'run'}",
                   "algo.kwargs.learning_rate=0.0005")  # cartpole's env config says 1e-3
    assert proc.returncode == 0, proc.stderr
    assert PPO.load(tmp_path / "run" / "model.zip").learning_rate == 0.0005


def test_unknown_optimizer(tmp_path):
    proc = run_cli("train.py", *FAST, "total_timesteps=100", f"out_dir={tmp_path}", "optimizer=adamw2")
    one_line_error(proc, "unknown optimizer 'adamw2'")


@pytest.fixture(scope="module")
def hopper_run(tmp_path_factory) -> Path:
    """A 256-step Hopper run (untrained: its episodes end quickly), for what needs MuJoCo."""
    out = tmp_path_factory.mktemp("hopper")
    proc = run_cli("train.py", "env=hopper", "policy=kama", "total_timesteps=256", "progress_bar=false",
                   "eval.freq=0", "eval.final_episodes=1", "checkpoint.freq=0", "algo.kwargs.n_steps=256",
                   f"out_dir={out}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    (run_dir,) = [p for p in out.iterdir() if p.is_dir()]
    return run_dir


def test_evaluate_records_a_video(hopper_run, tmp_path):
    run_dir = hopper_run
    video = tmp_path / "hopper.gif"
    proc = run_cli("evaluate.py", str(run_dir), "--episodes", "1", "--video", str(video))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert video.stat().st_size > 10_000
    import imageio.v2 as imageio

    frames = imageio.mimread(video)
    assert len(frames) > 5 and frames[0].ndim == 3
    from PIL import Image

    with Image.open(video) as gif:  # Hopper renders at 125 fps: every 5th frame, 40 ms each, plays in real time
        gif.seek(1)
        assert gif.info["duration"] == 40


def test_evaluate_trace_matches_the_evaluation(hopper_run):
    run_dir = hopper_run
    evaluated = json.loads(run_cli("evaluate.py", str(run_dir), "--episodes", "3", "--seed", "7", "--json").stdout)
    proc = run_cli("evaluate.py", str(run_dir), "--episodes", "3", "--seed", "7", "--trace")
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [line.split() for line in proc.stdout.strip().splitlines()[1:]]
    assert [int(r[0]) for r in rows] == [0, 1, 2]
    # the same episode set as the evaluation: the same rewards, to the printed digit
    assert [float(r[1]) for r in rows] == pytest.approx(evaluated["rewards"], abs=0.051)
    for _, _, length, distance, final_pitch, max_pitch in rows:
        assert 1 <= int(length) <= 1000 and abs(float(final_pitch)) <= float(max_pitch)


def test_evaluate_trace_refuses_a_non_planar_task(trained_run):
    one_line_error(run_cli("evaluate.py", str(trained_run), "--trace"), "planar MuJoCo task", "CartPole-v1")


def test_run_settings_are_checked_before_training():
    from rlstruct.config import RunConfig
    from rlstruct.errors import RLStructError

    base = {"env": {"id": "CartPole-v1"}, "policy": {"structure": "dense"}, "algo": {"name": "ppo"},
            "total_timesteps": 1e6, "n_envs": 1, "eval": {"freq": 0, "final_episodes": 10}}
    assert RunConfig.from_dict(base).total_timesteps == 1_000_000  # an integral float budget is fine
    with pytest.raises(RLStructError, match="eval.final_episodes must be a positive integer, got 0"):
        RunConfig.from_dict({**base, "eval": {"freq": 0, "final_episodes": 0}})
    with pytest.raises(RLStructError, match="total_timesteps must be a positive integer, got -5"):
        RunConfig.from_dict({**base, "total_timesteps": -5})
    RunConfig.from_dict({**base, "algo": {"name": "distill"}, "total_timesteps": 0})  # distill ignores it
    with pytest.raises(RLStructError, match="optimizer=projunn_d does not apply to algo=es"):
        RunConfig.from_dict({**base, "algo": {"name": "es"}, "optimizer": "projunn_d"})
    with pytest.raises(RLStructError, match="unknown run settings \\['sed'\\]"):
        RunConfig.from_dict({**base, "sed": 3})
    with pytest.raises(RLStructError, match="unknown eval settings \\['fre'\\]"):
        RunConfig.from_dict({**base, "eval": {"fre": 3}})
    with pytest.raises(RLStructError, match="seed must be an integer >= 0, got 'abc'"):
        RunConfig.from_dict({**base, "seed": "abc"})
    with pytest.raises(RLStructError, match="unknown algo 'ppo2'"):
        RunConfig.from_dict({**base, "algo": {"name": "ppo2"}})
