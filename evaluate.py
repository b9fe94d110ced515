"""Roll out a saved policy: ``python evaluate.py runs/<run folder> --episodes 10``.

Accepts a run folder written by ``train.py`` or a compact policy folder from ``policies/``; needs
nothing but the saved files. Prints mean +- std reward and the parameter counts; ``--video``
records the first episode to a file (.gif, or .mp4 with imageio-ffmpeg installed); ``--trace``
prints each episode's reward, distance and root pitch on the planar MuJoCo tasks.
"""

from __future__ import annotations

import argparse
import os
import sys

from rlstruct.cli import report_errors
from rlstruct.errors import RLStructError
from rlstruct.evaluation import evaluate_saved, rescore_run, trace_episodes


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", help="run folder (train.py output) or compact policy folder (policies/NAME)")
    parser.add_argument("--episodes", type=int, default=10, help="episodes to roll out (default 10)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first evaluation episode")
    parser.add_argument("--stochastic", action="store_true", help="sample actions instead of the mean")
    parser.add_argument("--video", metavar="FILE", help="record the first episode to FILE (.gif or .mp4)")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON line")
    parser.add_argument("--trace", action="store_true",
                        help="planar MuJoCo tasks: print each episode's reward, distance and root pitch "
                             "(tells a slow gait from episodes where the agent gets stuck)")
    parser.add_argument("--rescore", action="store_true",
                        help="make this (deterministic) evaluation the run folder's final evaluation in "
                             "metrics.json, keeping the old one under final_eval_history")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.video:
        # MuJoCo's default GL backend needs a display; EGL renders headless. Must be set before
        # mujoco is imported.
        os.environ.setdefault("MUJOCO_GL", "egl")
    if args.rescore:
        with report_errors():
            if args.stochastic or args.video:
                raise RLStructError("--rescore records a deterministic evaluation; drop --stochastic/--video")
            final = rescore_run(args.path, args.episodes, args.seed, " ".join(["python evaluate.py", *(argv or sys.argv[1:])]))
        print(f"{args.path}: final evaluation now {final['mean']:.1f} +- {final['std']:.1f} "
              f"(std over {final['episodes']} episodes from seed {final['eval_seed']})")
        return 0
    if args.trace:
        with report_errors():
            if args.video or args.rescore:
                raise RLStructError("--trace prints per-episode figures; run --video/--rescore separately")
            rows = trace_episodes(args.path, args.episodes, args.seed, deterministic=not args.stochastic)
        print(f"{'episode':>7} {'reward':>9} {'length':>6} {'distance':>8} {'final pitch':>11} {'max |pitch|':>11}")
        for i, row in enumerate(rows):
            print(f"{i:7d} {row['reward']:9.1f} {row['length']:6d} {row['distance']:8.1f} "
                  f"{row['final_pitch']:+11.2f} {row['max_abs_pitch']:11.2f}")
        return 0
    with report_errors():
        result = evaluate_saved(
            args.path,
            episodes=args.episodes,
            seed=args.seed,
            deterministic=not args.stochastic,
            video=args.video,
        )
    if args.json:
        import json

        print(json.dumps(result))
    else:
        counts = result["params"]
        print(
            f"{result['env_id']} {result['structure']}: reward {result['mean']:.1f} +- {result['std']:.1f} "
            f"over {result['episodes']} episodes; params {counts['total']} "
            f"(actor {counts['actor']}, critic {counts['critic']}; dense {counts['dense_total']})"
        )
        if args.video:
            print(f"video written to {args.video}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
