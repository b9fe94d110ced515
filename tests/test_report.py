"""The report: grouping, rliable statistics, the dense frontier, headlines, unfinished runs."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pytest

from rlstruct.errors import RLStructError
from rlstruct.report import (
    _rliable, find_runs, frontier_at, group_runs, headline, main, make_report, read_curve,
)

REPO = Path(__file__).resolve().parents[1]
REPS = 200  # bootstrap resamples: enough for the tests, fast


def fake_run(root: Path, structure: str, seed: int, rewards: Sequence[float], total: int, *,
             status: str = "finished", env: str = "hopper", algo: str = "ppo", hidden=(64, 64),
             optimizer: Optional[str] = None, lr: float = 3e-4, recipe: Optional[str] = None,
             total_timesteps: int = 1000, old_csv: bool = False, name: Optional[str] = None,
             algo_settings: Optional[dict] = None) -> Path:
    """A run folder as train.py writes it: metrics.json, evaluations.csv, config.yaml."""
    folder = root / (name or f"{env}-{algo}-{structure}-h{'-'.join(map(str, hidden))}-lr{lr:g}"
                     f"{'-' + optimizer if optimizer else ''}{'-' + recipe if recipe else ''}"
                     f"-t{total_timesteps}{'-' + '-'.join(map(str, algo_settings.values())) if algo_settings else ''}"
                     f"-s{seed}")
    folder.mkdir(parents=True)
    config = dict(algo=dict(name=algo, kwargs=dict(learning_rate=lr), **(algo_settings or {})), optimizer=optimizer,
                  policy=dict(structure=structure, hidden=list(hidden), critic_hidden=None),
                  total_timesteps=total_timesteps, seed=seed)
    if recipe:
        config["recipe"] = dict(name=recipe)
    metrics = dict(
        env=env, env_id="Hopper-v5", algo=algo, structure=structure, critic_structure=structure,
        hidden=list(hidden), seed=seed, status=status, total_timesteps=total_timesteps,
        command=f"python train.py policy={structure} seed={seed}",
        params=dict(actor=total // 2, critic=total - total // 2, total=total,
                    dense_actor=5126, dense_critic=4993, dense_total=10119),
        config=config,
    )
    if status == "finished":
        # final_eval.mean deliberately differs from the episodes' mean: the score is the episodes'
        metrics.update(steps=total_timesteps, wall_time_s=10.0, final_eval=dict(
            mean=-1.0, std=1.0, episodes=len(rewards), deterministic=True, rewards=list(rewards)))
    (folder / "metrics.json").write_text(json.dumps(metrics))
    (folder / "config.yaml").write_text(f"policy:\n  structure: {structure}\nseed: {seed}\n")
    with open(folder / "evaluations.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["step", "mean_reward", "std_reward", "episodes", "wall_s"] + ([] if old_csv else ["rewards"]))
        for step in (250, 500, 1000):
            value = float(np.mean(rewards)) * step / 1000 if len(rewards) else 0.0
            row = [step, value, 1.0, 2, step / 100]
            writer.writerow(row if old_csv else row + [f"{value - 1:.3f} {value + 1:.3f}"])
    return folder


def seeds(root: Path, structure: str, scores: Sequence[float], total: int, **kw) -> None:
    """One run per score (two episodes each, averaging to the score)."""
    for seed, s in enumerate(scores):
        fake_run(root, structure, seed, [s - 10.0, s + 10.0], total, **kw)


def rows_of(summary) -> dict:
    return {(r["structure"], r["hidden"], r["learning_rate"], r["recipe"], r["total_timesteps"]): r
            for r in summary["rows"]}


def test_grouping_keeps_lr_recipe_budget_and_optimizer_apart(tmp_path):
    seeds(tmp_path, "dense", [100.0, 200.0, 300.0], 10119)
    seeds(tmp_path, "dense", [400.0, 500.0, 600.0], 10119, lr=1e-3)
    seeds(tmp_path, "dense", [700.0, 800.0, 900.0], 10119, recipe="zoo")
    seeds(tmp_path, "dense", [50.0, 60.0, 70.0], 10119, total_timesteps=2000)
    seeds(tmp_path, "orthogonal", [10.0, 20.0, 30.0], 5000)
    seeds(tmp_path, "orthogonal", [40.0, 50.0, 60.0], 5000, optimizer="projunn_d")
    fake_run(tmp_path, "orthogonal", 3, [0.0, 0.0], 5000, recipe="default")  # = sb3 under its new name
    groups = group_runs(find_runs([tmp_path]))
    assert len(groups) == 6 and sorted(len(g.runs) for g in groups) == [3, 3, 3, 3, 3, 4]
    rows = rows_of(make_report([tmp_path], tmp_path / "out", curves=False, reps=REPS))
    assert rows[("dense", "64-64", "0.0003", "sb3", 1000)]["reward_mean"] == pytest.approx(200.0)
    assert rows[("dense", "64-64", "0.001", "sb3", 1000)]["reward_mean"] == pytest.approx(500.0)
    assert rows[("dense", "64-64", "0.0003", "zoo", 1000)]["reward_mean"] == pytest.approx(800.0)
    assert rows[("dense", "64-64", "0.0003", "sb3", 2000)]["reward_mean"] == pytest.approx(60.0)
    assert rows[("orthogonal+projunn_d", "64-64", "0.0003", "sb3", 1000)]["reward_mean"] == pytest.approx(50.0)
    # the reference dense of (hopper, ppo, sb3, 1000 steps): equal size, so the higher IQM (lr 1e-3)
    ortho = rows[("orthogonal", "64-64", "0.0003", "sb3", 1000)]
    assert ortho["reference_dense"] == "dense 64-64 lr=0.001"
    assert ortho["pct_of_ref_dense_iqm"] == pytest.approx(100 * 15 / 500)  # IQM of 0, 10, 20, 30
    assert ortho["compression"] == pytest.approx(10119 / 5000)
    assert ortho["seeds"] == 4 and ortho["reward_sd_ddof1"] == pytest.approx(np.std([0, 10, 20, 30], ddof=1))


def test_other_training_settings_are_a_variant_not_averaged(tmp_path):
    seeds(tmp_path, "toeplitz", [100.0] * 3, 451, algo="es", algo_settings=dict(sampling="orthogonal", n_workers=1))
    seeds(tmp_path, "toeplitz", [300.0] * 3, 451, algo="es", algo_settings=dict(sampling="gaussian", n_workers=4))
    out = tmp_path / "out"
    rows = make_report([tmp_path], out, curves=False, reps=REPS)["rows"]
    assert sorted((r["variant"], r["reward_mean"]) for r in rows) == [
        ("sampling=gaussian", 300.0), ("sampling=orthogonal", 100.0)]  # n_workers: where, not how
    assert "toeplitz [sampling=gaussian]" in (out / "report.md").read_text()


def test_statistics_equal_rliables(tmp_path):
    library, metrics = _rliable()
    dense = [1000.0, 1100.0, 1200.0, 1300.0, 5000.0]
    kama = [200.0, 900.0, 1000.0, 1100.0, 1150.0, 1250.0, 1400.0, 1500.0]
    seeds(tmp_path, "dense", dense, 10119)
    seeds(tmp_path, "kama", kama, 1543)
    rows = rows_of(make_report([tmp_path], tmp_path / "out", curves=False, reps=REPS, seed=3))
    k = rows[("kama", "64-64", "0.0003", "sb3", 1000)]
    d = rows[("dense", "64-64", "0.0003", "sb3", 1000)]
    assert k["reward_iqm"] == pytest.approx(metrics.aggregate_iqm(np.array(kama)[:, None]))
    assert d["reward_iqm"] == pytest.approx(metrics.aggregate_iqm(np.array(dense)[:, None]))
    assert k["reward_iqm"] == pytest.approx(np.mean(sorted(kama)[2:6]))  # middle half by hand
    assert k["prob_improvement"] == pytest.approx(
        metrics.probability_of_improvement(np.array(kama)[:, None], np.array(dense)[:, None]))
    assert k["pct_of_ref_dense_iqm"] == pytest.approx(100 * k["reward_iqm"] / d["reward_iqm"])
    np.random.seed(3)
    _, ci = library.get_interval_estimates({"k": np.array(kama)[:, None]},
                                           lambda x: np.array([metrics.aggregate_iqm(x)]), reps=REPS)
    assert (k["iqm_ci_low"], k["iqm_ci_high"]) == pytest.approx(tuple(np.ravel(ci["k"])))
    assert k["iqm_ci_low"] <= k["reward_iqm"] <= k["iqm_ci_high"]
    assert 0.0 <= k["poi_ci_low"] <= k["prob_improvement"] <= k["poi_ci_high"] <= 1.0


def test_frontier_interpolation_by_hand(tmp_path):
    points = [(100, 1000.0), (10000, 3000.0)]
    assert frontier_at(points, 1000) == pytest.approx(2000.0)  # halfway in log10(params)
    assert frontier_at(points, 100) == pytest.approx(1000.0)
    assert frontier_at(points, 99) is None and frontier_at(points, 10001) is None
    seeds(tmp_path, "dense", [1000.0, 1000.0, 1000.0], 100, hidden=(4, 4))
    seeds(tmp_path, "dense", [3000.0, 3000.0, 3000.0], 10000)
    seeds(tmp_path, "kama", [2500.0, 2500.0, 2500.0], 1000)
    seeds(tmp_path, "toeplitz", [900.0, 900.0, 900.0], 50)
    out = tmp_path / "out"
    rows = rows_of(make_report([tmp_path], out, curves=False, reps=REPS))
    kama = rows[("kama", "64-64", "0.0003", "sb3", 1000)]
    assert kama["frontier_iqm_at_size"] == pytest.approx(2000.0)
    assert kama["gain_over_frontier"] == pytest.approx(500.0)
    assert np.isnan(rows[("toeplitz", "64-64", "0.0003", "sb3", 1000)]["gain_over_frontier"])
    text = (out / "report.md").read_text()
    assert "| +500 |" in text and "outside frontier" in text


def test_headline_picks_the_smallest_row_reaching_dense(tmp_path):
    seeds(tmp_path, "dense", [1000.0] * 3, 10000)
    seeds(tmp_path, "kama", [1100.0] * 3, 500)      # 110%
    seeds(tmp_path, "toeplitz", [1050.0] * 3, 200)  # 105%, smallest reaching 100%
    seeds(tmp_path, "hd3", [900.0] * 3, 100)        # 90%, smaller but short of dense
    out = tmp_path / "out"
    summary = make_report([tmp_path], out, curves=False, reps=REPS)
    best = headline(summary["rows"])
    assert best["structure"] == "toeplitz" and best["_reaches"]
    text = (out / "report.md").read_text()
    assert "smallest structured row at >= 100%" in text and "**toeplitz 64-64 lr=0.0003**" in text
    assert "**50.0x compression**" in text


def test_headline_without_a_row_reaching_dense_gives_the_best_fraction(tmp_path):
    seeds(tmp_path, "dense", [1000.0] * 3, 10000)
    seeds(tmp_path, "kama", [700.0] * 3, 500)
    seeds(tmp_path, "toeplitz", [800.0] * 3, 200)
    out = tmp_path / "out"
    best = headline(make_report([tmp_path], out, curves=False, reps=REPS)["rows"])
    assert best["structure"] == "toeplitz" and not best["_reaches"]
    assert "no structured row reaches 100%" in (out / "report.md").read_text()


def test_unfinished_runs_are_listed_not_tabled(tmp_path):
    seeds(tmp_path, "dense", [1000.0, 1200.0, 1100.0], 10119)
    running = fake_run(tmp_path, "kama", 0, [], 1543, status="running", total_timesteps=1000, name="kama-running")
    (running / "checkpoints").mkdir()
    (running / "checkpoints" / "latest.json").write_text(json.dumps(dict(steps=512, folder="step_512")))
    out = tmp_path / "out"
    summary = make_report([tmp_path], out, curves=False, reps=REPS)
    assert [r["structure"] for r in summary["rows"]] == ["dense"]
    text = (out / "report.md").read_text()
    unfinished = text.split("## Unfinished runs")[1]
    assert "kama-running" in unfinished and "status running, 512 of 1,000 steps" in unfinished
    assert "kama" not in text.split("## Unfinished runs")[0]
    assert "kama" not in (out / "report.csv").read_text()


def test_fewer_than_three_seeds_print_no_interval(tmp_path):
    seeds(tmp_path, "dense", [1000.0, 1200.0, 1100.0], 10119)
    seeds(tmp_path, "kama", [550.0, 660.0], 1543)
    out = tmp_path / "out"
    rows = rows_of(make_report([tmp_path], out, curves=True, reps=REPS))
    kama = rows[("kama", "64-64", "0.0003", "sb3", 1000)]
    assert kama["seeds"] == 2 and kama["ci_note"] == "n<3" and np.isnan(kama["iqm_ci_low"])
    line = next(l for l in (out / "report.md").read_text().splitlines() if l.startswith("| kama"))
    assert "605 [n<3]" in line and "55% [n<3]" in line
    assert "mean +- sd (seeds, ddof=1)" in (out / "report.md").read_text()
    with open(out / "report.csv") as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == 2 and "python train.py policy=kama seed=1" in table[1]["commands"]
    assert (out / "pareto_hopper.png").stat().st_size > 1000 and (out / "curves_hopper.png").is_file()


def test_curves_read_old_and_new_evaluations(tmp_path):
    new = fake_run(tmp_path, "dense", 0, [90.0, 110.0], 10119)
    old = fake_run(tmp_path, "dense", 1, [90.0, 110.0], 10119, old_csv=True)
    for folder in (new, old):
        steps, values = read_curve(folder)
        assert list(steps) == [250, 500, 1000] and values[-1] == pytest.approx(100.0)
    assert read_curve(tmp_path / "nowhere") is None


def test_bad_input_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "nope")])
    assert exit_info.value.code == 2 and "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    with pytest.raises(RLStructError, match="no run folders"):
        make_report([tmp_path / "empty"], tmp_path / "out")
    broken = fake_run(tmp_path / "runs", "kama", 0, [1.0], 1543)
    (broken / "metrics.json").write_text("{not json")
    with pytest.raises(RLStructError, match=r"kama.*metrics.json is corrupt.*delete that run folder"):
        make_report([tmp_path / "runs"], tmp_path / "out")
    (broken / "metrics.json").write_text(json.dumps(dict(status="finished", env="hopper")))
    with pytest.raises(RLStructError, match="finished but lacks algo, structure, params, final_eval"):
        make_report([tmp_path / "runs"], tmp_path / "out")


def test_real_study_1m_reports(tmp_path):
    study = REPO / "results" / "study_1m"
    if not study.is_dir():
        pytest.skip("results/study_1m is not in this checkout")
    out = tmp_path / "out"
    summary = make_report([study], out, curves=True, reps=REPS)
    assert summary["groups"] >= 3 and summary["finished"] >= 9
    assert {"dense", "kama", "toeplitz"} <= {r["structure"] for r in summary["rows"]}
    text = (out / "report.md").read_text()
    assert "## Headlines" in text and "IQM [95% CI]" in text
    assert (out / "curves_hopper.png").is_file()
