"""The compact policy format and the policies shipped in policies/."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, tiny_config
from rlstruct.compact import export_run, is_compact_policy, load_compact_policy
from rlstruct.errors import RLStructError
from rlstruct.evaluation import evaluate_saved
from rlstruct.run import load_run
from rlstruct.runner import train

SHIPPED = sorted(p for p in (ROOT / "policies").glob("*") if is_compact_policy(p))


@pytest.fixture(scope="module")
def pendulum_run(tmp_path_factory) -> Path:
    """A short run with observation normalization, so the statistics must travel too."""
    run_dir = tmp_path_factory.mktemp("run") / "pendulum"
    cfg = tiny_config(run_dir, env="pendulum", policy="kama", total_timesteps=2048, progress_bar=False,
                      **{"eval.freq": 0, "eval.final_episodes": 2, "checkpoint.freq": 0})
    from omegaconf import OmegaConf

    train(OmegaConf.to_container(OmegaConf.create(cfg), resolve=True), run_dir, command="test")
    return run_dir


def test_export_and_load_give_identical_actions(pendulum_run, tmp_path):
    meta = export_run(pendulum_run, tmp_path / "p")
    assert meta["structure"] == "kama" and meta["normalization"] is not None
    full_size = (pendulum_run / "model.zip").stat().st_size
    compact_size = sum(f.stat().st_size for f in (tmp_path / "p").iterdir())
    assert compact_size < full_size / 2
    policy, venv, _ = load_compact_policy(tmp_path / "p")
    model, run_venv, _ = load_run(pendulum_run)
    obs = np.random.default_rng(0).normal(size=(8, 3)).astype(np.float32)
    np.testing.assert_allclose(venv.normalize_obs(obs), run_venv.normalize_obs(obs))
    a1, _ = policy.predict(venv.normalize_obs(obs), deterministic=True)
    a2, _ = model.predict(run_venv.normalize_obs(obs), deterministic=True)
    np.testing.assert_array_equal(a1, a2)
    r1 = evaluate_saved(str(tmp_path / "p"), episodes=2)
    r2 = evaluate_saved(str(pendulum_run), episodes=2)
    assert r1["rewards"] == pytest.approx(r2["rewards"])


def test_corrupt_and_mismatched_files(pendulum_run, tmp_path):
    export_run(pendulum_run, tmp_path / "p")
    data = (tmp_path / "p" / "policy.safetensors").read_bytes()
    (tmp_path / "p" / "policy.safetensors").write_bytes(data[: len(data) // 3])
    with pytest.raises(RLStructError, match="corrupt or truncated"):
        load_compact_policy(tmp_path / "p")
    export_run(pendulum_run, tmp_path / "q")
    meta = json.loads((tmp_path / "q" / "meta.json").read_text())
    meta["policy"]["structure"] = "toeplitz"
    meta["policy"]["layer_kwargs"] = {}
    (tmp_path / "q" / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(RLStructError, match="does not match its own metadata"):
        load_compact_policy(tmp_path / "q")



def test_incomplete_metadata_and_missing_statistics(pendulum_run, tmp_path):
    export_run(pendulum_run, tmp_path / "p")
    meta_path = tmp_path / "p" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps([1, 2]))
    with pytest.raises(RLStructError, match="not an rlstruct compact policy"):
        load_compact_policy(tmp_path / "p")
    meta_path.write_text(json.dumps({k: v for k, v in meta.items() if k != "env"}))
    with pytest.raises(RLStructError, match=r"lacks \['env'\]"):
        load_compact_policy(tmp_path / "p")
    from safetensors.torch import load_file, save_file

    tensors_path = tmp_path / "p" / "policy.safetensors"
    meta_path.write_text(json.dumps(meta))
    kept = {k: v for k, v in load_file(str(tensors_path)).items() if not k.startswith("obs_rms.")}
    save_file(kept, str(tensors_path))
    with pytest.raises(RLStructError, match="no obs_rms tensors"):
        load_compact_policy(tmp_path / "p")


def test_export_refuses_corrupt_metrics(pendulum_run, tmp_path):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(pendulum_run, run_dir)
    (run_dir / "metrics.json").write_text("{not json")
    with pytest.raises(RLStructError, match="metrics.json is corrupt"):
        export_run(run_dir, tmp_path / "p")


@pytest.mark.parametrize("folder", SHIPPED, ids=[p.name for p in SHIPPED])
def test_shipped_policy_loads_and_rolls_out(folder):
    meta = json.loads((folder / "meta.json").read_text())
    for key in ["env_id", "structure", "params", "reward", "command"]:
        assert meta.get(key), key
    policy, venv, _ = load_compact_policy(folder)
    assert policy.parameter_counts()["total"] == meta["params"]["total"]
    obs = venv.reset()
    for _ in range(20):
        action, _ = policy.predict(obs, deterministic=True)
        assert venv.action_space.contains(action[0].astype(venv.action_space.dtype))
        obs, _, _, _ = venv.step(action)
    venv.close()


def test_video_into_a_missing_folder_is_refused_before_rolling_out(tmp_path):
    pytest.importorskip("imageio")
    from rlstruct.evaluation import record_video

    # model and env are never touched: the check comes first
    with pytest.raises(RLStructError, match="does not exist; create it first"):
        record_video(None, None, str(tmp_path / "missing" / "episode.gif"))


def test_export_into_a_file_is_refused(pendulum_run, tmp_path):
    blocker = tmp_path / "taken"
    blocker.write_text("not a folder")
    with pytest.raises(RLStructError, match="cannot create the compact policy folder"):
        export_run(pendulum_run, blocker)


def test_best_runs_picks_the_best_finished_seed(tmp_path):
    from rlstruct.compact import best_runs

    def run(name, structure, reward, status="finished"):
        folder = tmp_path / name
        folder.mkdir()
        metrics = dict(env="hopper", structure=structure, status=status)
        if status == "finished":
            metrics["final_eval"] = dict(mean=reward, std=1.0)
        (folder / "metrics.json").write_text(json.dumps(metrics))
        return folder

    run("a", "kama", 100.0)
    best = run("b", "kama", 300.0)
    run("c", "kama", 900.0, status="running")  # unfinished runs are never shipped
    dense = run("d", "dense", 50.0)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "metrics.json").write_text("{not json")
    assert best_runs(tmp_path) == {("hopper", "kama"): best, ("hopper", "dense"): dense}
