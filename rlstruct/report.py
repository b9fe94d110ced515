"""Reward against parameter count: tables, Pareto plots and learning curves from run folders.

    python -m rlstruct.report results/study --out results

Collects every ``metrics.json`` under the given folders (run folders or sweep folders), groups runs
by (env, algo, structure, hidden sizes) across seeds and writes to ``--out``:

* ``report.md`` / ``report.csv``: parameters (actor, critic, total), compression against dense,
  final reward mean +- std across seeds, the interquartile mean (IQM) with a 95% bootstrap
  confidence interval, reward as % of the dense baseline, steps, wall time, and the command of
  each run; unfinished or failed runs are listed separately, never dropped;
* ``pareto_<env>.png``: reward against total parameters (log scale), one marker per structure,
  error bars across seeds, the dense baseline marked;
* ``curves_<env>.png``: evaluation reward against steps from the tensorboard logs (mean and
  min-max band across seeds), one line per structure and width.

It reads files only: nothing here imports the training code.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from rlstruct.cli import report_errors
from rlstruct.errors import RLStructError
from rlstruct.io import make_output_dir

GroupKey = Tuple[str, str, str, str]  # env, algo, structure, hidden
#: what a finished run's metrics.json must hold for the table (older or hand-edited files may not).
FINISHED_KEYS = ("env", "algo", "structure", "params", "final_eval")


@dataclass
class Run:
    """One run folder and its parsed ``metrics.json``."""

    folder: Path
    metrics: Dict

    @property
    def finished(self) -> bool:
        """Whether the run completed and recorded its final evaluation."""
        return self.metrics.get("status") == "finished" and "final_eval" in self.metrics

    @property
    def key(self) -> GroupKey:
        """``(env, algo, structure, hidden)``; a distinct critic shows as ``actor/critic`` and a
        non-default optimizer as ``structure+optimizer`` (e.g. ``orthogonal+projunn_d``), so runs
        that differ only in how they were trained are never averaged together."""
        m = self.metrics
        hidden = "-".join(str(h) for h in m.get("hidden") or []) or "none"
        structure = m["structure"]
        if m.get("critic_structure") and m["critic_structure"] != structure:
            structure = f"{structure}/{m['critic_structure']}"
        optimizer = (m.get("config") or {}).get("optimizer")
        if optimizer:
            structure = f"{structure}+{optimizer}"
        return (m["env"], m["algo"], structure, hidden)


@dataclass
class Group:
    """The finished runs (seeds) sharing one :data:`GroupKey`."""

    key: GroupKey
    runs: List[Run] = field(default_factory=list)

    @property
    def rewards(self) -> np.ndarray:
        """Final mean reward of each run, shape ``(seeds,)``."""
        return np.array([r.metrics["final_eval"]["mean"] for r in self.runs], dtype=float)

    @property
    def params(self) -> Dict[str, int]:
        """Parameter counts (identical across seeds; taken from the first run)."""
        return self.runs[0].metrics["params"]


def find_runs(paths: Iterable[Path]) -> List[Run]:
    """Every folder with a ``metrics.json`` below ``paths`` (corrupt files are reported)."""
    runs = []
    for root in paths:
        root = Path(root)
        if not root.exists():
            raise RLStructError(f"{root} does not exist; pass run folders or sweep folders")
        files = [root / "metrics.json"] if (root / "metrics.json").is_file() else sorted(root.rglob("metrics.json"))
        for path in files:
            try:
                metrics = json.loads(path.read_text())
                problem = None if isinstance(metrics, dict) else "not a JSON object"
            except (OSError, ValueError) as exc:
                problem = str(exc)
            if problem is None and metrics.get("status") == "finished":
                absent = [k for k in FINISHED_KEYS if k not in metrics]
                problem = f"finished but lacks {absent}" if absent else None
            if problem is not None:
                metrics = {"status": f"unreadable metrics.json ({problem})", "env": "?", "algo": "?", "structure": "?"}
            runs.append(Run(path.parent, metrics))
    return runs


def iqm(values: np.ndarray) -> float:
    """Interquartile mean: the mean of the middle 50% (rliable's aggregate)."""
    values = np.sort(np.asarray(values, dtype=float))
    n = len(values)
    lo, hi = int(np.floor(0.25 * n)), int(np.ceil(0.75 * n))
    middle = values[lo:hi] if hi > lo else values
    return float(middle.mean())


def bootstrap_ci(values: np.ndarray, stat: Callable[[np.ndarray], float] = iqm, reps: int = 2000, seed: int = 0) -> Tuple[float, float]:
    """95% percentile bootstrap interval of ``stat`` over runs."""
    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    samples = [stat(rng.choice(values, size=len(values), replace=True)) for _ in range(reps)]
    return (float(np.percentile(samples, 2.5)), float(np.percentile(samples, 97.5)))


def group_runs(runs: Sequence[Run]) -> List[Group]:
    """Finished runs grouped by key, sorted by env, algo, then most parameters first."""
    groups: Dict[GroupKey, Group] = {}
    for run in runs:
        if run.finished:
            groups.setdefault(run.key, Group(run.key)).runs.append(run)
    return sorted(groups.values(), key=lambda g: (g.key[0], g.key[1], -g.params["total"], g.key[2]))


def dense_baseline(groups: Sequence[Group], env: str, algo: str) -> Optional[Group]:
    """The dense group of the same env and algo with the most parameters (the usual baseline)."""
    dense = [g for g in groups if g.key[:3] == (env, algo, "dense")]
    return max(dense, key=lambda g: g.params["total"]) if dense else None


COLUMNS = [
    "env", "algo", "structure", "hidden", "params_actor", "params_critic", "params_total",
    "compression", "seeds", "reward_mean", "reward_std", "reward_iqm", "iqm_ci_low", "iqm_ci_high",
    "pct_of_dense", "steps", "wall_time_s", "commands",
]


def table_rows(groups: Sequence[Group]) -> List[Dict]:
    """One row per group with the :data:`COLUMNS` of ``report.csv``."""
    rows = []
    for g in groups:
        env, algo, structure, hidden = g.key
        rewards = g.rewards
        base = dense_baseline(groups, env, algo)
        pct = 100.0 * rewards.mean() / base.rewards.mean() if base is not None and base.rewards.mean() != 0 else float("nan")
        ci = bootstrap_ci(rewards)
        steps = sorted({int(r.metrics.get("steps", 0)) for r in g.runs})
        rows.append(dict(
            env=env, algo=algo, structure=structure, hidden=hidden,
            params_actor=g.params["actor"], params_critic=g.params["critic"], params_total=g.params["total"],
            compression=round(g.params["dense_total"] / g.params["total"], 2),
            seeds=len(g.runs),
            reward_mean=round(float(rewards.mean()), 1),
            reward_std=round(float(rewards.std()), 1),
            reward_iqm=round(iqm(rewards), 1),
            iqm_ci_low=round(ci[0], 1), iqm_ci_high=round(ci[1], 1),
            pct_of_dense=round(pct, 1),
            steps="/".join(str(s) for s in steps),
            wall_time_s=round(float(np.mean([r.metrics.get("wall_time_s", 0) for r in g.runs])), 0),
            commands=" ; ".join(r.metrics.get("command") or "?" for r in g.runs),
        ))
    return rows


def write_table(rows: List[Dict], unfinished: List[Run], out: Path) -> None:
    """Write ``report.csv`` and ``report.md`` (with the unfinished runs listed) into ``out``."""
    with open(out / "report.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    lines = [
        "| env | algo | structure | hidden | params (actor / critic / total) | compression | seeds "
        "| reward mean +- std | IQM [95% CI] | % of dense | steps | wall time (s) |",
        "|---|---|---|---|---|---:|---:|---|---|---:|---|---:|",
    ]
    for r in rows:
        ci = "" if np.isnan(r["iqm_ci_low"]) else f" [{r['iqm_ci_low']:.0f}, {r['iqm_ci_high']:.0f}]"
        lines.append(
            f"| {r['env']} | {r['algo']} | {r['structure']} | {r['hidden']} | "
            f"{r['params_actor']:,} / {r['params_critic']:,} / {r['params_total']:,} | {r['compression']:.1f}x | "
            f"{r['seeds']} | {r['reward_mean']:.0f} +- {r['reward_std']:.0f} | {r['reward_iqm']:.0f}{ci} | "
            f"{r['pct_of_dense']:.0f}% | {r['steps']} | {r['wall_time_s']:.0f} |"
        )
    if unfinished:
        lines += ["", "Unfinished or failed runs (not in the table above):", ""]
        for run in unfinished:
            m = run.metrics
            steps = m.get("steps") or _checkpoint_steps(run.folder)
            lines.append(
                f"- `{run.folder.name}`: status {m.get('status', 'unknown')}, "
                f"{steps if steps is not None else '?'} of {m.get('total_timesteps', '?')} steps"
            )
    lines += ["", "Commands of every run in the table: see `report.csv` (column `commands`)."]
    (out / "report.md").write_text("\n".join(lines) + "\n")


def _checkpoint_steps(folder: Path) -> Optional[int]:
    pointer = folder / "checkpoints" / "latest.json"
    try:
        return int(json.loads(pointer.read_text())["steps"])
    except (OSError, ValueError, KeyError):
        return None


def read_curve(folder: Path, tag: str = "eval/mean_reward") -> Optional[Tuple[np.ndarray, np.ndarray]]:
    """``(steps, values)`` of a scalar from the run's tensorboard logs (all event files merged)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    points: Dict[int, float] = {}
    for event_file in sorted((folder / "tb").glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(event_file), size_guidance={"scalars": 0})
        acc.Reload()
        if tag in acc.Tags().get("scalars", []):
            for e in acc.Scalars(tag):
                points[int(e.step)] = float(e.value)
    if not points:
        return None
    steps = np.array(sorted(points))
    return steps, np.array([points[s] for s in steps])


STYLE = {"dense": ("k", "*"), "kama": ("tab:blue", "o"), "toeplitz": ("tab:orange", "s"),
         "ldr": ("tab:green", "^"), "hd3": ("tab:red", "D"), "lowrank": ("tab:purple", "v")}


def _style(structure: str, index: int) -> Tuple[str, str]:
    palette = ["tab:brown", "tab:pink", "tab:gray", "tab:olive", "tab:cyan"]
    return STYLE.get(re.split(r"[/+]", structure)[0], (palette[index % len(palette)], "P"))


def plot_pareto(groups: Sequence[Group], env: str, out: Path) -> Path:
    """``pareto_<env>.png``: reward against total parameters, with the Pareto frontier."""
    fig, ax = _new_figure()
    subset = [g for g in groups if g.key[0] == env]
    algos = [g.key[1] for g in subset]
    main_algo = max(set(algos), key=algos.count)  # the frontier's algorithm; others drawn hollow
    labelled = set()
    for i, g in enumerate(subset):
        color, marker = _style(g.key[2], i)
        label = f"{g.key[2]} ({g.key[1]})" if len(set(algos)) > 1 else g.key[2]
        ax.errorbar(
            g.params["total"], g.rewards.mean(), yerr=g.rewards.std(), fmt=marker, color=color,
            markersize=12 if g.key[2] == "dense" else 7, capsize=3,
            markerfacecolor=color if g.key[1] == main_algo else "white",
            label=None if label in labelled else label,
        )
        ax.annotate(g.key[3], (g.params["total"], g.rewards.mean()), textcoords="offset points",
                    xytext=(5, 4), fontsize=7)
        labelled.add(label)
    # Pareto frontier of the main algorithm: best reward for at most this many parameters
    pts = sorted((g.params["total"], g.rewards.mean()) for g in subset if g.key[1] == main_algo)
    frontier, best = [], -np.inf
    for x, y in pts:
        if y > best:
            frontier.append((x, y))
            best = y
    if len(frontier) > 1:
        ax.step(*zip(*frontier), where="post", color="0.6", lw=1, zorder=0,
                label=f"Pareto frontier ({main_algo})" if len(set(algos)) > 1 else "Pareto frontier")
    ax.set_xscale("log")
    return _finish(fig, ax, "learned parameters (actor + critic, log scale)",
                   "final reward (mean +- std over seeds)", f"{env}: reward against parameter count",
                   out / f"pareto_{env}.png", legend_size=8)


def _new_figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(6.5, 4.5))


def _finish(fig, ax, xlabel: str, ylabel: str, title: str, path: Path, legend_size: int) -> Path:
    import matplotlib.pyplot as plt

    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=legend_size)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_curves(groups: Sequence[Group], env: str, out: Path) -> Optional[Path]:
    """``curves_<env>.png`` from the tensorboard logs; ``None`` when no run has a curve."""
    fig, ax = _new_figure()
    drawn = 0
    for i, g in enumerate(g for g in groups if g.key[0] == env):
        curves = [c for c in (read_curve(r.folder) for r in g.runs) if c is not None]
        if not curves:
            continue
        grid = np.unique(np.concatenate([c[0] for c in curves]))
        grid = grid[grid <= min(c[0][-1] for c in curves)]
        values = np.stack([np.interp(grid, s, v) for s, v in curves])
        color, _ = _style(g.key[2], i)
        ax.plot(grid, values.mean(0), color=color, label=f"{g.key[2]} {g.key[1]} h{g.key[3]} (n={len(curves)})",
                ls="-" if g.key[3] == "64-64" else "--")
        ax.fill_between(grid, values.min(0), values.max(0), color=color, alpha=0.15)
        drawn += 1
    if not drawn:
        import matplotlib.pyplot as plt

        plt.close(fig)
        return None
    return _finish(fig, ax, "environment steps", "evaluation reward",
                   f"{env}: learning curves (mean, min-max band over seeds)", out / f"curves_{env}.png",
                   legend_size=7)


def make_report(paths: Sequence[Path], out: Path, curves: bool = True) -> Dict:
    """Write the table and figures for the runs below ``paths``; returns a summary with the rows."""
    runs = find_runs(paths)
    make_output_dir(out, "report")
    groups = group_runs(runs)
    unfinished = [r for r in runs if not r.finished]
    rows = table_rows(groups)
    write_table(rows, unfinished, out)
    figures = []
    for env in sorted({g.key[0] for g in groups}):
        figures.append(plot_pareto(groups, env, out))
        if curves:
            path = plot_curves(groups, env, out)
            if path:
                figures.append(path)
    return dict(runs=len(runs), finished=len(runs) - len(unfinished), groups=len(groups), figures=figures, rows=rows)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command line: ``python -m rlstruct.report PATHS... [--out DIR] [--no-curves]``."""
    parser = argparse.ArgumentParser(description="Table and plots of reward against parameter count.")
    parser.add_argument("paths", nargs="+", type=Path, help="run folders or sweep folders")
    parser.add_argument("--out", type=Path, default=Path("results"), help="output folder (default results/)")
    parser.add_argument("--no-curves", action="store_true", help="skip the learning-curve plots")
    args = parser.parse_args(argv)
    with report_errors():
        summary = make_report(args.paths, args.out, curves=not args.no_curves)
    print(f"{summary['runs']} runs ({summary['finished']} finished) in {summary['groups']} groups")
    for row in summary["rows"]:
        print(f"  {row['env']:12s} {row['algo']:5s} {row['structure']:12s} h{row['hidden']:8s} "
              f"params {row['params_total']:>7,}  reward {row['reward_mean']:8.1f} +- {row['reward_std']:6.1f} "
              f"({row['seeds']} seeds, {row['pct_of_dense']}% of dense)")
    print(f"wrote {args.out / 'report.md'}, {args.out / 'report.csv'} and {len(summary['figures'])} figures")
    return 0


if __name__ == "__main__":
    sys.exit(main())
