"""The SB3 callback through which a :class:`~rlstruct.run.Recorder` sees an SB3 ``learn`` loop.

Shared by the trainers that run SB3's ``learn`` (PPO/TRPO, and distillation's fine-tuning).
"""

from __future__ import annotations

from typing import Optional

from rlstruct.envs import evaluate_episodes, sync_normalization
from rlstruct.run import Recorder, SaveFiles


def recorder_callback(recorder: Recorder, eval_env, save: Optional[SaveFiles]):
    """Periodic evaluations and (when ``save`` is given) checkpoints, after each update.

    SB3 starts a rollout right after the update on the previous one, so the callback acts when a
    rollout starts: the policy, optimizer and statistics then hold every step and every update
    so far. At the end of ``learn`` a due evaluation scores the last update too (its files are
    written by :meth:`Recorder.finish`).
    """
    from stable_baselines3.common.callbacks import BaseCallback

    config = recorder.config

    class RecorderCallback(BaseCallback):
        def _on_step(self) -> bool:
            return True

        def _evaluate_if_due(self) -> None:
            steps = int(self.num_timesteps)
            if recorder.evaluation_due(steps):
                sync_normalization(self.training_env, eval_env)
                rewards = evaluate_episodes(self.model, eval_env, config.eval.episodes, config.eval.deterministic,
                                            seed=config.eval_seed)
                recorder.record_evaluation(steps, rewards, self.logger)

        def _on_rollout_start(self) -> None:
            self._evaluate_if_due()
            if save is not None and recorder.checkpoint_due(int(self.num_timesteps)):
                recorder.checkpoint(int(self.num_timesteps), save)

        def _on_training_end(self) -> None:
            self._evaluate_if_due()

    return RecorderCallback()
