"""Training algorithms of our own (SB3 provides PPO and TRPO).

* :mod:`rlstruct.algos.es`: evolution strategies on a structured policy's actor, with
  :func:`~rlstruct.algos.es.train_es` writing the same run folder as PPO.
* :mod:`rlstruct.algos.estimators`: exploration directions, fitness shaping, gradient estimate,
  optimizer steps (NumPy only).
* :mod:`rlstruct.algos.rollout`: NumPy policies, episodes and observation statistics (what a
  worker runs; no torch).
* :mod:`rlstruct.algos.backends`: local process pool and Ray workers.
* :mod:`rlstruct.algos.distill`: fit a structured student to a trained teacher (DAgger, optional
  PPO fine-tuning), same run folder as PPO.
* :mod:`rlstruct.algos.settings`: typed trainer settings from the config's ``algo`` section.

Nothing is imported here: worker processes import :mod:`rlstruct.algos.backends` and must not
pay for torch.
"""
