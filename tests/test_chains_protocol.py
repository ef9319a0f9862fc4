"""The evaluation protocol of the chains: which images train, validate and test, and which
accuracy is which."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from lightly_grpo.chains.config import EvalConfig, PosttrainConfig
from lightly_grpo.chains.evaluate import evaluation_data, score_embeddings
from lightly_grpo.chains.recipes import labeled_data
from lightly_grpo.data import DataConfig, resolve_dataset


def _config(seed: int = 0, data_seed: int = 0) -> PosttrainConfig:
    return PosttrainConfig(
        label_fraction=0.2,
        batch_size=32,
        val_images=100,
        data=DataConfig(dataset="digits", input_size=8, seed=seed, data_seed=data_seed),
        eval=EvalConfig(max_train_images=500, max_test_images=200),
    )


def _indices(loader: object) -> list[int]:
    return list(loader.dataset.indices)  # type: ignore[attr-defined]


def test_validation_comes_from_the_train_split_and_never_overlaps_the_labeled_images() -> None:
    labeled = labeled_data(_config())
    assert labeled.validation is not None
    train, validation = set(_indices(labeled.train)), set(_indices(labeled.validation))
    assert len(validation) == 100 and len(train) == labeled.size
    assert not train & validation
    assert _indices(labeled.init) == _indices(labeled.train)
    # Both index the *train* split (the validation is not made of test images).
    sizes = {split: len(resolve_dataset("digits", split)) for split in ("train", "test")}
    assert len(labeled.validation.dataset.dataset) == sizes["train"] != sizes["test"]  # type: ignore[attr-defined]


def test_the_data_seed_picks_the_images_and_the_training_seed_only_the_order() -> None:
    first, second = labeled_data(_config(seed=0)), labeled_data(_config(seed=1))
    assert _indices(first.train) == _indices(second.train)
    assert _indices(first.validation) == _indices(second.validation)
    order = [next(iter(data.train))[1].tolist() for data in (first, second)]
    assert order[0] != order[1]  # the shuffling follows the training seed
    other = labeled_data(_config(data_seed=1))
    assert _indices(other.train) != _indices(first.train)
    tests = [evaluation_data(c.data, c.eval).test_indices for c in (_config(0), _config(3))]
    assert tests[0].tolist() == tests[1].tolist()  # every training seed: the same test images
    shifted = evaluation_data(_config(data_seed=2).data, _config().eval).test_indices
    assert shifted.tolist() != tests[0].tolist()


def test_score_embeddings_names_each_accuracy_and_feeds_the_head_unnormalised() -> None:
    torch.manual_seed(0)
    directions = torch.nn.functional.normalize(torch.randn(2, 8), dim=1)
    labels = torch.arange(400) % 2  # the k=200 protocol needs 200 bank items
    train = (directions[labels] * 3 + 0.05 * torch.randn(400, 8), labels)
    test_labels = torch.arange(20) % 2
    test = (directions[test_labels] + 0.05 * torch.randn(20, 8), test_labels)
    test[0][test_labels == 1] *= 5.0  # class 1 has long embeddings: only the norm tells

    def by_norm(embeddings: Tensor) -> Tensor:
        return (embeddings.norm(dim=1) > 2.5).long()

    scored = score_embeddings(train, test, by_norm, progress=False).metrics
    assert scored["classifier_accuracy"] == 1.0  # would be 0.5 on normalised embeddings
    assert scored["ncm_accuracy"] == 1.0 and scored["knn_top1_dino"] == 1.0
    wrong = score_embeddings(train, test, lambda z: 1 - by_norm(z), progress=False).metrics
    assert wrong["classifier_accuracy"] == 0.0
    assert "classifier_accuracy" not in score_embeddings(train, test, progress=False).metrics


def test_a_bank_smaller_than_a_protocols_k_skips_that_protocol_with_a_warning() -> None:
    # 60 training images (a small ImageFolder): lightly's k=200 cannot run, k=20 can.
    torch.manual_seed(0)
    directions = torch.nn.functional.normalize(torch.randn(3, 8), dim=1)
    labels = torch.arange(60) % 3
    train = (directions[labels] + 0.05 * torch.randn(60, 8), labels)
    test = (directions[labels[:30]] + 0.05 * torch.randn(30, 8), labels[:30])
    with pytest.warns(UserWarning, match=r"\['lightly'\] need more than the 60 bank images"):
        scored = score_embeddings(train, test, progress=False).metrics
    assert scored["knn_top1_dino"] == 1.0 and "knn_top1_lightly" not in scored
    assert scored["mean_average_precision_at_r"] > 0.9
