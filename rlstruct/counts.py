"""Parameter counts of every structure for an environment, as a Markdown table.

    python -m rlstruct.counts Hopper-v5 --hidden 64 64

Builds each registered structure's policy (default layer options) and prints actor, critic and
total learned parameters and the compression against dense. No training.
"""

from __future__ import annotations

import argparse
import sys
from typing import Dict, List, Optional, Sequence



def structure_counts(env_id: str, hidden: Sequence[int], structures: Sequence[str]) -> List[Dict]:
    """One row per structure: ``parameter_counts()`` of its policy (actor, critic, total, dense)."""
    import gymnasium as gym

    from rlstruct.policies import StructuredActorCriticPolicy

    env = gym.make(env_id)
    rows = []
    for structure in structures:
        policy = StructuredActorCriticPolicy(
            env.observation_space, env.action_space, lambda _: 0.0,
            structure=structure, net_arch=dict(pi=list(hidden), vf=list(hidden)),
        )
        rows.append(dict(structure=structure, **policy.parameter_counts()))
    env.close()
    return rows


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command line: print the parameter-count table as markdown."""
    from rlstruct.cli import report_errors
    from rlstruct.layers import available_structures

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("env_id", help="gymnasium id, e.g. Hopper-v5")
    parser.add_argument("--hidden", type=int, nargs="+", default=[64, 64])
    parser.add_argument("--structures", nargs="+", default=None, help="default: every registered one")
    args = parser.parse_args(argv)
    with report_errors():
        from rlstruct.envs import check_env_id

        check_env_id(args.env_id)
        rows = structure_counts(args.env_id, args.hidden, args.structures or available_structures())
    print(f"{args.env_id}, hidden {'-'.join(map(str, args.hidden))}:\n")
    print("| structure | actor | critic | total | fewer than dense |")
    print("|---|---:|---:|---:|---:|")
    for r in sorted(rows, key=lambda r: -r["total"]):
        print(f"| {r['structure']} | {r['actor']:,} | {r['critic']:,} | {r['total']:,} | "
              f"{r['dense_total'] / r['total']:.1f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
