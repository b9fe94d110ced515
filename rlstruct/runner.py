"""Pick the trainer for ``algo=`` and hand it an opened run: the one entry point of training.

The run config (:class:`rlstruct.config.RunConfig`) says what to train; the recorder
(:class:`rlstruct.run.Recorder`) owns the run folder; the trainers in :mod:`rlstruct.algos` hold
their algorithm only. Nothing here imports Hydra: ``train.py`` composes the config and calls
:func:`train`.
"""

from __future__ import annotations

import importlib
import os
from typing import Any, Dict, Optional, Union

from rlstruct.config import RunConfig
from rlstruct.run import Recorder, RunAlreadyFinished

#: algo name -> "module:function" of its trainer, and whether its runs resume.
TRAINERS = {
    "ppo": ("rlstruct.algos.sb3:train_sb3", True),
    "trpo": ("rlstruct.algos.sb3:train_sb3", True),
    "es": ("rlstruct.algos.es:train_es", True),
    "distill": ("rlstruct.algos.distill:train_distill", False),
}


def train(cfg: Union[RunConfig, Dict[str, Any]], run_dir: os.PathLike, command: Optional[str] = None) -> Dict[str, Any]:
    """Train (resume, or extend) the run ``cfg`` describes in ``run_dir``; returns its ``metrics.json``.

    ``cfg`` is a :class:`RunConfig` or a plain mapping (a resolved Hydra config, a saved
    ``config.yaml``); ``command`` (the command line that started the run) is recorded.
    """
    import torch

    config = cfg if isinstance(cfg, RunConfig) else RunConfig.from_dict(cfg)
    torch.set_num_threads(config.torch_threads)
    target, resumable = TRAINERS[config.algo_name]
    module, function = target.split(":")
    trainer = getattr(importlib.import_module(module), function)
    recorder = Recorder(config, run_dir, command)
    with recorder.folder.lock():
        try:
            recorder.open(resumable=resumable)
        except RunAlreadyFinished as done:
            print(f"[rlstruct] {recorder.run_dir} already finished at {done.metrics.get('steps')} steps; "
                  "nothing to do", flush=True)
            return done.metrics
        return trainer(config, recorder)
