"""Reward against parameter count: tables, Pareto plots and learning curves from run folders.

    python -m rlstruct.report results/study --out results/study_report [--reps 2000]

Collects every ``metrics.json`` under the given folders (run folders or sweep folders) and writes
to ``--out``:

* ``report.md``: per env a headline (the smallest structured row that matches the reference dense
  net), then one table per *family* (env, algo, recipe, total_timesteps) with one row per group of
  seeds; unfinished runs are listed separately and never enter a table;
* ``report.csv``: the same rows with every number unrounded, plus the folders and commands of the
  runs behind each row;
* ``pareto_<env>.png``: final reward IQM (95% CI error bars) against total parameters (log
  scale), the dense frontier as a line, one marker style per structure;
* ``curves_<env>.png``: evaluation reward against steps from each run's ``evaluations.csv``
  (mean across seeds, band +- sd across seeds).

Statistics (see ``docs/report.md``): a run's score is the mean of its final-evaluation episode
rewards; across the seeds of a group we report mean +- sample sd (ddof=1) and the interquartile
mean (IQM) with a stratified-bootstrap 95% CI from ``rliable``; the probability of improvement
over the reference dense group also comes from ``rliable``. Intervals of groups with fewer than 3
seeds are printed as ``n<3``.

It reads files only: nothing here imports the training code.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from rlstruct.cli import report_errors
from rlstruct.errors import RLStructError
from rlstruct.io import make_output_dir

#: (env, algo, recipe, total_timesteps): runs of one family are comparable with each other.
FamilyKey = Tuple[str, str, str, int]
#: family + (structure label, hidden label, actor learning rate, training settings as JSON): the
#: runs (seeds) of one row.
GroupKey = Tuple[str, str, str, int, str, str, str, str]
#: what a finished run's metrics.json must hold to enter a table.
FINISHED_KEYS = ("env", "algo", "structure", "params", "final_eval")
#: fewer seeds than this and a bootstrap interval is not printed (``n<3``).
MIN_SEEDS_FOR_CI = 3
NO_CI = "n<3"
OUTSIDE = "outside frontier"
DEFAULT_RECIPE = "sb3"
#: other names of the libraries'-defaults recipe (conf/recipe/default.yaml names it ``default``).
RECIPE_ALIASES = {"default": DEFAULT_RECIPE}
#: config.algo keys that say where a run executed, not how it trained (never split groups).
EXECUTION_KEYS = ("n_workers", "backend", "ray_address", "start_method", "device")
#: policy keys already in a group's key (structure and width labels) or that only name the config.
POLICY_IDENTITY_KEYS = ("name", "structure", "hidden", "critic_hidden")


def _flatten(value: Any, prefix: str = "") -> Dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    if not isinstance(value, dict):
        return {prefix.rstrip("."): value} if prefix else {}
    flat: Dict[str, Any] = {}
    for k, v in value.items():
        flat.update(_flatten(v, f"{prefix}{k}."))
    return flat


# --------------------------------------------------------------------------------------------
# reading run folders


@dataclass
class Run:
    """One run folder and its parsed ``metrics.json``."""

    folder: Path
    metrics: Dict[str, Any]

    @property
    def config(self) -> Dict[str, Any]:
        """The full run config stored in ``metrics.json`` (empty for very old runs)."""
        return self.metrics.get("config") or {}

    @property
    def finished(self) -> bool:
        """Whether the run completed and recorded its final evaluation."""
        return self.metrics.get("status") == "finished" and "final_eval" in self.metrics

    @property
    def recipe(self) -> str:
        """``config.recipe.name`` (``sb3`` for runs from before recipes existed; ``default`` is
        the same recipe under its newer name)."""
        recipe = self.config.get("recipe")
        name = str((recipe.get("name") if isinstance(recipe, dict) else recipe) or DEFAULT_RECIPE)
        return RECIPE_ALIASES.get(name, name)

    @property
    def learning_rate(self) -> str:
        """The actor learning rate as written in the config (PPO/TRPO ``algo.kwargs``, ES ``algo``)."""
        algo = self.config.get("algo") or {}
        lr = (algo.get("kwargs") or {}).get("learning_rate", algo.get("learning_rate"))
        if lr is None:
            return "-"
        return f"{lr:g}" if isinstance(lr, (int, float)) else str(lr)

    @property
    def structure_label(self) -> str:
        """``structure``, ``actor/critic`` when the critic differs, ``+optimizer`` when one is set."""
        m = self.metrics
        label = str(m["structure"])
        if m.get("critic_structure") and m["critic_structure"] != m["structure"]:
            label = f"{label}/{m['critic_structure']}"
        optimizer = self.config.get("optimizer")
        if optimizer:
            label = f"{label}+{optimizer}"
        return label

    @property
    def hidden_label(self) -> str:
        """Hidden sizes as ``64-64`` (``actor/critic`` when the critic's differ)."""
        label = "-".join(str(h) for h in self.metrics.get("hidden") or []) or "none"
        critic_hidden = (self.config.get("policy") or {}).get("critic_hidden")
        if critic_hidden and list(critic_hidden) != list(self.metrics.get("hidden") or []):
            label += "/" + "-".join(str(h) for h in critic_hidden)
        return label

    @property
    def settings(self) -> Dict[str, Any]:
        """How the run trained beyond its structure: the algorithm's settings (less where it
        executed), the optimizer's kwargs and the policy's settings (layer kwargs, activation,
        initial log std, ...; unset ones left out), flattened."""
        algo = {k: v for k, v in (self.config.get("algo") or {}).items() if k not in EXECUTION_KEYS}
        policy = {k: v for k, v in (self.config.get("policy") or {}).items()
                  if k not in POLICY_IDENTITY_KEYS and v not in (None, {}, [])}
        return _flatten(dict(algo=algo, optimizer_kwargs=self.config.get("optimizer_kwargs") or {}, **policy))

    @property
    def family(self) -> FamilyKey:
        """``(env, algo, recipe, total_timesteps)``."""
        m = self.metrics
        return (str(m["env"]), str(m["algo"]), self.recipe, int(m.get("total_timesteps") or 0))

    @property
    def key(self) -> GroupKey:
        """The family plus structure label, hidden label, learning rate and :attr:`settings`."""
        settings = json.dumps(self.settings, sort_keys=True, default=str)
        return self.family + (self.structure_label, self.hidden_label, self.learning_rate, settings)

    @property
    def score(self) -> float:
        """The mean of the final evaluation's per-episode rewards (``final_eval.mean`` if absent)."""
        final = self.metrics["final_eval"]
        rewards = final.get("rewards")
        if rewards:
            return float(np.mean(np.asarray(rewards, dtype=float)))
        return float(final["mean"])

    @property
    def steps_done(self) -> Optional[int]:
        """Steps trained: ``metrics.steps``, else the latest checkpoint's, else ``None``."""
        if self.metrics.get("steps") is not None:
            return int(self.metrics["steps"])
        pointer = self.folder / "checkpoints" / "latest.json"
        try:
            return int(json.loads(pointer.read_text())["steps"])
        except (OSError, ValueError, KeyError, TypeError):
            return None


def _load_metrics(path: Path) -> Dict[str, Any]:
    """Parse one ``metrics.json``; a corrupt file is a one-line :class:`RLStructError`."""
    fix = "delete that run folder or re-run it (train.py ... resume=true)"
    try:
        metrics = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise RLStructError(f"{path} is corrupt ({reason}); {fix}") from exc
    if not isinstance(metrics, dict):
        raise RLStructError(f"{path} is corrupt (not a JSON object); {fix}")
    if metrics.get("status") == "finished":
        absent = [k for k in FINISHED_KEYS if k not in metrics]
        if absent:
            raise RLStructError(f"{path} is corrupt (finished but lacks {', '.join(absent)}); {fix}")
    return metrics


def find_runs(paths: Sequence[Path]) -> List[Run]:
    """Every folder with a ``metrics.json`` at or below ``paths``, sorted by folder."""
    if not paths:
        raise RLStructError("no folders given; pass run folders or sweep folders")
    runs: Dict[Path, Run] = {}
    for root in map(Path, paths):
        if not root.exists():
            raise RLStructError(f"{root} does not exist; pass run folders or sweep folders")
        if (root / "metrics.json").is_file():
            files = [root / "metrics.json"]
        else:
            files = sorted(root.rglob("metrics.json"))
        for path in files:
            runs.setdefault(path.parent.resolve(), Run(path.parent, _load_metrics(path)))
    if not runs:
        raise RLStructError(
            f"no run folders (with a metrics.json) below {', '.join(map(str, paths))}; "
            "pass the folders train.py wrote (out_dir) or their parent"
        )
    return sorted(runs.values(), key=lambda r: str(r.folder))


# --------------------------------------------------------------------------------------------
# statistics (rliable)


def _rliable() -> Tuple[Any, Any]:
    """``(rliable.library, rliable.metrics)``, imported on first use (they pull in scipy/arch).

    rliable pins ``arch<8``, whose 7.x releases fail to import under pandas 3: pyproject pins
    ``pandas<3`` for that reason.
    """
    from rliable import library, metrics

    return library, metrics


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed numpy's global generator (rliable's bootstrap draws from it) and restore it after."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def _column(scores: Sequence[float]) -> np.ndarray:
    """Scores as rliable's ``(num_runs, num_tasks=1)`` matrix."""
    return np.asarray(scores, dtype=float).reshape(-1, 1)


