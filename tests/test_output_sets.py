"""The output-set interface and ClassPrototypes."""

from __future__ import annotations

import pytest
import torch

from lightly_grpo.output_sets import (
    ClassPrototypes,
    OutputSet,
    output_set_from_config,
    sample_group,
)


def test_groups_are_sampled_from_the_old_policy_not_against_it() -> None:
    # One dominant output (logit +10) and one negligible (-10); the correct output is elsewhere.
    old_logits = torch.tensor([[10.0, 0.0, 0.0, -10.0, 0.0]]).repeat(400, 1)
    correct = torch.zeros(400, 5, dtype=torch.bool)
    correct[:, 4] = True
    index = sample_group(old_logits, correct, 2, torch.Generator().manual_seed(0))
    assert (index == 4).any(dim=1).all()  # the correct output is always kept
    picked = index[index != 4]
    assert (picked == 0).float().mean() > 0.99  # sampled in proportion to pi_old
    assert not (picked == 3).any()


def test_prototypes_are_means_of_normalised_embeddings() -> None:
    prototypes = ClassPrototypes(num_classes=2, embedding_size=2)
    embeddings = torch.tensor([[10.0, 0.0], [0.0, 1.0], [0.0, -3.0]])
    prototypes.init_from_embeddings(embeddings, torch.tensor([0, 0, 1]))
    # class 0: mean of the unit vectors (1, 0) and (0, 1), not of the raw (10, 0) and (0, 1)
    expected = torch.tensor([[0.70710678, 0.70710678], [0.0, -1.0]])
    assert torch.allclose(prototypes.keys(), expected, atol=1e-6)


def test_interface_state_and_config_round_trip() -> None:
    prototypes = ClassPrototypes(num_classes=3, embedding_size=4)
    assert isinstance(prototypes, OutputSet)
    assert prototypes.requires_labels and not prototypes.refreshable
    rebuilt = output_set_from_config(prototypes.config())
    assert isinstance(rebuilt, ClassPrototypes) and rebuilt.num_outputs == 3
    rebuilt.load_state_dict(prototypes.state_dict())  # state (keys, reference keys) in state_dict
    assert torch.equal(rebuilt.keys(), prototypes.keys())
    with pytest.raises(ValueError, match="unknown output set type"):
        output_set_from_config({"type": "nope"})
    with pytest.raises(ValueError, match="needs class labels"):
        prototypes.group(torch.randn(2, 4), None)


def test_reference_keys_are_the_snapshot_not_the_current_keys() -> None:
    prototypes = ClassPrototypes(num_classes=3, embedding_size=4)
    prototypes.snapshot_reference()
    snapshot = prototypes.keys().detach().clone()
    with torch.no_grad():
        prototypes.weight.add_(torch.randn(3, 4))
    z = torch.randn(5, 4)
    group = prototypes.group(z, torch.tensor([0, 1, 2, 0, 1]))
    reference = prototypes.reference_similarities(z, group)
    assert torch.allclose(reference, torch.nn.functional.normalize(z, dim=1) @ snapshot.T)
