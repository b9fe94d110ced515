"""Train a structured policy: ``python train.py env=hopper policy=kama algo=ppo seed=3``.

A thin Hydra entry point: it registers the run schema (:class:`rlstruct.cli.TrainConfig`, i.e.
:class:`rlstruct.config.RunConfig`, where every setting and its default lives), composes ``conf/``, hands the result to
:func:`rlstruct.runner.train` and prints a one-line error for bad input.
"""

from __future__ import annotations

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from rlstruct.cli import register_schema, report_errors
from rlstruct.runner import train


register_schema()


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    hydra_cfg = HydraConfig.get()
    command = " ".join(["python train.py", *hydra_cfg.overrides.task])
    with report_errors():
        train(OmegaConf.to_container(cfg, resolve=True), hydra_cfg.runtime.output_dir, command)


if __name__ == "__main__":
    sys.exit(main())
