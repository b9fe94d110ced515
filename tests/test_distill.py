"""Distillation (algo=distill): a structured student fitted to a small dense teacher acts like it on
states it never saw, the run folder opens like a PPO run's, the step count adds up, and bad
teachers fail with one-line errors."""

from __future__ import annotations

import csv
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import run_cli, tiny_config
from rlstruct.algos.distill import BestPolicy, DistillSettings, load_teacher
from rlstruct.errors import RLStructError
from rlstruct.envs import make_vec_env
from rlstruct.policies import policy_kwargs_from_config
from rlstruct.run import load_run
from rlstruct.runner import train

PPO_METRIC_KEYS = {"status", "steps", "wall_time_s", "steps_per_s", "final_eval", "params", "compression"}


def _teacher(root: Path, env: str) -> Path:
    """A dense 32-32 PPO teacher trained for a few thousand steps (a few seconds)."""
    cfg = tiny_config(root, env=env, policy="dense", total_timesteps=4096, progress_bar=False)
    cfg["policy"]["hidden"] = [32, 32]
    cfg["eval"].update(freq=0, final_episodes=1)
    cfg["checkpoint"]["freq"] = 0
    train(cfg, root / "teacher")
    return root / "teacher"


@pytest.fixture(scope="module")
def cartpole_teacher(tmp_path_factory) -> Path:
    return _teacher(tmp_path_factory.mktemp("cartpole"), "cartpole")


@pytest.fixture(scope="module")
def pendulum_teacher(tmp_path_factory) -> Path:
    return _teacher(tmp_path_factory.mktemp("pendulum"), "pendulum")


def _distill_config(tmp_path: Path, env: str, policy: str, teacher, **algo) -> dict:
    cfg = tiny_config(tmp_path, env=env, policy=policy, algo="distill", progress_bar=False, seed=1)
    cfg["policy"]["hidden"] = [16, 16]
    teacher = None if teacher is None else str(teacher)
    settings = dict(teacher=teacher, teacher_steps=3000, epochs=20, learning_rate=3e-3)
    cfg["algo"].update(settings, **algo)
    cfg["eval"].update(freq=0, episodes=1, final_episodes=1)
    return cfg


def _fresh_teacher_states(teacher_dir: Path, env_cfg: dict, steps: int):
    """States the fit never saw: the teacher's own (sampled) rollout from another seed, normalized as it sees them."""
    from rlstruct.envs import attach_vecnormalize

    teacher = load_teacher(str(teacher_dir))
    venv = attach_vecnormalize(make_vec_env(env_cfg, 1, seed=777), teacher_dir / "vecnormalize.pkl")
    venv.training = False
    obs, states = venv.reset(), []
    for _ in range(steps):
        states.append(obs[0])
        obs, _, _, _ = venv.step(teacher.policy.predict(obs, deterministic=False)[0])
    states = np.asarray(states, dtype=np.float32)
    return teacher, states, teacher.policy.predict(states, deterministic=True)[0]


def _untrained_student(cfg: dict, seed: int):
    """The student as it starts: same structure and seed, no fit."""
    from stable_baselines3 import PPO

    venv = make_vec_env(cfg["env"], 1, seed)
    return PPO("StructuredMlpPolicy", venv, policy_kwargs=policy_kwargs_from_config(cfg["policy"]), seed=seed)


def test_discrete_student_agrees_with_the_teacher_and_loads_like_a_ppo_run(tmp_path, cartpole_teacher):
    cfg = _distill_config(tmp_path, "cartpole", "kama", cartpole_teacher)
    metrics = train(cfg, tmp_path / "run")
    run = tmp_path / "run"

    model, venv, saved = load_run(run)
    _, states, teacher_actions = _fresh_teacher_states(cartpole_teacher, saved["env"], 1000)
    after = np.mean(model.predict(states, deterministic=True)[0] == teacher_actions)
    before = np.mean(_untrained_student(cfg, 1).predict(states, deterministic=True)[0] == teacher_actions)
    assert after > 0.9, (before, after)
    assert 1 - after < (1 - before) / 3, (before, after)

    assert PPO_METRIC_KEYS <= set(metrics) and metrics["status"] == "finished"
    assert json.loads((run / "metrics.json").read_text())["steps"] == 3000 == saved["total_timesteps"]
    assert metrics["params"]["total"] < metrics["distill"]["teacher_params"]["total"]
    assert metrics["distill"]["holdout_after"][-1]["action_agreement"] > 0.9
    rows = list(csv.DictReader(open(run / "evaluations.csv")))
    assert [int(r["step"]) for r in rows] == [3000]
    assert any((run / "tb").rglob("events.out.tfevents.*"))
    assert not (run / "vecnormalize.pkl").exists()  # the teacher had no normalization
    venv.close()


