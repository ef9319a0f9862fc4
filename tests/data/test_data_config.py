from __future__ import annotations

from dataclasses import asdict

import pytest

from lightly_grpo.data import DataConfig, eval_transform, resolve_dataset


def test_data_config_fields_and_defaults() -> None:
    assert asdict(DataConfig()) == {
        "dataset": "default",
        "data_root": None,
        "input_size": 32,
        "in_channels": 1,
        "num_workers": 0,
        "seed": 0,
        "data_seed": 0,
    }


def test_data_config_drives_resolve_dataset() -> None:
    cfg = DataConfig(dataset="digits", input_size=12, in_channels=3, data_seed=1)
    transform = eval_transform(cfg.input_size, cfg.in_channels)
    dataset = resolve_dataset(
        cfg.dataset, "test", transform, root=cfg.data_root, seed=cfg.data_seed
    )
    image, _ = dataset[0]
    assert image.shape == (3, 12, 12)


@pytest.mark.parametrize(
    ("field", "value"), [("input_size", 0), ("in_channels", 2), ("num_workers", -1)]
)
def test_data_config_rejects_bad_values(field: str, value: int) -> None:
    with pytest.raises(ValueError, match=f"{field} must be .*{value}"):
        DataConfig(**{field: value})  # type: ignore[arg-type]