def iqm(scores: Sequence[float]) -> float:
    """Interquartile mean across runs (``rliable.metrics.aggregate_iqm``)."""
    _, metrics = _rliable()
    return float(metrics.aggregate_iqm(_column(scores)))


def iqm_interval(scores: Sequence[float], reps: int = 2000, seed: int = 0) -> Tuple[float, float, float]:
    """``(IQM, low, high)``: stratified-bootstrap 95% percentile CI from rliable (NaN if n<3)."""
    library, metrics = _rliable()
    with _seeded(seed):
        point, interval = library.get_interval_estimates(
            {"g": _column(scores)}, lambda x: np.array([metrics.aggregate_iqm(x)]), reps=reps)
    low, high = (float("nan"),) * 2 if len(scores) < MIN_SEEDS_FOR_CI else map(float, np.ravel(interval["g"]))
    return float(point["g"][0]), low, high


def iqm_ratio_interval(scores: Sequence[float], reference: Sequence[float], reps: int = 2000,
                       seed: int = 0) -> Tuple[float, float, float]:
    """``(100 * IQM(scores) / IQM(reference), low, high)``, both resampled independently (rliable)."""
    library, metrics = _rliable()

    def ratio(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return np.array([100.0 * metrics.aggregate_iqm(x) / metrics.aggregate_iqm(y)])

    if iqm(reference) <= 0:
        return (float("nan"),) * 3
    with _seeded(seed), np.errstate(divide="ignore", invalid="ignore"):
        point, interval = library.get_interval_estimates(
            {"g": (_column(scores), _column(reference))}, ratio, reps=reps)
    enough = min(len(scores), len(reference)) >= MIN_SEEDS_FOR_CI
    low, high = map(float, np.ravel(interval["g"])) if enough else (float("nan"),) * 2
    return float(point["g"][0]), low, high


def improvement_interval(scores: Sequence[float], reference: Sequence[float], reps: int = 2000,
                         seed: int = 0) -> Tuple[float, float, float]:
    """``(P(score > reference), low, high)``: rliable's probability of improvement with its CI."""
    library, metrics = _rliable()
    with _seeded(seed):
        point, interval = library.get_interval_estimates(
            {"x,y": (_column(scores), _column(reference))}, metrics.probability_of_improvement, reps=reps)
    enough = min(len(scores), len(reference)) >= MIN_SEEDS_FOR_CI
    low, high = map(float, np.ravel(interval["x,y"])) if enough else (float("nan"),) * 2
    return float(point["x,y"]), low, high


def frontier_at(points: Sequence[Tuple[int, float]], params: int) -> Optional[float]:
    """The dense frontier's reward at ``params``: linear in log10(params) between the frontier's
    points ``(params, IQM)``; ``None`` outside their range (no extrapolation)."""
    if not points:
        return None
    xs = np.log10(np.array([p for p, _ in points], dtype=float))
    ys = np.array([y for _, y in points], dtype=float)
    order = np.argsort(xs)
    xs, ys = xs[order], ys[order]
    x = math.log10(params)
    if x < xs[0] - 1e-12 or x > xs[-1] + 1e-12:
        return None
    return float(np.interp(x, xs, ys))


# --------------------------------------------------------------------------------------------
# groups and rows


@dataclass
class Group:
    """The finished runs (seeds) sharing one :data:`GroupKey`."""

    key: GroupKey
    runs: List[Run] = field(default_factory=list)
    #: the settings that tell this group from another with the same structure, hidden sizes and
    #: learning rate (``algo.sampling=gaussian``); empty when no other group shares those.
    variant: str = ""

    @property
    def family(self) -> FamilyKey:
        """``(env, algo, recipe, total_timesteps)``."""
        return self.key[:4]  # type: ignore[return-value]

    @property
    def structure(self) -> str:
        """The structure label (``dense``, ``kama``, ``orthogonal+projunn_d``, ...)."""
        return self.key[4]

    @property
    def hidden(self) -> str:
        """The hidden-size label (``64-64``)."""
        return self.key[5]

    @property
    def learning_rate(self) -> str:
        """The actor learning rate label."""
        return self.key[6]

    @property
    def is_dense(self) -> bool:
        """A plain dense net (dense actor and critic, default optimizer): a frontier point."""
        return self.structure == "dense"

    @property
    def scores(self) -> np.ndarray:
        """Each run's score (mean final-evaluation episode reward), shape ``(seeds,)``."""
        return np.array([r.score for r in self.runs], dtype=float)

    @property
    def params(self) -> Dict[str, int]:
        """Parameter counts (identical across seeds; taken from the first run)."""
        return self.runs[0].metrics["params"]

    @property
    def label(self) -> str:
        """``structure hidden`` (with ``lr=`` and the variant appended when given), for text."""
        return (f"{self.structure} {self.hidden}" + (f" lr={self.learning_rate}" if self.learning_rate != "-" else "")
                + (f" [{self.variant}]" if self.variant else ""))


def group_runs(runs: Sequence[Run]) -> List[Group]:
    """Finished runs grouped by key; sorted by family, then most parameters first, dense first."""
    groups: Dict[GroupKey, Group] = {}
    for run in runs:
        if run.finished:
            groups.setdefault(run.key, Group(run.key)).runs.append(run)
    twins: Dict[Tuple, List[Group]] = {}
    for g in groups.values():
        twins.setdefault(g.key[:7], []).append(g)
    for siblings in twins.values():
        if len(siblings) > 1:
            all_settings = [json.loads(g.key[7]) for g in siblings]
            differing = sorted({k for st in all_settings for k in st
                                if len({json.dumps(o.get(k), default=str) for o in all_settings}) > 1})
            for g, st in zip(siblings, all_settings):
                g.variant = ", ".join(f"{k.split('.', 1)[-1] if k.startswith('algo.') else k}={st.get(k)}"
                                      for k in differing)
    return sorted(groups.values(), key=lambda g: (g.family, -g.params["total"], not g.is_dense, g.key[4:]))


def family_label(family: FamilyKey) -> str:
    """``ppo, recipe sb3, 300,000 steps`` (env left out)."""
    _, algo, recipe, steps = family
    return f"{algo}, recipe {recipe}, {steps:,} steps"


#: the columns of report.csv, in order.
COLUMNS = [
    "env", "algo", "recipe", "total_timesteps", "structure", "variant", "hidden", "learning_rate",
    "params_actor", "params_critic", "params_total", "reference_dense", "compression", "seeds",
    "reward_mean", "reward_sd_ddof1", "reward_iqm", "iqm_ci_low", "iqm_ci_high",
    "pct_of_ref_dense_iqm", "pct_ci_low", "pct_ci_high", "prob_improvement", "poi_ci_low", "poi_ci_high",
    "frontier_iqm_at_size", "gain_over_frontier", "ci_note", "steps_done", "wall_time_s", "folders", "commands",
]


def reference_dense(groups: Sequence[Group], family: FamilyKey) -> Optional[Group]:
    """The family's dense group with the most parameters (ties: the higher IQM)."""
    dense = [g for g in groups if g.family == family and g.is_dense]
    if not dense:
        return None
    return max(dense, key=lambda g: (g.params["total"], iqm(g.scores)))


def dense_frontier(groups: Sequence[Group], family: FamilyKey) -> List[Tuple[int, float]]:
    """``(total params, IQM)`` of the family's dense groups, the best IQM at each size, by size."""
    best: Dict[int, float] = {}
    for g in groups:
        if g.family == family and g.is_dense:
            value = iqm(g.scores)
            best[g.params["total"]] = max(value, best.get(g.params["total"], -math.inf))
    return sorted(best.items())


def table_rows(groups: Sequence[Group], reps: int = 2000, seed: int = 0) -> List[Dict[str, Any]]:
    """One dict per group with the :data:`COLUMNS` (floats unrounded; NaN where not defined)."""
    nan = float("nan")
    rows = []
    references = {f: reference_dense(groups, f) for f in {g.family for g in groups}}
    frontiers = {f: dense_frontier(groups, f) for f in references}
    for g in groups:
        scores = g.scores
        ref = references[g.family]
        point, low, high = iqm_interval(scores, reps, seed)
        pct = poi = (nan, nan, nan)
        compression = nan
        if ref is not None:
            compression = ref.params["total"] / g.params["total"]
            pct = iqm_ratio_interval(scores, ref.scores, reps, seed)
            if g is not ref:
                poi = improvement_interval(scores, ref.scores, reps, seed)
        frontier = None if g.is_dense else frontier_at(frontiers[g.family], g.params["total"])
        few = len(scores) < MIN_SEEDS_FOR_CI or (ref is not None and len(ref.scores) < MIN_SEEDS_FOR_CI)
        env, algo, recipe, steps = g.family
        rows.append(dict(
            env=env, algo=algo, recipe=recipe, total_timesteps=steps, structure=g.structure, variant=g.variant,
            hidden=g.hidden, learning_rate=g.learning_rate,
            params_actor=g.params["actor"], params_critic=g.params["critic"], params_total=g.params["total"],
            reference_dense=ref.label if ref is not None else "",
            compression=compression, seeds=len(scores),
            reward_mean=float(scores.mean()),
            reward_sd_ddof1=float(scores.std(ddof=1)) if len(scores) > 1 else nan,
            reward_iqm=point, iqm_ci_low=low, iqm_ci_high=high,
            pct_of_ref_dense_iqm=pct[0], pct_ci_low=pct[1], pct_ci_high=pct[2],
            prob_improvement=poi[0], poi_ci_low=poi[1], poi_ci_high=poi[2],
            frontier_iqm_at_size=nan if frontier is None else frontier,
            gain_over_frontier=nan if frontier is None else point - frontier,
            ci_note=NO_CI if few else "",
            steps_done="/".join(str(s) for s in sorted({r.steps_done or 0 for r in g.runs})),
            wall_time_s=float(np.mean([r.metrics.get("wall_time_s") or 0.0 for r in g.runs])),
            folders=" ; ".join(str(r.folder) for r in g.runs),
            commands=" ; ".join(r.metrics.get("command") or "?" for r in g.runs),
            _group=g, _is_reference=g is ref, _is_dense=g.is_dense,
            _frontier_status="" if g.is_dense else (OUTSIDE if frontier is None else "inside"),
        ))
    return rows


def headline(rows: Sequence[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    """Of one family's structured rows (reference known): the smallest at >= 100% of the
    reference dense IQM, else the one with the highest %; ``None`` when there is none."""
    candidates = [r for r in rows if not r["_is_dense"] and not math.isnan(r["pct_of_ref_dense_iqm"])]
    if not candidates:
        return None
    reaching = [r for r in candidates if r["pct_of_ref_dense_iqm"] >= 100.0]
    if reaching:
        return dict(min(reaching, key=lambda r: (r["params_total"], -r["reward_iqm"])), _reaches=True)
    return dict(max(candidates, key=lambda r: r["pct_of_ref_dense_iqm"]), _reaches=False)


# --------------------------------------------------------------------------------------------
# writing report.md / report.csv


def _num(value: float, digits: int = 0) -> str:
    """A number for the tables; ``-`` for NaN."""
    return "-" if value is None or math.isnan(value) else f"{value:,.{digits}f}"


def _interval(point: float, low: float, high: float, digits: int = 0, suffix: str = "") -> str:
    """``point [low, high]`` or ``point [n<3]``; ``-`` when the point is undefined."""
    if math.isnan(point):
        return "-"
    ci = NO_CI if math.isnan(low) else f"{_num(low, digits)}, {_num(high, digits)}"
    return f"{_num(point, digits)}{suffix} [{ci}]"


def _gain(row: Dict[str, Any]) -> str:
    if row["_is_dense"]:
        return "(frontier)"
    if row["_frontier_status"] == OUTSIDE:
        return OUTSIDE
    return f"{row['gain_over_frontier']:+,.0f}"


TABLE_HEADER = (
    "| structure | hidden | lr | params (actor / critic / total) | compression (ref dense / row params) "
    "| seeds | mean +- sd (seeds, ddof=1) | IQM [95% CI] | % of ref dense IQM [95% CI] "
    "| P(improvement over ref dense) [95% CI] | dense frontier IQM at this size | gain over frontier (IQM) "
    "| wall time (s, mean) |"
)


def _table_line(r: Dict[str, Any]) -> str:
    sd = "n=1" if math.isnan(r["reward_sd_ddof1"]) else _num(r["reward_sd_ddof1"])
    poi = "ref" if r["_is_reference"] else _interval(r["prob_improvement"], r["poi_ci_low"], r["poi_ci_high"], 2)
    structure = r["structure"] + (f" [{r['variant']}]" if r["variant"] else "")
    structure = f"**{structure}** (ref)" if r["_is_reference"] else structure
    pct = ("100% (ref)" if r["_is_reference"]
           else _interval(r["pct_of_ref_dense_iqm"], r["pct_ci_low"], r["pct_ci_high"], suffix="%"))
    return (
        f"| {structure} | {r['hidden']} | {r['learning_rate']} | "
        f"{r['params_actor']:,} / {r['params_critic']:,} / {r['params_total']:,} | "
        f"{'-' if math.isnan(r['compression']) else format(r['compression'], '.1f') + 'x'} | {r['seeds']} | "
        f"{_num(r['reward_mean'])} +- {sd} | {_interval(r['reward_iqm'], r['iqm_ci_low'], r['iqm_ci_high'])} | "
        f"{pct} | {poi} | "
        f"{'-' if r['_is_dense'] or math.isnan(r['frontier_iqm_at_size']) else _num(r['frontier_iqm_at_size'])} | "
        f"{_gain(r)} | {_num(r['wall_time_s'])} |"
    )


def _headline_line(env: str, family: FamilyKey, rows: Sequence[Dict[str, Any]]) -> str:
    ref = next((r for r in rows if r["_is_reference"]), None)
    where = f"**{env}** ({family_label(family)})"
    if ref is None:
        return f"- {where}: no dense group, so no reference and no % of dense."
    ref_text = (f"reference dense {ref['hidden']} (IQM {_num(ref['reward_iqm'])}, "
                f"{ref['params_total']:,} params, {ref['seeds']} seeds)")
    best = headline(rows)
    if best is None:
        return f"- {where}: {ref_text}; no structured row."
    gain = _gain(best)
    gain = "outside the dense frontier's range" if gain == OUTSIDE else f"gain over the dense frontier {gain}"
    what = ("smallest structured row at >= 100% of the reference dense IQM" if best["_reaches"]
            else "no structured row reaches 100% of the reference dense IQM; the best fraction")
    pct = _interval(best["pct_of_ref_dense_iqm"], best["pct_ci_low"], best["pct_ci_high"], suffix="%")
    seeds = (f"{best['seeds']} seeds (reference: {ref['seeds']})"
             + (" (n<3 on one side: no CI)" if best["ci_note"] else ""))
    return (
        f"- {where}, {ref_text}: {what}: **{best['_group'].label}**, "
        f"{best['params_total']:,} params = **{best['compression']:.1f}x compression**, "
        f"IQM {_interval(best['reward_iqm'], best['iqm_ci_low'], best['iqm_ci_high'])} = "
        f"**{pct} of dense** (IQM ratio [95% CI]), {gain}, {seeds}."
    )


def write_csv(rows: Sequence[Dict[str, Any]], path: Path) -> None:
    """``report.csv``: :data:`COLUMNS`, numbers unrounded, empty cells where undefined."""
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else v)
                             for k, v in row.items() if k in COLUMNS})