def test_continuous_student_fits_the_teacher_means_with_the_teacher_statistics(tmp_path, pendulum_teacher):
    cfg = _distill_config(tmp_path, "pendulum", "toeplitz", pendulum_teacher)
    cfg["env"]["normalize_obs"] = False  # the teacher's normalization wins and is recorded
    train(cfg, tmp_path / "run")
    run = tmp_path / "run"

    model, venv, saved = load_run(run)
    assert saved["env"]["normalize_obs"] is True
    teacher_stats = pickle.loads((pendulum_teacher / "vecnormalize.pkl").read_bytes()).obs_rms
    np.testing.assert_array_equal(venv.obs_rms.mean, teacher_stats.mean)  # no fine-tuning: unchanged
    np.testing.assert_array_equal(venv.obs_rms.var, teacher_stats.var)

    teacher, states, teacher_actions = _fresh_teacher_states(pendulum_teacher, saved["env"], 600)
    assert torch.equal(model.policy.log_std, teacher.policy.log_std)  # fixed during the fit

    def r2(actions):
        return 1 - np.sum((actions - teacher_actions) ** 2) / np.sum((teacher_actions - teacher_actions.mean(0)) ** 2)

    after = r2(model.predict(states, deterministic=True)[0])
    before = r2(_untrained_student(cfg, 1).predict(states, deterministic=True)[0])
    assert after > 0.9 and before < 0.5, (before, after)
    venv.close()


def test_dagger_and_fine_tuning_steps_add_up_and_continue_the_statistics(tmp_path, pendulum_teacher):
    cfg = _distill_config(tmp_path, "pendulum", "kama", pendulum_teacher, dagger_rounds=1, dagger_steps=500,
                          finetune_steps=1024, epochs=5, finetune_keep_best=False)
    cfg["eval"]["freq"] = 1024
    metrics = train(cfg, tmp_path / "run")
    run = tmp_path / "run"

    assert metrics["steps"] == 3000 + 500 + 1024  # Pendulum's PPO n_steps is 1024: no rounding up
    assert yaml.safe_load((run / "config.yaml").read_text())["total_timesteps"] == metrics["steps"]
    assert metrics["distill"]["fit_states"] == 3000 - 300 + 500
    assert len(metrics["distill"]["holdout_after"]) == 2
    assert [int(r["step"]) for r in csv.DictReader(open(run / "evaluations.csv"))] == [3500, 4524]
    saved = pickle.loads((run / "vecnormalize.pkl").read_bytes()).obs_rms
    teacher = pickle.loads((pendulum_teacher / "vecnormalize.pkl").read_bytes()).obs_rms
    assert teacher.count + 1024 <= saved.count <= teacher.count + 1025  # fine-tuning steps (+ its reset)
    load_run(run)[1].close()
    assert metrics["distill"]["finetune"] == dict(keep_best=False, last_step=4524, last_dir=None)
    assert not (run / "last").exists()


def _obs_count(folder: Path) -> float:
    return pickle.loads((folder / "vecnormalize.pkl").read_bytes()).obs_rms.count


