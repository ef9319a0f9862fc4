"""The chains under DDP: evaluation embeds one shard per rank, rank 0 alone writes.

Two gloo processes embed an evaluation split through :func:`embed_split` (each sees only its
strided shard, both receive the whole split in dataset order), and the ``posttrain`` command runs
end to end with Lightning's ``--strategy ddp --devices 2`` on the CPU, labeled and unlabeled.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as torch_dist
import torch.multiprocessing as mp
from torch import Tensor
from torch.utils.data import TensorDataset

from lightly_grpo.chains.config import EvalConfig
from lightly_grpo.chains.evaluate import embed_split
from lightly_grpo.data import NeighborBatchSampler

ITEMS = 11  # not a multiple of the world size: shards of 6 and 5, padded for all_gather


def _dataset() -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(ITEMS, 3, generator=g), torch.arange(ITEMS) % 4)


class CountingEmbed:
    """A fixed linear map that counts the images it embedded."""

    def __init__(self) -> None:
        self.weight = torch.randn(3, 5, generator=torch.Generator().manual_seed(1))
        self.seen = 0

    def __call__(self, images: Tensor) -> Tensor:
        self.seen += len(images)
        return images @ self.weight


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    torch_dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=2
    )
    try:
        embed = CountingEmbed()
        cfg = EvalConfig(batch_size=4)
        embeddings, labels = embed_split("x", embed, _dataset(), cfg, torch.device("cpu"), False)
        result = {"embeddings": embeddings, "labels": labels, "seen": embed.seen}
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    finally:
        torch_dist.destroy_process_group()


def test_evaluation_embeds_one_shard_per_rank_and_gathers_the_split(tmp_path: Path) -> None:
    os.environ.pop("LOCAL_RANK", None)
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    embed = CountingEmbed()
    single, labels = embed_split("x", embed, _dataset(), EvalConfig(), torch.device("cpu"), False)
    assert embed.seen == ITEMS
    assert [r["seen"] for r in ranks] == [6, 5]  # each rank embedded only its shard
    for result in ranks:
        torch.testing.assert_close(result["embeddings"], single)
        assert torch.equal(result["labels"], labels)


SMALL = ["--dataset", "digits", "--input-size", "16", "--no-progress", "--accelerator", "cpu"]
TINY_EVAL = ["--eval-train-images", "300", "--eval-test-images", "120"]
RUN = [sys.executable, "-m", "lightly_grpo.cli"]


def _env() -> dict[str, str]:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    for key in ("LOCAL_RANK", "RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


@pytest.fixture(scope="module")
def simclr_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("simclr")
    pretrain = [*RUN, "pretrain", *SMALL, "--pretrain-out", str(folder)]
    pretrain += ["--pretrain-epochs", "1", "--pretrain-images", "128"]
    pretrain += ["--pretrain-batch-size", "64"]
    subprocess.run(pretrain, check=True, env=_env(), capture_output=True, timeout=600)
    return folder / "simclr.ckpt"


def _posttrain_ddp(checkpoint: Path, out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [*RUN, "posttrain", str(checkpoint), *SMALL, *TINY_EVAL, "--out", str(out), *args]
    command += ["--devices", "2", "--strategy", "ddp"]
    done = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    # Both ranks ran the command; only rank 0 scored and printed the report line.
    assert done.stdout.count("report: ") == 1, done.stdout
    assert "GLOBAL_RANK: 1" in done.stderr + done.stdout  # a second process really trained
    return done


def test_posttrain_command_under_lightning_ddp(simclr_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "grpo"
    _posttrain_ddp(simclr_checkpoint, out, "--epochs", "1", "--label-fraction", "0.1")
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    assert set(metrics) == {"Pretrained backbone", "GRPO-RM"}
    for model in metrics.values():
        assert 0.0 <= model["knn_top1_dino"] <= 1.0
    saved = json.loads((out / "config.json").read_text())
    assert saved["trainer"]["devices"] == "2" and saved["trainer"]["strategy"] == "ddp"
    assert (out / "backbone.pt").is_file() and (out / "grpo.ckpt").is_file()


def test_unlabeled_posttrain_mines_one_share_of_the_batches_per_rank(
    simclr_checkpoint: Path, tmp_path: Path
) -> None:
    out = tmp_path / "neighbors"
    epochs, images, batch = 2, 96, 16
    _posttrain_ddp(
        simclr_checkpoint,
        out,
        *["--output-set", "neighbors", "--unlabeled-images", str(images), "--num-neighbors", "5"],
        *["--epochs", str(epochs), "--batch-size", str(batch), "--refresh-every", "1"],
        *["--baselines", "simclr"],
    )
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    assert set(metrics) == {"Pretrained backbone", "continued SimCLR", "GRPO-RM"}
    for model in metrics.values():
        for key in ("cluster_acc", "nmi", "neighbor_purity", "knn_top1_lightly"):
            assert 0.0 <= model[key] <= 1.0, key
    saved = json.loads((out / "config.json").read_text())
    # 96 images in mined batches of 8 anchors: 12 batches an epoch, 6 on each of the 2 ranks
    # (one process would take 12 steps an epoch).
    table = torch.load(out / "grpo.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    neighbors = table["criterion.output_set.neighbors"]
    per_rank = len(NeighborBatchSampler(neighbors, batch, num_replicas=2, rank=0))
    assert per_rank == 6
    inner = saved["inner_steps"]
    assert saved["run"]["steps"] == epochs * per_rank * inner
    # The output set was refreshed by the gathered bank: a full, valid table on disk.
    assert neighbors.shape[0] == images and int(neighbors.min()) >= 0
    # Continued SimCLR took as many (global) batches as GRPO-RM, also sharded across the ranks.
    simclr = out / "baselines" / "simclr" / "checkpoints" / "last.ckpt"
    assert torch.load(simclr, map_location="cpu", weights_only=True)["global_step"] == (
        epochs * per_rank
    )
    assert (out / "backbone.pt").is_file()


def test_unlabeled_kmeans_posttrain_shards_its_shuffled_batches(
    simclr_checkpoint: Path, tmp_path: Path
) -> None:
    out = tmp_path / "kmeans"
    _posttrain_ddp(
        simclr_checkpoint,
        out,
        *["--output-set", "kmeans", "--unlabeled-images", "96", "--epochs", "1"],
        *["--batch-size", "16", "--refresh-every", "1"],
    )
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    assert 0.0 <= metrics["GRPO-RM"]["policy_cluster_acc"] <= 1.0
    saved = json.loads((out / "config.json").read_text())
    # Lightning's DistributedSampler: 48 of the 96 images per rank, 3 batches of 16 (one
    # process would take 6).
    assert saved["run"]["steps"] == 3 * saved["inner_steps"]
