"""Kill a real post-training run with SIGKILL in the middle of an epoch, resume it, and get the
run an uninterrupted one gives: bit-identical weights and metrics on the CPU."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lightly_grpo.cli import main

SMALL = ["--dataset", "digits", "--input-size", "16", "--no-progress", "--accelerator", "cpu"]
RUN = ["--epochs", "2", "--label-fraction", "0.3", "--batch-size", "32", "--val-images", "0"]
RUN += ["--eval-train-images", "250", "--eval-test-images", "60", "--eval-batch-size", "250"]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("simclr_resume")
    args = ["pretrain", *SMALL, "--pretrain-out", str(out), "--pretrain-epochs", "1"]
    assert main([*args, "--pretrain-images", "128", "--pretrain-batch-size", "64"]) == 0
    return out / "simclr.ckpt"


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "backbone.pt", map_location="cpu", weights_only=True)


def _kill_mid_epoch(args: list[str], out: Path) -> None:
    """Starts the run in a subprocess and SIGKILLs it once epoch 0's checkpoint exists."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "lightly_grpo.cli", *args]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while not list((out / "checkpoints").glob("epoch=0-*.ckpt")):
        assert process.poll() is None, process.stderr.read().decode()[-2000:]  # type: ignore[union-attr]
        assert time.monotonic() < deadline, "the run never finished its first epoch"
        time.sleep(0.05)
    time.sleep(0.3)  # into epoch 1
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    assert not (out / "grpo.ckpt").exists(), "the run finished before it was killed"


@pytest.mark.parametrize("output_set", ["classes", "neighbors", "kmeans"])
def test_a_killed_run_resumes_to_the_uninterrupted_result(
    pretrained: Path, tmp_path: Path, output_set: str
) -> None:
    extra = [] if output_set == "classes" else ["--output-set", output_set]
    extra += ["--unlabeled-images", "384", "--num-neighbors", "5"] if extra else []
    uninterrupted, killed = tmp_path / "uninterrupted", tmp_path / "killed"
    common = ["posttrain", str(pretrained), *SMALL, *RUN, *extra]
    assert main([*common, "--out", str(uninterrupted)]) == 0

    _kill_mid_epoch([*common, "--out", str(killed)], killed)
    assert main([*common, "--out", str(killed), "--resume"]) == 0

    reference, resumed = _weights(uninterrupted), _weights(killed)
    assert reference.keys() == resumed.keys()
    for key, value in reference.items():
        assert torch.equal(value, resumed[key]), key  # bit-identical on the CPU
    metrics = [
        json.loads((run / "metrics.json").read_text())["metrics"] for run in (uninterrupted, killed)
    ]
    assert metrics[0] == metrics[1]
    # The resumed run's per-epoch history holds both epochs (epoch 0's restored from the
    # checkpoint), as the uninterrupted run's does.
    histories = []
    for run in (uninterrupted, killed):
        state = torch.load(run / "grpo.ckpt", map_location="cpu", weights_only=True)
        (rows,) = [v["rows"] for k, v in state["callbacks"].items() if "EpochHistory" in k]
        histories.append(rows)
    assert len(histories[0]) == 2 and histories[0] == histories[1]


def test_a_post_training_checkpoint_as_input_is_refused(pretrained: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    common = ["posttrain", str(pretrained), *SMALL, *RUN]
    assert main([*common, "--epochs", "1", "--out", str(out)]) == 0
    last = out / "checkpoints" / "last.ckpt"
    with pytest.raises(ValueError, match="is a post-training checkpoint"):
        main(["posttrain", str(last), *SMALL, *RUN, "--out", str(tmp_path / "again")])
