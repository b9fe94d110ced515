"""Shared fixtures: one torch thread (2-core machines), the repo root, CLI helpers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

torch.set_num_threads(1)


def tiny_config(tmp_path: Path, **overrides) -> Dict:
    """A composed config (as train.py would build it) for a fast CartPole run."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from rlstruct.cli import register_schema

    register_schema()
    args: List[str] = [f"{k}={v}" for k, v in overrides.items()]
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        cfg = compose(config_name="config", overrides=args)
    return OmegaConf.to_container(cfg, resolve=False) | {"run_name": "test"}


def run_cli(script: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``python <script> args...`` from the repo root, capturing output."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, script, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


@pytest.fixture
def root() -> Path:
    return ROOT