def write_markdown(rows: Sequence[Dict[str, Any]], unfinished: Sequence[Run], figures: Dict[str, List[Path]],
                   command: str, n_runs: int, path: Path) -> None:
    """``report.md``: command, conventions, headlines, a table per family, figures, unfinished runs."""
    families = sorted({r["_group"].family for r in rows})
    envs = sorted({f[0] for f in families})
    lines = [
        "# Reward against parameter count",
        "",
        f"Generated by `{command}` from {n_runs} run folders "
        f"({n_runs - len(unfinished)} finished, {len(rows)} groups).",
        "",
        "Conventions (details in `docs/report.md`): a run's score is the mean of its final-evaluation "
        "episode rewards. `mean +- sd (seeds, ddof=1)` is the mean across seeds +- the sample standard "
        "deviation across seeds. `IQM [95% CI]` is the interquartile mean across seeds with a "
        "stratified-bootstrap 95% percentile interval (rliable); `n<3` means fewer than 3 seeds, where no "
        "interval is given. The reference dense (ref) is the family's dense group with the most parameters; "
        "`% of ref dense` is the ratio of IQMs, `P(improvement)` is rliable's probability that a run of the "
        "row beats a run of the reference. The dense frontier is the family's dense groups joined linearly in "
        "log10(params); the gain is the row's IQM minus the frontier's at the row's parameter count.",
        "",
        "## Headlines",
        "",
    ]
    for env in envs:
        for family in [f for f in families if f[0] == env]:
            lines.append(_headline_line(env, family, [r for r in rows if r["_group"].family == family]))
    for env in envs:
        lines += ["", f"## {env}", ""]
        for family in [f for f in families if f[0] == env]:
            lines += [f"### {env}: {family_label(family)}", "", TABLE_HEADER, "|" + "---|" * 4 + "---:|" * 9]
            lines += [_table_line(r) for r in rows if r["_group"].family == family]
            lines.append("")
        lines += [f"![{p.stem}]({p.name})" for p in figures.get(env, [])]
    lines += ["", "## Unfinished runs (in no table)", ""]
    if unfinished:
        for run in unfinished:
            steps = run.steps_done
            total = run.metrics.get("total_timesteps")
            lines.append(
                f"- `{run.folder}`: status {run.metrics.get('status', 'unknown')}, "
                f"{'?' if steps is None else format(steps, ',')} of "
                f"{'?' if total is None else format(int(total), ',')} steps"
            )
    else:
        lines.append("None.")
    lines += ["", "The folders and commands of every run in a table: `report.csv` (columns `folders`, `commands`)."]
    path.write_text("\n".join(lines) + "\n")


