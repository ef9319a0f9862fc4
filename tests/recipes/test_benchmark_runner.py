"""A real (tiny) benchmark: tuning on validation, results per run, resume without redoing."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchlib import BenchmarkConfig, DataRow, row_data, run_benchmark
from benchlib.runner import Benchmark, result_path
from lightly_grpo.backbones import export_backbone, resnet18_small
from lightly_grpo.chains.config import PosttrainConfig

BENCHMARKS_DIR = Path(__file__).resolve().parents[2] / "recipes" / "benchmarks"
ROW = DataRow("digits", dataset="digits", label_fraction=0.1, epochs=1, batch_size=32)
CFG = BenchmarkConfig(
    rows=(ROW,),
    methods=("ce-linear", "grpo-uniformity"),
    seeds=(0, 1),
    lr_grid=(1.0, 2.0),
    settings=PosttrainConfig(lr_backbone=1e-3, lr_criterion=1e-2),
    input_size=16,
    val_images=60,
    bank_images=300,
    test_images=120,
    eval_batch_size=256,
)


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("bench")
    checkpoint = export_backbone(resnet18_small(), root / "backbone.pt")
    out = root / "out"
    run_benchmark(CFG, out, {"simclr": str(checkpoint)}, accelerator="cpu")
    return out, {"simclr": str(checkpoint)}


def test_rows_fix_the_images_for_every_method_and_seed() -> None:
    first, second = row_data(CFG, ROW), row_data(CFG, ROW)
    assert first.labeled.indices == second.labeled.indices  # type: ignore[attr-defined]
    labeled = set(first.labeled.indices)  # type: ignore[attr-defined]
    assert not labeled & set(first.validation.indices)  # type: ignore[attr-defined]
    assert len(first.test) == 120 and len(first.bank) == 300 and len(first.validation) == 60
    orders = [next(iter(first.train_loader(32, seed)))[1].tolist() for seed in (0, 1)]
    assert orders[0] != orders[1]


def test_learning_rates_are_chosen_on_validation_and_used_for_every_seed(
    finished: tuple[Path, dict[str, str]],
) -> None:
    out, _ = finished
    tuning = json.loads((out / "tuning.json").read_text())
    for method, entry in tuning["methods"].items():
        scores = {item["lr"]: item["val_score"] for item in entry["scores"]}
        assert sorted(scores) == [1e-3, 2e-3]
        assert scores[entry["chosen"]] == max(scores.values()), method
        # With a grid of two rates every optimum lies at an edge: the report says so.
        assert entry["at_edge"] is True
        chosen = entry["chosen"]
        for seed in (0, 1):
            stored = json.loads(result_path(out, "digits", method, chosen, seed).read_text())
            assert stored["lr"] == chosen and stored["seed"] == seed
            assert 0.0 <= stored["metrics"]["classifier_accuracy"] <= 1.0
            assert stored["history"] and "val/accuracy" in stored["history"][-1]
            # Selected on the validation images' own-classifier accuracy, not on the test one.
            assert stored["val_score"] == stored["validation"]["classifier_accuracy"]
            assert stored["validation"] != stored["metrics"]  # other images than the test
    table = (out / "results.md").read_text()
    assert "| ce-linear |" in table and "| grpo-uniformity |" in table
    assert "val. change, last 20% (pts)" in table
    assert "pretrained backbone" in table and (out / "convergence.png").is_file()


def test_a_rerun_resumes_without_redoing_finished_runs(
    finished: tuple[Path, dict[str, str]],
) -> None:
    out, checkpoints = finished
    files = sorted((out / "runs").rglob("*.json"))
    assert len(files) == 1 + 2 * 2 + 2  # pretrained, 2 methods x 2 rates, the second seed x 2
    assert not list(out.rglob("*.tmp"))  # written atomically: no half-written files left
    stamps = {path: path.stat().st_mtime_ns for path in files}
    lost = next(path for path in files if "grpo-uniformity" in str(path) and "seed1" in path.name)
    before = json.loads(lost.read_text())
    lost.unlink()  # as if the benchmark was killed during this run
    Benchmark(CFG, out, checkpoints, accelerator="cpu").run_all()
    after = json.loads(lost.read_text())
    for path, stamp in stamps.items():
        if path != lost:
            assert path.stat().st_mtime_ns == stamp, path  # not redone
    # The redone run is the same run: seeded alike whether first in its process or not.
    for key in ("classifier_accuracy", "knn_top1_dino", "mean_average_precision_at_r"):
        assert after["metrics"][key] == pytest.approx(before["metrics"][key], abs=1e-6), key


def test_results_of_other_settings_are_not_reused(
    finished: tuple[Path, dict[str, str]],
) -> None:
    out, checkpoints = finished
    other = dataclasses.replace(CFG, rows=(dataclasses.replace(ROW, epochs=2),))
    with pytest.raises(ValueError, match="other settings"):
        Benchmark(other, out, checkpoints, accelerator="cpu").run_all()


def test_a_benchmark_killed_mid_run_resumes_without_redoing_finished_runs(
    finished: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    reference, checkpoints = finished
    out = tmp_path / "out"
    script = (
        "from tests.recipes.test_benchmark_runner import CFG\n"
        "from benchlib import run_benchmark\n"
        f"run_benchmark(CFG, {str(out)!r}, {checkpoints!r}, accelerator='cpu')\n"
    )
    # benchlib lives next to the benchmark scripts, outside the installed package.
    pythonpath = [str(BENCHMARKS_DIR), os.environ.get("PYTHONPATH")]
    env = {
        **os.environ,
        "PYTHONWARNINGS": "ignore",
        "PYTHONPATH": os.pathsep.join(filter(None, pythonpath)),
    }
    process = subprocess.Popen(
        [sys.executable, "-c", script], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 600
    while len(list((out / "runs").rglob("*.json"))) < 2:  # the pretrained row and one method run
        assert process.poll() is None, process.stderr.read().decode()[-2000:]  # type: ignore[union-attr]
        assert time.monotonic() < deadline, "no run finished in time"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)  # in the middle of the next run
    assert process.wait() == -signal.SIGKILL
    done = {path: path.stat().st_mtime_ns for path in (out / "runs").rglob("*.json")}
    assert 2 <= len(done) < 7, "the benchmark finished before it was killed"

    Benchmark(CFG, out, checkpoints, accelerator="cpu").run_all()
    for path, stamp in done.items():
        assert path.stat().st_mtime_ns == stamp, path  # finished before the kill: not redone
    files = sorted((out / "runs").rglob("*.json"))
    expected = sorted((reference / "runs").rglob("*.json"))
    assert [p.relative_to(out) for p in files] == [p.relative_to(reference) for p in expected]
    for path, other in zip(files, expected, strict=True):
        metrics, uninterrupted = (json.loads(p.read_text())["metrics"] for p in (path, other))
        for key in ("classifier_accuracy", "knn_top1_dino", "mean_average_precision_at_r"):
            if key in uninterrupted:
                assert metrics[key] == pytest.approx(uninterrupted[key], abs=1e-6), (path, key)


def test_a_two_dimensional_grid_tunes_the_criterion_rate_too(tmp_path: Path) -> None:
    checkpoint = export_backbone(resnet18_small(), tmp_path / "backbone.pt")
    cfg = dataclasses.replace(
        CFG, methods=("ce-linear", "supcon"), seeds=(0,), criterion_lr_grid=(1.0, 3.0)
    )
    out = tmp_path / "out"
    run_benchmark(cfg, out, {"simclr": str(checkpoint)}, accelerator="cpu")
    tuning = json.loads((out / "tuning.json").read_text())["methods"]
    linear = {(s["lr"], s["lr_criterion"]) for s in tuning["ce-linear"]["scores"]}
    assert linear == {(1e-3, 1e-2), (1e-3, 3e-2), (2e-3, 1e-2), (2e-3, 3e-2)}
    # SupCon has no criterion parameters: its grid stays one-dimensional.
    assert {s["lr_criterion"] for s in tuning["supcon"]["scores"]} == {None}
    best = tuning["ce-linear"]
    stored = json.loads(
        result_path(
            out, "digits", "ce-linear", best["chosen"], 0, best["chosen_lr_criterion"]
        ).read_text()
    )
    assert stored["lr_criterion"] == best["chosen_lr_criterion"]
    assert (
        f"{best['chosen']:.2g} / {best['chosen_lr_criterion']:.2g}"
        in (out / "results.md").read_text()
    )
