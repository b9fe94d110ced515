"""Evolution strategies: directions, the antithetic estimator, worker-count independence, lost
workers, Ray vs local, settings errors, and the run folder train() writes for algo=es."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import pytest

from conftest import tiny_config
from rlstruct.algos.backends import LocalBackend, check_ray_address, make_backend
from rlstruct.algos.es import ESSettings, EvolutionStrategy, PolicyActor, env_spec_from_config
from rlstruct.algos.estimators import es_gradient, sample_directions
from rlstruct.algos.rollout import GivensWeight, PingTask, RunningStats, SeededTask
from rlstruct.errors import RLStructError
from rlstruct.envs import make_vec_env
from rlstruct.run import load_run
from rlstruct.runner import train

CARTPOLE = {"name": "cartpole", "id": "CartPole-v1", "normalize_obs": True}
PENDULUM = {"name": "pendulum", "id": "Pendulum-v1", "normalize_obs": True}


# ------------------------------------------------------------------------------------------------
# the mathematics
@pytest.mark.parametrize("n,dim", [(12, 12), (5, 12), (30, 12)])
def test_orthogonal_directions_are_orthogonal_within_each_block(n, dim):
    eps = sample_directions("orthogonal", n, dim, np.random.default_rng(0))
    assert eps.shape == (n, dim)
    for start in range(0, n, dim):
        block = eps[start : start + dim]
        gram = block @ block.T
        off = gram - np.diag(np.diag(gram))
        assert np.abs(off).max() < 1e-12 * np.diag(gram).max()


def test_orthogonal_and_hadamard_rows_have_gaussian_norms_on_average():
    rng = np.random.default_rng(1)
    dim = 16
    orth = np.concatenate([sample_directions("orthogonal", dim, dim, rng) for _ in range(300)])
    # E||eps||^2 = dim as for N(0, I); 4800 chi^2(16) draws: relative std of the mean ~0.5%.
    assert abs(np.mean(np.sum(orth**2, axis=1)) / dim - 1) < 0.03
    had = sample_directions("hadamard", dim, dim, rng)
    np.testing.assert_allclose(had @ had.T, dim * np.eye(dim), atol=1e-12 * dim)


def _quadratic(dim: int, seed: int):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(dim, dim))
    hessian = -(a @ a.T) - np.eye(dim)  # concave, so "ascent" has a maximum
    linear = rng.normal(size=dim)

    def f(theta):
        return 0.5 * theta @ hessian @ theta + linear @ theta

    def grad(theta):
        return hessian @ theta + linear

    return f, grad


def _antithetic(f, theta, eps, sigma):
    pos = np.array([f(theta + sigma * e) for e in eps])
    neg = np.array([f(theta - sigma * e) for e in eps])
    return pos, neg


def test_antithetic_estimator_cancels_the_curvature_of_a_quadratic():
    dim, sigma = 16, 0.3
    f, grad = _quadratic(dim, 2)
    theta = np.random.default_rng(3).normal(size=dim)
    true = grad(theta)
    for kind in ("gaussian", "orthogonal", "hadamard"):
        eps = sample_directions(kind, 7, dim, np.random.default_rng(4))
        g = es_gradient(*_antithetic(f, theta, eps, sigma), eps, sigma, shaping="none")
        # For a quadratic each pair gives (eps . grad) eps exactly: no sigma-dependent bias.
        np.testing.assert_allclose(g, eps.T @ (eps @ true) / len(eps), rtol=1e-9, atol=1e-9 * np.abs(true).max())
    # A full block of orthogonal directions of norm sqrt(dim) recovers the gradient itself.
    eps = sample_directions("hadamard", dim, dim, np.random.default_rng(5))
    g = es_gradient(*_antithetic(f, theta, eps, sigma), eps, sigma, shaping="none")
    np.testing.assert_allclose(g, true, rtol=1e-9, atol=1e-9 * np.abs(true).max())
    # iid Gaussian directions: unbiased, error ~ sqrt(dim / n).
    eps = sample_directions("gaussian", 20_000, dim, np.random.default_rng(6))
    g = es_gradient(*_antithetic(f, theta, eps, sigma), eps, sigma, shaping="none")
    assert np.linalg.norm(g - true) < 0.1 * np.linalg.norm(true)


def test_top_b_and_shapings_use_only_the_best_directions():
    rng = np.random.default_rng(7)
    eps = rng.normal(size=(6, 4))
    pos, neg = rng.normal(size=6), rng.normal(size=6)
    best = np.argsort(-np.maximum(pos, neg))[:3]
    expected = es_gradient(pos[best], neg[best], eps[best], 0.1, "none")
    np.testing.assert_allclose(es_gradient(pos, neg, eps, 0.1, "none", top_b=3), expected, rtol=1e-12)
    ars = es_gradient(pos, neg, eps, 0.1, "ars", top_b=3)
    scale = np.std(np.concatenate([pos[best], neg[best]]))
    np.testing.assert_allclose(ars, (pos[best] - neg[best]) @ eps[best] / (3 * scale), rtol=1e-12)
    ranks = es_gradient(pos, neg, eps, 0.1, "centered_ranks")
    # Centered ranks only see the order: a monotone transform of the returns changes nothing.
    np.testing.assert_allclose(es_gradient(np.exp(pos), np.exp(neg), eps, 0.1, "centered_ranks"), ranks)


def test_parallel_welford_merge_matches_one_pass():
    data = np.random.default_rng(8).normal(3.0, 2.0, size=(101, 5))
    merged = RunningStats(5)
    for chunk in np.array_split(data, 7):
        merged.merge(RunningStats.from_batch(chunk))
    np.testing.assert_allclose(merged.mean, data.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(merged.var, data.var(axis=0), rtol=1e-12)


# ------------------------------------------------------------------------------------------------
# the ES loop and its workers
def _model(env_cfg, structure="toeplitz", layer_kwargs=None):
    from stable_baselines3 import PPO

    import rlstruct.policies  # noqa: F401  (registers "StructuredMlpPolicy")

    venv = make_vec_env(env_cfg, 1, 0)
    return PPO("StructuredMlpPolicy", venv, seed=0, device="cpu",
               policy_kwargs=dict(structure=structure, net_arch=[8, 8], layer_kwargs=layer_kwargs or {}))


def _es(backend, env_cfg=CARTPOLE, directions=6, seed=0, structure="toeplitz", **settings):
    s = ESSettings(directions=directions, sigma=0.1, learning_rate=0.05, **settings)
    return EvolutionStrategy(s, PolicyActor(_model(env_cfg, structure).policy), backend, seed, True, 0.0)


def _run(backend, iterations=3, **kwargs):
    es = _es(backend, **kwargs)
    for _ in range(iterations):
        es.step()
    return es


@pytest.mark.parametrize("env_cfg", [CARTPOLE, PENDULUM])
def test_numpy_actor_acts_like_sb3_predict(env_cfg):
    model = _model(env_cfg)
    actor = PolicyActor(model.policy)
    theta = actor.get_vector() + np.random.default_rng(9).normal(size=actor.dim)
    numpy_actor = actor.numpy_actor(theta)  # also loads theta into the policy
    obs = 2 * np.random.default_rng(10).normal(size=(32, model.observation_space.shape[0]))
    ours = np.stack([numpy_actor.act(o) for o in obs])
    theirs, _ = model.predict(obs.astype(np.float32), deterministic=True)
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def reference_run():
    """Three iterations on one worker: the result every other layout must reproduce."""
    spec = env_spec_from_config(CARTPOLE, ESSettings())
    with LocalBackend(spec, 1) as backend:
        es = _run(backend)
        return es.theta.copy(), es.obs_stats.mean.copy(), es.steps


def test_same_seed_same_parameters_with_one_and_two_workers(reference_run):
    theta, obs_mean, steps = reference_run
    with LocalBackend(env_spec_from_config(CARTPOLE, ESSettings()), 2) as backend:
        es = _run(backend)
    assert es.steps == steps
    assert np.array_equal(es.theta, theta)
    assert np.array_equal(es.obs_stats.mean, obs_mean)
    with LocalBackend(env_spec_from_config(CARTPOLE, ESSettings()), 1) as backend:
        other_seed = _run(backend, seed=1)
    assert not np.array_equal(other_seed.theta, theta)


def test_a_killed_worker_loses_no_directions(reference_run):
    theta, obs_mean, steps = reference_run
    with LocalBackend(env_spec_from_config(CARTPOLE, ESSettings()), 2) as backend:
        es = _es(backend)
        es.step()
        # 1) a worker killed while idle: the next task sent to it is lost and re-run elsewhere.
        os.kill(backend.worker_pids()[0], signal.SIGKILL)
        time.sleep(0.2)
        with pytest.warns(RuntimeWarning, match="died"):
            es.step()
        # 2) a worker killed while it holds a task (as soon as one is in flight).
        def kill_busy_worker():
            deadline = time.time() + 10
            while time.time() < deadline:
                busy = backend.busy_worker_pids()
                if busy:
                    os.kill(busy[0], signal.SIGKILL)
                    return
                time.sleep(0.0005)

        killer = threading.Thread(target=kill_busy_worker)
        killer.start()
        with pytest.warns(RuntimeWarning, match="died"):
            es.step()
        killer.join()
        assert len(backend.worker_pids()) == 2
    assert es.steps == steps
    assert np.array_equal(es.theta, theta)
    assert np.array_equal(es.obs_stats.mean, obs_mean)


def test_worker_built_and_driver_built_perturbations_give_the_same_parameters(reference_run):
    # Toeplitz W is a gather of theta: rebuilt in a worker it is the same floats as to_dense()'s.
    theta, obs_mean, steps = reference_run
    with LocalBackend(env_spec_from_config(CARTPOLE, ESSettings()), 2) as backend:
        es = _run(backend, perturbations="driver")
    assert not es.seeded and es.steps == steps
    assert np.array_equal(es.theta, theta) and np.array_equal(es.obs_stats.mean, obs_mean)


def test_seeded_iterations_send_one_spec_per_worker_and_tiny_tasks():
    import pickle

    directions, workers = 6, 2
    with LocalBackend(env_spec_from_config(CARTPOLE, ESSettings()), workers) as backend:
        es = _es(backend, directions=directions)
        assert es.seeded
        first = es.step()
        # the program once per worker, then per iteration one spec per worker plus the tasks
        assert first["messages"] == 2 * workers + directions
        info = es.step()
        assert info["messages"] == workers + directions
        assert info["serial_s"] > 0 and info["parallel_s"] > 0
        timing = es.timing()
        assert timing["timed_iterations"] == 2 and 0 < timing["serial_share"] < 1
        assert timing["perturbations"] == "worker"
        # a task names a direction and a seed: it does not grow with the policy
        assert len(pickle.dumps(SeededTask(0, 2**31, 7))) < 200
        assert [r.index for r in backend.map([PingTask(i) for i in range(5)])] == list(range(5))


def test_kama_actor_program_matches_to_dense_and_trains_on_workers():
    for kwargs in ({"layout": "butterfly"}, {"mode": "random"}, {"layout": "random"}):
        actor = PolicyActor(_model(PENDULUM, "kama", kwargs).policy)
        program = actor.program()
        assert program is not None, kwargs
        if kwargs.get("mode") != "random":  # learned angles: rebuilt from the rotations
            assert isinstance(program.layers[0].weight, GivensWeight)
        theta = actor.get_vector() + 0.3 * np.random.default_rng(0).normal(size=actor.dim)
        for ours, ref in zip(program.build(theta).layers, actor.numpy_actor(theta).layers):
            np.testing.assert_allclose(ours.weight, ref.weight, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(ours.bias, ref.bias, rtol=1e-6, atol=1e-7)
    # worker counts still do not matter (each worker rebuilds the rotations from theta)
    spec = env_spec_from_config(PENDULUM, ESSettings())
    runs = []
    for workers in (1, 2):
        with LocalBackend(spec, workers) as backend:
            runs.append(_run(backend, iterations=2, env_cfg=PENDULUM, structure="kama",
                             direction_blocks="tensors").theta)
    assert np.array_equal(*runs)


def test_tensor_direction_blocks_are_orthogonal_within_each_tensor():
    actor = PolicyActor(_model(PENDULUM, "kama").policy)
    with LocalBackend(env_spec_from_config(PENDULUM, ESSettings()), 1) as backend:
        es = _es(backend, env_cfg=PENDULUM, structure="kama", directions=4, direction_blocks="tensors")
        eps = es.directions(0)
    start = 0
    for size in actor.tensor_sizes():
        block = eps[:, start : start + size]
        start += size
        if size >= 4:  # as many directions as coordinates or fewer: exactly orthogonal rows
            gram = block @ block.T
            assert np.abs(gram - np.diag(np.diag(gram))).max() < 1e-10 * np.diag(gram).max()
    assert start == eps.shape[1] == actor.dim


def test_a_family_without_a_numpy_form_falls_back_to_driver_built_actors():
    actor = PolicyActor(_model(CARTPOLE, "lowrank").policy)
    assert actor.program() is None  # U V^T is bilinear: no worker-side form here
    with LocalBackend(env_spec_from_config(CARTPOLE, ESSettings()), 1) as backend:
        es = _es(backend, structure="lowrank")
        assert not es.seeded
        es.step()
        with pytest.raises(RLStructError, match="no NumPy form"):
            _es(backend, structure="lowrank", perturbations="worker")


def test_ray_backend_gives_the_local_result_even_when_an_actor_dies(reference_run):
    pytest.importorskip("ray")
    theta, _, steps = reference_run
    with make_backend("ray", env_spec_from_config(CARTPOLE, ESSettings()), 2) as backend:
        es = _es(backend)
        es.step()
        # workers run at the driver's priority, not Ray's default nice 15 (starved when shared)
        assert {os.getpriority(os.PRIO_PROCESS, pid) for pid in backend.worker_pids()} == {os.nice(0)}
        os.kill(backend.worker_pids()[0], signal.SIGKILL)
        with pytest.warns(RuntimeWarning, match="died"):
            es.step()
        es.step()
    assert es.steps == steps
    assert np.array_equal(es.theta, theta)
    assert "RAY_worker_niceness" not in os.environ


# ------------------------------------------------------------------------------------------------
# settings errors
@pytest.mark.parametrize(
    "override,message",
    [
        ({"directions": 0}, "directions must be a positive integer"),
        ({"sigma": -1.0}, "sigma must be positive"),
        ({"backend": "mpi"}, "unknown ES backend 'mpi'"),
        ({"sampling": "sobol"}, "unknown ES sampling"),
        ({"top_b": 9, "directions": 4}, "top_b .9. exceeds directions"),
        ({"n_workers": 0}, "n_workers must be a positive integer"),
        ({"popsize": 8}, "unknown ES settings \\['popsize'\\]"),
    ],
)
def test_bad_settings_raise_a_clear_error(override, message):
    with pytest.raises(RLStructError, match=message):
        ESSettings.from_config({"name": "es", **override})


def test_bad_backends_raise_a_clear_error():
    spec = env_spec_from_config(CARTPOLE, ESSettings())
    with pytest.raises(RLStructError, match="unknown ES backend"):
        make_backend("mpi", spec, 1)
    with pytest.raises(RLStructError, match="unreachable"):
        check_ray_address("127.0.0.1:9", timeout_s=2)
    with pytest.raises(RLStructError, match="not host:port"):
        check_ray_address("nowhere")


# ------------------------------------------------------------------------------------------------
# the run folder
def _es_config(tmp_path, total, env="pendulum", **overrides):
    cfg = tiny_config(
        tmp_path, algo="es", env=env, policy="toeplitz", **{"policy.hidden": "[8,8]"}
    )
    cfg["env"]["normalize_obs"] = True
    cfg["algo"].update(directions=4, n_workers=2, sigma=0.1, learning_rate=0.05)
    cfg.update(total_timesteps=total, progress_bar=False, seed=3)
    cfg["eval"].update(freq=1600, episodes=2, final_episodes=2)
    cfg["checkpoint"].update(freq=1600, keep=2)
    cfg.update(overrides)
    return cfg


def test_train_with_algo_es_writes_a_ppo_loadable_run(tmp_path):
    from stable_baselines3 import PPO

    from rlstruct.policies import StructuredActorCriticPolicy
    from rlstruct.envs import evaluate_episodes as evaluate_model

    run = tmp_path / "run"
    metrics = train(_es_config(tmp_path, 3200, env="cartpole"), run, command="train.py algo=es")
    for name in ("config.yaml", "metrics.json", "evaluations.csv", "model.zip", "vecnormalize.pkl"):
        assert (run / name).is_file(), name
    assert list((run / "tb").rglob("events.out.tfevents*"))
    assert not (run / "checkpoints").exists(), "a finished run keeps no checkpoints"
    saved = json.loads((run / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(metrics))
    assert saved["status"] == "finished" and saved["algo"] == "es"
    assert saved["command"] == "train.py algo=es"
    assert saved["steps"] >= 3200 and saved["es"]["episodes"] == 8 * saved["es"]["iterations"]
    es_info = saved["es"]
    assert es_info["timed_iterations"] == es_info["iterations"] and es_info["perturbations"] == "worker"
    assert es_info["serial_s"] > 0 and es_info["parallel_s"] > 0 and 0 < es_info["serial_share"] < 1
    for key in ("params", "compression", "git_commit", "steps_per_s", "wall_time_s", "final_eval"):
        assert key in saved
    rows = (run / "evaluations.csv").read_text().splitlines()
    assert rows[0] == "step,mean_reward,std_reward,episodes,wall_s,rewards" and len(rows) >= 2

    model = PPO.load(run / "model.zip", device="cpu")
    assert isinstance(model.policy, StructuredActorCriticPolicy)
    theta = PolicyActor(model.policy).get_vector()
    np.testing.assert_allclose(theta, model.es_state["theta"], rtol=1e-6)

    loaded, venv, _ = load_run(run)
    assert venv.obs_rms.count == model.es_state["obs_stats"]["count"] > 0
    rewards = evaluate_model(loaded, venv, episodes=2)
    assert np.isfinite(rewards).all() and min(rewards) >= 1
    assert metrics["final_eval"]["episodes"] == 2


@pytest.mark.parametrize("how", ["extended", "killed"])
def test_resumed_es_run_continues_exactly(tmp_path, monkeypatch, how):
    from rlstruct.run import RunFolder

    straight = train(_es_config(tmp_path, 4800), tmp_path / "straight")
    part = tmp_path / "part"
    if how == "extended":  # a finished 3200-step run, extended to 4800
        train(_es_config(tmp_path, 3200), part)
    else:  # killed right after its first checkpoint
        original = RunFolder.write_checkpoint

        def write_then_die(self, *args, **kwargs):
            original(self, *args, **kwargs)
            raise KeyboardInterrupt

        with monkeypatch.context() as patch:
            patch.setattr(RunFolder, "write_checkpoint", write_then_die)
            with pytest.raises(KeyboardInterrupt):
                train(_es_config(tmp_path, 4800), part)
    resumed = train(_es_config(tmp_path, 4800, resume=True), part)
    assert resumed["steps"] == straight["steps"] == 4800
    from stable_baselines3 import PPO

    a = PPO.load(tmp_path / "straight" / "model.zip").es_state
    b = PPO.load(part / "model.zip").es_state
    assert a["theta"] == b["theta"] and a["obs_stats"] == b["obs_stats"]


def test_train_with_policy_kama_and_algo_es(tmp_path):
    cfg = tiny_config(tmp_path, algo="es", env="pendulum", policy="kama", **{"policy.hidden": "[8,8]"})
    cfg["algo"].update(directions=4, n_workers=1, sigma=0.1, learning_rate=0.05)
    cfg.update(total_timesteps=1600, progress_bar=False, seed=3)
    cfg["eval"].update(freq=1600, episodes=1, final_episodes=1)
    metrics = train(cfg, tmp_path / "run")
    assert metrics["status"] == "finished" and metrics["es"]["perturbations"] == "worker"
    assert metrics["es"]["searched_parameters"] > 0 and np.isfinite(metrics["final_eval"]["mean"])


# ------------------------------------------------------------------------------------------------
# an existing Ray cluster (a head started with the ray CLI, joined by address)
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_ray_backend_joins_a_running_cluster_by_address(reference_run, monkeypatch):
    pytest.importorskip("ray")
    # Ray >= 2.5x turns token authentication on for clusters started by `ray start` and keeps
    # the token in ~/.ray; this throwaway loopback head runs without it, on both sides.
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    cli = shutil.which("ray") or shutil.which("ray", path=os.path.dirname(sys.executable))
    if cli is None:
        pytest.skip("the ray CLI is not installed")
    port = _free_port()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    # The cluster's workers must import rlstruct: as on a real node, from the environment.
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p),
               RAY_worker_niceness="0")
    # Our own (short: Unix socket paths) session folder; at the end we stop only the processes
    # whose command line names it, never another Ray on this machine (no `ray stop`).
    temp = tempfile.mkdtemp(prefix="rlr", dir="/tmp")
    start = [cli, "start", "--head", "--num-cpus=2", f"--port={port}", "--node-ip-address=127.0.0.1",
             "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp}"]
    try:
        done = subprocess.run(start, env=env, capture_output=True, text=True, timeout=90)
    except subprocess.TimeoutExpired:
        done = None
    try:
        if done is None or done.returncode != 0:
            pytest.skip(f"ray start --head failed: {(done.stderr or done.stdout)[-300:] if done else 'timeout'}")
        theta, _, steps = reference_run
        # The driver runs in a fresh interpreter, as a user's train.py would: a Ray instance this
        # test process started and shut down before (the local-Ray test) leaves state that
        # cancels actor creation on the next cluster.
        out = os.path.join(temp, "theta.npy")
        script = (
            "import sys, numpy as np\n"
            f"sys.path[:0] = [{os.path.join(root, 'tests')!r}, {root!r}]\n"
            "from test_es import CARTPOLE, _run\n"
            "from rlstruct.algos.backends import make_backend\n"
            "from rlstruct.algos.es import ESSettings, env_spec_from_config\n"
            "spec = env_spec_from_config(CARTPOLE, ESSettings())\n"
            f"with make_backend('ray', spec, 2, '127.0.0.1:{port}') as backend:\n"
            "    assert backend._started\n"
            "    es = _run(backend)\n"
            f"np.save({out!r}, np.append(es.theta, es.steps))\n"
        )
        ran = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=180)
        assert ran.returncode == 0, ran.stderr[-2000:]
        result = np.load(out)
        assert result[-1] == steps and np.array_equal(result[:-1], theta)
    finally:
        _stop_processes_naming(temp)
        shutil.rmtree(temp, ignore_errors=True)


def _stop_processes_naming(text: str, timeout_s: float = 5.0) -> None:
    """SIGTERM (then SIGKILL) the processes whose command line contains ``text``."""
    def matching():
        pids = []
        for entry in os.listdir("/proc"):
            if entry.isdigit() and int(entry) != os.getpid():
                try:
                    with open(f"/proc/{entry}/cmdline", "rb") as handle:
                        if text.encode() in handle.read():
                            pids.append(int(entry))
                except OSError:
                    pass
        return pids

    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in matching():
            with contextlib.suppress(OSError):
                os.kill(pid, sig)
        deadline = time.time() + timeout_s
        while matching() and time.time() < deadline:
            time.sleep(0.2)


@pytest.mark.parametrize("env, bonus", [("walker2d", 1.0), ("ant", 1.0), ("humanoid", 5.0)])
def test_hard_task_experiment_composes_es_with_the_env_shift_and_yields_to_the_command_line(tmp_path, env, bonus):
    cfg = tiny_config(tmp_path, **{"+experiment": "es_hard", "env": env, "policy": "toeplitz",
                                   "algo.directions": 60})
    assert cfg["algo"]["name"] == "es" and cfg["algo"]["n_workers"] == 2
    assert cfg["algo"]["alive_bonus"] == bonus  # conf/env_algo/<env>_es.yaml still applies
    assert cfg["algo"]["directions"] == 60 and cfg["algo"]["top_b"] == 16
    assert cfg["resume"] is True and cfg["out_dir"] == "results/es_hard"
    assert cfg["eval"]["final_episodes"] == 30