# --------------------------------------------------------------------------------------------
# figures


#: colour and marker of each structure in the figures (others cycle through a palette).
STYLE = {"dense": ("black", "*"), "kama": ("tab:blue", "o"), "toeplitz": ("tab:orange", "s"),
         "ldr": ("tab:green", "^"), "hd3": ("tab:red", "D"), "lowrank": ("tab:purple", "v"),
         "circulant": ("tab:brown", "<"), "hankel": ("tab:pink", ">"), "fastfood": ("tab:olive", "h"),
         "kaleidoscope": ("tab:cyan", "p")}
PALETTE = [("tab:gray", "P"), ("tab:brown", "X"), ("tab:pink", "d"), ("tab:olive", "H"), ("tab:cyan", "8")]


def _style(structure: str, others: List[str]) -> Tuple[str, str]:
    """``(colour, marker)`` for a structure label; labels not in :data:`STYLE` get a palette entry."""
    if structure in STYLE:
        return STYLE[structure]
    if structure not in others:
        others.append(structure)
    return PALETTE[others.index(structure) % len(PALETTE)]


def _main_family(groups: Sequence[Group]) -> Tuple[str, str]:
    """``(algo, recipe)`` drawn filled: the most frequent algo, its newest recipe (zoo over sb3)."""
    algos = [g.family[1] for g in groups]
    algo = max(sorted(set(algos)), key=algos.count)
    recipes = [g.family[2] for g in groups if g.family[1] == algo]
    recipe = "zoo" if "zoo" in recipes else max(sorted(set(recipes)), key=recipes.count)
    return algo, recipe


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_pareto(rows: Sequence[Dict[str, Any]], env: str, out: Path) -> Path:
    """``pareto_<env>.png``: IQM (95% CI bars) against total params, dense frontier lines."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 5.5))
    subset = [r for r in rows if r["env"] == env]
    # rows of equal size would hide each other: spread them a little (x factor 1.035 each)
    seen: Dict[int, int] = {}
    dodge = {}
    for r in subset:
        dodge[id(r)] = 1.035 ** seen.get(r["params_total"], 0)
        seen[r["params_total"]] = seen.get(r["params_total"], 0) + 1
    main = _main_family([r["_group"] for r in subset])
    families = sorted({r["_group"].family for r in subset})
    others: List[str] = []
    labelled = set()
    for i, family in enumerate(families):
        filled = family[1:3] == main
        tag = family_label(family)
        dense = sorted((r for r in subset if r["_group"].family == family and r["_is_dense"]),
                       key=lambda r: r["params_total"])
        frontier = dense_frontier([r["_group"] for r in dense], family)
        if frontier:
            ax.plot(*zip(*frontier), color="black" if filled else "0.5", lw=1.3, zorder=1,
                    ls="-" if filled else ["--", ":", "-."][i % 3], label=f"dense frontier ({tag})")
        for r in subset:
            if r["_group"].family != family:
                continue
            color, marker = _style(r["structure"], others)
            y = r["reward_iqm"]
            yerr = None
            if not math.isnan(r["iqm_ci_low"]):
                yerr = [[y - r["iqm_ci_low"]], [r["iqm_ci_high"] - y]]
            name = r["structure"] + (f" [{r['variant']}]" if r["variant"] else "")
            label = name if filled else f"{name} ({tag})"
            x = r["params_total"] * dodge[id(r)]
            ax.errorbar(x, y, yerr=yerr, fmt=marker, color=color, capsize=3, zorder=2,
                        markersize=13 if r["_is_dense"] else 8, alpha=0.9, elinewidth=1,
                        markerfacecolor=color if filled else "white", markeredgewidth=1.5,
                        label=None if label in labelled else label)
            labelled.add(label)
            note = r["hidden"] + ("" if r["seeds"] >= MIN_SEEDS_FOR_CI else f" (n={r['seeds']})")
            ax.annotate(note, (x, y), textcoords="offset points", xytext=(6, 3), fontsize=7,
                        color="0.3")
    ax.set_xscale("log")
    ax.set_xlabel("learned parameters (actor + critic, log scale)")
    ax.set_ylabel("final reward: IQM across seeds, 95% CI bars")
    ax.set_title(f"{env}: reward against parameter count\n(hollow: other algorithm or recipe; no bar: n<3 "
                 "seeds; label: hidden sizes; equal sizes nudged apart)", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.tight_layout()
    path = out / f"pareto_{env}.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def read_curve(folder: Path) -> Optional[Tuple[np.ndarray, np.ndarray]]:
    """``(steps, mean_reward)`` from a run's ``evaluations.csv``; ``None`` if absent or unreadable."""
    path = folder / "evaluations.csv"
    try:
        with open(path, newline="") as handle:
            points = {int(float(row["step"])): float(row["mean_reward"]) for row in csv.DictReader(handle)}
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not points:
        return None
    steps = np.array(sorted(points))
    return steps, np.array([points[s] for s in steps])