def test_fine_tuning_ends_with_the_best_evaluated_policy_and_its_statistics(tmp_path, pendulum_teacher):
    cfg = _distill_config(tmp_path, "pendulum", "kama", pendulum_teacher, finetune_steps=4096, epochs=5,
                          finetune_kwargs={"n_steps": 512, "batch_size": 64})
    cfg["eval"].update(freq=512, episodes=2)
    metrics = train(cfg, tmp_path / "run")
    run = tmp_path / "run"

    rows = list(csv.DictReader(open(run / "evaluations.csv")))
    assert [int(r["step"]) for r in rows] == list(range(3000, 3000 + 4096 + 1, 512))
    rewards = [float(r["mean_reward"]) for r in rows]
    best = int(np.argmax(rewards))  # the first of equal maxima: a later tie does not replace it
    finetune = metrics["distill"]["finetune"]
    assert finetune["kept_step"] == int(rows[best]["step"]) and finetune["kept_eval_mean"] == rewards[best]
    assert finetune["last_step"] == metrics["steps"] == 3000 + 4096
    # the saved statistics are the kept policy's: the teacher's plus the fine-tuning steps before it (+ its reset)
    teacher_count = _obs_count(pendulum_teacher)
    kept_after = finetune["kept_step"] - 3000
    assert teacher_count + kept_after <= _obs_count(run) <= teacher_count + kept_after + (kept_after > 0)
    if finetune["kept_step"] == finetune["last_step"]:
        assert finetune["last_dir"] is None and not (run / "last").exists()
    else:  # the last iterate is a run folder of its own, with all the fine-tuning's statistics
        assert Path(finetune["last_dir"]) == run / "last"
        assert _obs_count(run / "last") == teacher_count + 4096 + 1
        model, venv, _ = load_run(run / "last")
        venv.close()


def test_best_policy_restores_the_parameters_and_statistics_it_kept(tmp_path, pendulum_teacher):
    from stable_baselines3 import PPO

    from rlstruct.envs import attach_vecnormalize

    venv = attach_vecnormalize(make_vec_env({"id": "Pendulum-v1"}, 1, 0), pendulum_teacher / "vecnormalize.pkl")
    policy_cfg = tiny_config(tmp_path, env="pendulum", policy="kama")["policy"]
    policy = PPO("StructuredMlpPolicy", venv, policy_kwargs=policy_kwargs_from_config(policy_cfg), seed=0).policy

    def perturb():
        with torch.no_grad():
            for p in policy.parameters():
                p.add_(1.0)
        venv.obs_rms.update(np.ones((5, 3)))

    best = BestPolicy.snapshot(-500.0, 100, policy, venv)
    perturb()
    assert not best.offer(-600.0, 200, policy, venv) and best.step == 100
    assert best.offer(-400.0, 300, policy, venv) and (best.step, best.reward) == (300, -400.0)
    kept = {k: v.clone() for k, v in policy.state_dict().items()}
    kept_mean, kept_count = venv.obs_rms.mean.copy(), venv.obs_rms.count
    perturb()
    assert not torch.equal(policy.log_std, kept["log_std"])
    best.restore(policy, venv)
    for key, value in policy.state_dict().items():
        assert torch.equal(value, kept[key]), key
    np.testing.assert_array_equal(venv.obs_rms.mean, kept_mean)
    assert venv.obs_rms.count == kept_count
    venv.close()


def test_bad_teachers_give_one_line_errors(tmp_path, cartpole_teacher):
    def fails(teacher, message, env="cartpole"):
        with pytest.raises(RLStructError, match=message) as info:
            train(_distill_config(tmp_path, env, "kama", teacher), tmp_path / f"run{len(fails.seen)}")
        fails.seen.append(str(info.value))
        assert "\n" not in str(info.value)

    fails.seen = []
    fails(None, "needs a teacher; pass algo.teacher=")
    fails(tmp_path / "nowhere", "does not exist")
    spaces = r"acts on Box\(4,\) -> Discrete\(2\) but Pendulum-v1 has Box\(3,\) -> Box\(1,\)"
    fails(cartpole_teacher, spaces, "pendulum")
    (tmp_path / "empty").mkdir()
    fails(tmp_path / "empty", "has no model.zip and no checkpoint")
    (tmp_path / "broken.zip").write_bytes(b"not a zip")
    fails(tmp_path / "broken.zip", "is unreadable")
    with pytest.raises(RLStructError, match="unknown distillation settings"):
        DistillSettings.from_config({"name": "distill", "teacher": "x", "epoch": 3})
    with pytest.raises(RLStructError, match="holdout"):
        DistillSettings.from_config({"name": "distill", "teacher": "x", "holdout": 1.5})
    cfg = _distill_config(tmp_path, "cartpole", "kama", cartpole_teacher, finetune_steps=512)
    cfg["eval"]["freq"] = 0
    with pytest.raises(RLStructError, match="eval.freq is 0; set eval.freq > 0 or algo.finetune_keep_best=false"):
        train(cfg, tmp_path / "nofreq")


def test_train_py_reports_a_missing_teacher_in_one_line(tmp_path):
    result = run_cli("train.py", "algo=distill", f"out_dir={tmp_path}", "progress_bar=false")
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: algo=distill needs a teacher")
