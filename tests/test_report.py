"""The report: grouping across seeds, % of dense, unfinished runs, plots, compact policies."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from rlstruct.errors import RLStructError
from rlstruct.report import bootstrap_ci, iqm, main, make_report


def fake_run(root: Path, structure: str, seed: int, reward: float, total: int, status: str = "finished",
             env: str = "hopper", hidden=(64, 64), optimizer=None) -> Path:
    folder = root / f"{env}-ppo-{structure}{'-' + optimizer if optimizer else ''}-s{seed}"
    folder.mkdir(parents=True)
    metrics = dict(
        env=env, env_id="Hopper-v5", algo="ppo", structure=structure, critic_structure=structure,
        hidden=list(hidden), seed=seed, status=status, total_timesteps=1000, command=f"python train.py policy={structure} seed={seed}",
        params=dict(actor=total // 2, critic=total - total // 2, total=total, dense_actor=5126, dense_critic=4993, dense_total=10119),
        config=dict(optimizer=optimizer),
    )
    if status == "finished":
        metrics.update(steps=1000, wall_time_s=10.0, final_eval=dict(mean=reward, std=1.0, episodes=10))
    (folder / "metrics.json").write_text(json.dumps(metrics))
    return folder


def test_iqm_and_bootstrap():
    assert iqm(np.array([0.0, 1.0, 2.0, 100.0])) == pytest.approx(1.5)
    lo, hi = bootstrap_ci(np.array([1.0, 2.0, 3.0, 4.0, 5.0]))
    assert 1.0 <= lo <= hi <= 5.0


def test_report_groups_seeds_and_lists_unfinished(tmp_path):
    for seed, reward in enumerate([1000.0, 1200.0, 1100.0]):
        fake_run(tmp_path, "dense", seed, reward, 10119)
    for seed, reward in enumerate([550.0, 660.0]):
        fake_run(tmp_path, "kama", seed, reward, 1543)
    fake_run(tmp_path, "kama", 2, 0.0, 1543, status="running")
    out = tmp_path / "out"
    summary = make_report([tmp_path], out)
    rows = {r["structure"]: r for r in summary["rows"]}
    assert rows["dense"]["seeds"] == 3 and rows["dense"]["reward_mean"] == pytest.approx(1100.0)
    assert rows["kama"]["seeds"] == 2
    assert rows["kama"]["pct_of_dense"] == pytest.approx(100 * 605 / 1100, abs=0.1)
    assert rows["kama"]["compression"] == pytest.approx(10119 / 1543, abs=0.01)
    text = (out / "report.md").read_text()
    assert "hopper-ppo-kama-s2" in text and "status running" in text
    assert (out / "pareto_hopper.png").stat().st_size > 1000
    csv_text = (out / "report.csv").read_text()
    assert "python train.py policy=kama seed=0" in csv_text


def test_report_keeps_optimizers_apart(tmp_path):
    fake_run(tmp_path, "orthogonal", 0, 900.0, 5000)
    fake_run(tmp_path, "orthogonal", 0, 1500.0, 5000, optimizer="projunn_d")
    rows = {r["structure"]: r for r in make_report([tmp_path], tmp_path / "out")["rows"]}
    assert rows["orthogonal"]["reward_mean"] == pytest.approx(900.0)
    assert rows["orthogonal+projunn_d"]["reward_mean"] == pytest.approx(1500.0)


def test_report_cli_on_missing_folder(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "nope")])
    assert exit_info.value.code == 2
    assert "does not exist" in capsys.readouterr().err


def test_broken_metrics_are_listed_not_fatal(tmp_path):
    fake_run(tmp_path, "dense", 0, 1000.0, 10119)
    broken = fake_run(tmp_path, "kama", 0, 500.0, 1543)
    metrics = json.loads((broken / "metrics.json").read_text())
    del metrics["params"]
    (broken / "metrics.json").write_text(json.dumps(metrics))
    listed = fake_run(tmp_path, "toeplitz", 0, 500.0, 921)
    (listed / "metrics.json").write_text("[1, 2]")
    summary = make_report([tmp_path], tmp_path / "out", curves=False)
    assert [r["structure"] for r in summary["rows"]] == ["dense"]
    text = (tmp_path / "out" / "report.md").read_text()
    assert "finished but lacks ['params']" in text and "not a JSON object" in text


def test_report_into_a_file_is_refused(tmp_path):
    fake_run(tmp_path / "runs", "dense", 0, 1000.0, 10119)
    blocker = tmp_path / "taken"
    blocker.write_text("not a folder")
    with pytest.raises(RLStructError, match="cannot create the report folder"):
        make_report([tmp_path / "runs"], blocker / "out", curves=False)