def plot_curves(groups: Sequence[Group], env: str, out: Path) -> Optional[Path]:
    """``curves_<env>.png``: one panel per (family, hidden), mean across seeds +- sd band.
    ``None`` when no run of the env has an ``evaluations.csv``."""
    panels: Dict[Tuple[FamilyKey, str], List[Tuple[Group, np.ndarray, np.ndarray]]] = {}
    for g in groups:
        if g.family[0] != env:
            continue
        curves = [c for c in (read_curve(r.folder) for r in g.runs) if c is not None]
        if not curves:
            continue
        last = min(c[0][-1] for c in curves)
        grid = np.unique(np.concatenate([c[0] for c in curves]))
        grid = grid[grid <= last]
        values = np.stack([np.interp(grid, s, v) for s, v in curves])
        panels.setdefault((g.family, g.hidden), []).append((g, grid, values))
    if not panels:
        return None
    plt = _pyplot()
    n = len(panels)
    cols = min(n, 2)
    rows_n = math.ceil(n / cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(6.5 * cols, 4.2 * rows_n), squeeze=False)
    others: List[str] = []
    for ax, ((family, hidden), lines) in zip(axes.flat, sorted(panels.items())):
        lrs = {g.learning_rate for g, _, _ in lines}
        for g, grid, values in lines:
            color, _ = _style(g.structure, others)
            label = (g.structure + (f" lr={g.learning_rate}" if len(lrs) > 1 else "")
                     + (f" [{g.variant}]" if g.variant else "") + f" (n={len(values)})")
            mean = values.mean(0)
            ax.plot(grid, mean, color=color, lw=1.8 if g.is_dense else 1.3, label=label,
                    ls="-" if g.is_dense or "+" not in g.structure else "--")
            if len(values) > 1:
                sd = values.std(0, ddof=1)
                ax.fill_between(grid, mean - sd, mean + sd, color=color, alpha=0.12, lw=0)
        ax.set_title(f"{family_label(family)}, hidden {hidden}", fontsize=9)
        ax.set_xlabel("environment steps")
        ax.set_ylabel("evaluation reward")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    fig.suptitle(f"{env}: learning curves (line: mean across seeds; band: +- sd across seeds, ddof=1)",
                 fontsize=10)
    fig.tight_layout()
    path = out / f"curves_{env}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------------------------
# entry points


def make_report(paths: Sequence[Path], out: Path, curves: bool = True, reps: int = 2000, seed: int = 0,
                command: Optional[str] = None) -> Dict[str, Any]:
    """Write ``report.md``, ``report.csv`` and the figures for the runs below ``paths``.

    ``reps`` bootstrap resamples per interval, drawn from numpy's generator seeded with ``seed``
    (the report is reproducible). ``command`` is printed at the top of ``report.md``. Returns a
    summary: ``runs``, ``finished``, ``groups``, ``figures``, ``rows`` (as in ``report.csv``,
    plus private ``_`` keys) and ``unfinished`` (the :class:`Run` s left out of the tables).
    """
    if reps < 1:
        raise RLStructError(f"--reps {reps} is not a positive number of bootstrap resamples; pass e.g. 2000")
    runs = find_runs(paths)
    make_output_dir(out, "report")
    groups = group_runs(runs)
    unfinished = [r for r in runs if not r.finished]
    rows = table_rows(groups, reps, seed)
    figures: Dict[str, List[Path]] = {}
    for env in sorted({g.family[0] for g in groups}):
        figures[env] = [plot_pareto(rows, env, out)]
        if curves:
            path = plot_curves(groups, env, out)
            if path is not None:
                figures[env].append(path)
    if command is None:
        command = "python -m rlstruct.report " + " ".join(shlex.quote(str(p)) for p in paths) + f" --out {out}"
    write_csv(rows, out / "report.csv")
    write_markdown(rows, unfinished, figures, command, len(runs), out / "report.md")
    return dict(runs=len(runs), finished=len(runs) - len(unfinished), groups=len(groups),
                figures=[p for ps in figures.values() for p in ps], rows=rows, unfinished=unfinished)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command line: ``python -m rlstruct.report PATHS... [--out DIR] [--reps N] [--no-curves]``."""
    parser = argparse.ArgumentParser(description="Tables and plots of reward against parameter count.")
    parser.add_argument("paths", nargs="+", type=Path, help="run folders or sweep folders")
    parser.add_argument("--out", type=Path, default=Path("results/report"), help="output folder")
    parser.add_argument("--reps", type=int, default=2000, help="bootstrap resamples per interval (default 2000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (default 0)")
    parser.add_argument("--no-curves", action="store_true", help="skip the learning-curve plots")
    args = parser.parse_args(argv)
    argv_text = " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    with report_errors():
        summary = make_report(args.paths, args.out, curves=not args.no_curves, reps=args.reps, seed=args.seed,
                              command=f"python -m rlstruct.report {argv_text}")
    print(f"{summary['runs']} runs ({summary['finished']} finished) in {summary['groups']} groups")
    for r in summary["rows"]:
        name = r["structure"] + (f" [{r['variant']}]" if r["variant"] else "")
        print(f"  {r['env']:12s} {r['algo']:5s} {r['recipe']:4s} {r['total_timesteps']:>10,} {name:22s} "
              f"h{r['hidden']:8s} params {r['params_total']:>7,}  IQM {r['reward_iqm']:8.1f}  "
              f"{_num(r['pct_of_ref_dense_iqm'])}% of ref dense ({r['seeds']} seeds)")
    print(f"wrote {args.out / 'report.md'}, {args.out / 'report.csv'} and {len(summary['figures'])} figures")
    return 0


if __name__ == "__main__":
    sys.exit(main())
