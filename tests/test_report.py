from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from matplotlib import image as mpimg
from sklearn.datasets import load_digits
from sklearn.decomposition import PCA
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

from lightly_grpo.evaluation import KNN_PROTOCOLS
from lightly_grpo.evaluation import metrics as metric_registry
from lightly_grpo.evaluation.metrics import MetricSpec, metric_spec, registered_metrics
from lightly_grpo.report import (
    higher_is_better,
    metric_display_name,
    plot_embedding_map,
    plot_per_class,
    plot_retrieval_grid,
    plot_training_curves,
    summary_sentence,
    write_report,
)
from lightly_grpo.report.figures import curve_series, subsample
from lightly_grpo.report.figures._common import HIT_COLOR, MISS_COLOR, QUERY_COLOR
from lightly_grpo.report.sections import LOSS_NOTE

REPO = Path(__file__).resolve().parents[1]
CHECK_SCRIPT = REPO / "recipes" / "check_report.py"
DIGIT_NAMES = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
]
# HTML that must be escaped, and a "$...$" pair that breaks matplotlib's mathtext unless escaped.
EVIL = '<script>alert("x")</script> & $\\frac$'


# --------------------------------------------------------------------------------------------
# Real inputs: digits images, two embeddings of them (PCA and LDA), a real retrieval.
# --------------------------------------------------------------------------------------------
def _normalize(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _retrieval_metrics(emb: np.ndarray, labels: np.ndarray) -> tuple[dict[str, float], Any]:
    """Leave-one-out P@1, Recall@K, MAP@R and a DINO-style kNN vote on cosine similarity."""
    sims = emb @ emb.T
    np.fill_diagonal(sims, -np.inf)
    order = np.argsort(-sims, axis=1)
    same = labels[order] == labels[:, None]
    counts = np.bincount(labels)[labels] - 1
    hits = np.cumsum(same, axis=1)
    ranks = np.arange(1, same.shape[1] + 1)
    within_r = ranks[None, :] <= counts[:, None]
    map_r = np.sum(same * within_r * hits / ranks, axis=1) / counts
    top = order[:, :20]
    weights = np.exp(np.take_along_axis(sims, top, axis=1) / 0.07)
    votes = np.zeros((len(labels), labels.max() + 1))
    np.add.at(votes, (np.arange(len(labels))[:, None], labels[top]), weights)
    metrics = {
        "precision_at_1": float(same[:, 0].mean()),
        "mean_average_precision_at_r": float(map_r.mean()),
        "knn_top1_dino": float((votes.argmax(1) == labels).mean()),
    }
    for k in (1, 2, 4, 8):
        metrics[f"recall_at_{k}"] = float(same[:, :k].any(axis=1).mean())
    per_class = {int(c): float(same[labels == c, 0].mean()) for c in np.unique(labels)}
    return metrics, (order, per_class)


def make_digits_run() -> dict[str, Any]:
    """Two embeddings of the digits (PCA-6 and LDA-9) with their real retrieval results."""
    digits = load_digits()
    images = np.clip(digits.images * 16, 0, 255).astype(np.uint8)
    labels = digits.target.astype(np.int64)
    models = {
        "SimCLR backbone": _normalize(PCA(6, random_state=0).fit_transform(digits.data)),
        "GRPO-RM": _normalize(
            LinearDiscriminantAnalysis(n_components=9).fit_transform(digits.data, labels)
        ),
    }
    queries = np.array([np.flatnonzero(labels == c)[3] for c in range(8)])
    metrics, per_class, retrieval, embeddings = {}, {}, {}, {}
    for name, emb in models.items():
        values, (order, pc) = _retrieval_metrics(emb, labels)
        metrics[name] = values
        per_class[name] = {"precision_at_1": pc}
        top = order[queries, :8]
        retrieval[name] = {
            "query_images": images[queries],
            "query_labels": labels[queries],
            "result_images": images[top],
            "result_labels": labels[top],
        }
        embeddings[name] = (emb, labels)
    metrics["GRPO-RM"]["classifier_accuracy"] = 0.953
    rng = np.random.default_rng(0)
    history: list[dict[str, float]] = []
    for epoch in range(12):
        row = {
            "epoch": float(epoch),
            "train/reward": 0.2 + 0.6 * (1 - np.exp(-epoch / 4)) + 0.02 * rng.normal(),
            "train/accuracy": 0.5 + 0.45 * (1 - np.exp(-epoch / 3)),
            "train/loss": float(np.exp(-epoch / 5)),
            "train/entropy": 2.3 * np.exp(-epoch / 6),
            "train/clip_fraction": 0.0,
            "train/degenerate_fraction": 0.1 * np.exp(-epoch / 2),
        }
        if epoch % 3 == 2:
            row["val/accuracy"] = 0.5 + 0.4 * (1 - np.exp(-epoch / 3))
        history.append({k: float(v) for k, v in row.items()})
    return {
        "metrics": metrics,
        "per_class": per_class,
        "retrieval": retrieval,
        "embeddings": embeddings,
        "history": history,
        "class_names": DIGIT_NAMES,
        "config": {"epochs": 12, "tau": 0.1, "data": "sklearn digits"},
    }


@pytest.fixture(scope="module")
def digits_run() -> dict[str, Any]:
    return make_digits_run()


def _one_model(run: dict[str, Any], name: str = "GRPO-RM") -> dict[str, Any]:
    keys = ("metrics", "per_class", "retrieval", "embeddings")
    out = {k: {name: run[k][name]} for k in keys}
    return {**run, **out}


def _write(tmp_path: Path, run: dict[str, Any], **extra: Any) -> Path:
    return write_report(
        tmp_path,
        title="GRPO-RM on digits",
        metrics=run["metrics"],
        per_class=run["per_class"],
        history=run["history"],
        embeddings=run["embeddings"],
        retrieval=run["retrieval"],
        class_names=run["class_names"],
        config=run["config"],
        notes=["kNN against the same split (leave-one-out)."],
        **extra,
    )


def _assert_real_png(path: Path, min_side: int = 100) -> None:
    pixels = np.asarray(mpimg.imread(path))
    assert pixels.ndim == 3 and min(pixels.shape[:2]) >= min_side, (path, pixels.shape)
    rgb = (pixels[..., :3] * 255).astype(np.uint32).reshape(-1, 3)
    packed = (rgb[:, 0] << 16) | (rgb[:, 1] << 8) | rgb[:, 2]
    assert len(np.unique(packed)) > 20, f"{path} is (nearly) one colour"


def _img_sources(html_text: str) -> list[str]:
    return re.findall(r'<img src="([^"]+)"', html_text)


@pytest.fixture(scope="module")
def two_model_report(tmp_path_factory: pytest.TempPathFactory, digits_run: dict[str, Any]) -> Path:
    return _write(tmp_path_factory.mktemp("two"), digits_run)


@pytest.fixture(scope="module")
def one_model_report(tmp_path_factory: pytest.TempPathFactory, digits_run: dict[str, Any]) -> Path:
    return _write(tmp_path_factory.mktemp("one"), _one_model(digits_run))


# --------------------------------------------------------------------------------------------
# write_report
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("fixture", "n_models"), [("one_model_report", 1), ("two_model_report", 2)]
)
def test_write_report_files_and_links(
    request: pytest.FixtureRequest, fixture: str, n_models: int
) -> None:
    html_path: Path = request.getfixturevalue(fixture)
    run_dir = html_path.parent
    assert html_path == run_dir / "report.html"
    for name in ("report.html", "report.md", "metrics.json"):
        assert (run_dir / name).is_file()
    pngs = sorted(p.relative_to(run_dir).as_posix() for p in (run_dir / "figures").glob("*.png"))
    # curves, one retrieval grid and one map per model, one per-class chart
    assert len(pngs) == 2 + 2 * n_models
    text = html_path.read_text(encoding="utf-8")
    assert sorted(set(_img_sources(text))) == pngs
    # the product page carries no script; the browser check injects its own probe
    assert "<script" not in text.lower()
    md = (run_dir / "report.md").read_text(encoding="utf-8")
    assert sorted(set(re.findall(r"\]\((figures/[^)]+)\)", md))) == pngs
    for png in pngs:
        _assert_real_png(run_dir / png)


def test_metrics_json_round_trips(two_model_report: Path, digits_run: dict[str, Any]) -> None:
    data = json.loads((two_model_report.parent / "metrics.json").read_text(encoding="utf-8"))
    assert data["metrics"] == digits_run["metrics"]
    assert data["config"] == digits_run["config"]
    assert data["generated"]
    for model, by_metric in digits_run["per_class"].items():
        stored = data["per_class"][model]["precision_at_1"]
        assert {int(k): v for k, v in stored.items()} == by_metric["precision_at_1"]


def test_delta_column_only_with_two_models(two_model_report: Path, one_model_report: Path) -> None:
    two = two_model_report.read_text(encoding="utf-8")
    one = one_model_report.read_text(encoding="utf-8")
    assert re.search(r"<th[^>]*>Δ</th>", two)
    assert "Δ" not in one
    # LDA beats PCA-6 on digits, so the GRPO-RM column (last) shows improvements in green.
    assert 'class="delta better"' in two
    assert "| Δ |" in (two_model_report.parent / "report.md").read_text(encoding="utf-8")
    assert "Δ" not in (one_model_report.parent / "report.md").read_text(encoding="utf-8")


def test_delta_marks_regressions_red(tmp_path: Path) -> None:
    metrics = {
        "a": {"precision_at_1": 0.9, "train_loss": 1.0},
        "b": {"precision_at_1": 0.8, "train_loss": 0.5},
    }
    text = write_report(tmp_path, title="t", metrics=metrics).read_text(encoding="utf-8")
    rows = {m: row for m, row in re.findall(r'title="([^"]+)">[^<]*</th>(.*?)</tr>', text)}
    assert 'class="delta worse">-0.1000' in rows["precision_at_1"]
    # a loss going down is an improvement
    assert 'class="delta better">-0.5000' in rows["train_loss"]


def test_html_escapes_user_text(tmp_path: Path, digits_run: dict[str, Any]) -> None:
    names = [EVIL, *DIGIT_NAMES[1:]]
    run = {**_one_model(digits_run, "SimCLR backbone"), "class_names": names}
    text = write_report(
        tmp_path,
        title=EVIL,
        metrics={EVIL: run["metrics"]["SimCLR backbone"]},
        per_class={EVIL: run["per_class"]["SimCLR backbone"]},
        retrieval={EVIL: run["retrieval"]["SimCLR backbone"]},
        class_names=names,
        notes=[EVIL],
    ).read_text(encoding="utf-8")
    assert "<script>alert" not in text
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp;" in text
    # the per-class table shows the class name escaped
    assert text.count("&lt;script&gt;") >= 4


def test_metric_display_names() -> None:
    assert metric_display_name("mean_average_precision_at_r") == "MAP@R"
    assert metric_display_name("precision_at_1") == "P@1"
    assert metric_display_name("knn_top1_dino") == "kNN top-1 (k=20, T=0.07)"
    assert metric_display_name("knn_top5_lightly") == "kNN top-5 (k=200, T=0.1)"
    assert metric_display_name("recall_at_16") == "Recall@16"
    assert metric_display_name("nmi") == "NMI" and metric_display_name("ami") == "AMI"
    assert metric_display_name("my_metric") == "my_metric"


def test_knn_display_names_follow_the_evaluator_protocols(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for protocol, (k, temperature) in KNN_PROTOCOLS.items():
        assert f"(k={k}, T={temperature:g})" in metric_display_name(f"knn_top1_{protocol}")
    # a protocol added to the evaluator is named without touching the report
    monkeypatch.setitem(KNN_PROTOCOLS, "tiny", (5, 0.5))
    assert metric_display_name("knn_top5_tiny") == "kNN top-5 (k=5, T=0.5)"
    assert metric_display_name("knn_top1_unknown") == "kNN top-1 (unknown)"


def test_names_and_directions_come_from_the_metric_registry(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in [*registered_metrics(), "recall_at_8", "knn_top5_dino", "knn_top1_k7_t0.5"]:
        spec = metric_spec(name)
        assert spec is not None
        assert metric_display_name(name) == spec.display_name
        assert higher_is_better(name) == spec.higher_is_better
    # the registry wins over the report's own name rules ("error" would mean lower is better)
    spec = MetricSpec("error_free_share", "Error-free share", True, "clusters", lambda _: 1.0)
    monkeypatch.setitem(metric_registry._REGISTRY, spec.name, spec)
    assert metric_display_name("error_free_share") == "Error-free share"
    assert higher_is_better("error_free_share")
    metrics = {"a": {"error_free_share": 0.5}, "b": {"error_free_share": 0.75}}
    assert summary_sentence(metrics).startswith("b is best on Error-free share 0.7500")


def test_higher_is_better_directions() -> None:
    for name in ("precision_at_1", "knn_top1_dino", "nmi", "train/reward", "policy_accuracy"):
        assert higher_is_better(name), name
    for name in ("train/loss", "train_loss", "error_rate", "seconds_per_epoch", "peak_memory_mb"):
        assert not higher_is_better(name), name


def test_summary_names_the_winner(digits_run: dict[str, Any]) -> None:
    text = summary_sentence(digits_run["metrics"])
    assert text.startswith("GRPO-RM is best on")
    assert "MAP@R" in text and "SimCLR" not in text.split("best on")[0]
    tie = summary_sentence({"a": {"precision_at_1": 0.5}, "b": {"precision_at_1": 0.5}})
    assert tie.startswith("All models tie on P@1")


def test_bad_metrics_raise(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not finite"):
        write_report(tmp_path, title="t", metrics={"a": {"precision_at_1": float("nan")}})
    with pytest.raises(ValueError, match="at least one model"):
        write_report(tmp_path, title="t", metrics={})
    with pytest.raises(ValueError, match="lacks"):
        write_report(
            tmp_path,
            title="t",
            metrics={"a": {"x": 1.0}},
            retrieval={"a": {"query_images": np.zeros((1, 4, 4), np.uint8)}},
        )


# --------------------------------------------------------------------------------------------
# The plots on their own
# --------------------------------------------------------------------------------------------
def test_training_curves_panels_and_bad_rows(tmp_path: Path) -> None:
    rows = [
        {"epoch": e, "train/reward": e * 0.1, "train/loss": float("nan") if e == 2 else 1.0}
        for e in range(5)
    ]
    _assert_real_png(plot_training_curves(rows, tmp_path / "c.png"))
    assert list(curve_series(rows + [{"epoch": 5, "val/reward": 0.3}])) == [
        "reward",
        "loss",
    ]
    grpo_keys = [{"epoch": 1, "train/kl": 0.1, "train/entropy": 2.0, "train/loss": 0.0}]
    assert list(curve_series(grpo_keys + rows)) == ["reward", "loss", "entropy", "kl"]
    with pytest.raises(ValueError, match="no 'epoch'"):
        plot_training_curves([{"train/reward": 1.0}], tmp_path / "c.png")
    with pytest.raises(ValueError, match="empty"):
        plot_training_curves([], tmp_path / "c.png")


def test_loss_note_under_training_curves(two_model_report: Path, tmp_path: Path) -> None:
    note = html.escape(LOSS_NOTE)
    caption = re.search(
        r'training_curves\.png"[^>]*></a><figcaption>(.*?)</figcaption>',
        two_model_report.read_text(encoding="utf-8"),
    )
    assert caption is not None and note in caption.group(1)
    md = (two_model_report.parent / "report.md").read_text(encoding="utf-8")
    assert LOSS_NOTE in md.split("## Training curves")[1].split("##")[0]
    # without a logged loss there is nothing to explain
    rows = [{"epoch": e, "train/reward": 0.1 * e} for e in range(3)]
    text = write_report(tmp_path, title="t", metrics={"a": {"x": 1.0}}, history=rows).read_text(
        encoding="utf-8"
    )
    assert "training_curves.png" in text and note not in text
    assert LOSS_NOTE not in (tmp_path / "report.md").read_text(encoding="utf-8")


def test_embedding_map_subsamples_and_checks(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(4, 16)) * 5
    labels = rng.integers(0, 4, 3000)
    emb = centers[labels] + rng.normal(size=(3000, 16))
    path = plot_embedding_map(
        emb,
        labels,
        tmp_path / "m.png",
        max_points=500,
        class_names={0: "a", 1: "b", 2: "c", 3: "d"},
    )
    _assert_real_png(path)
    tsne = plot_embedding_map(emb[:120], labels[:120], tmp_path / "t.png", method="tsne")
    _assert_real_png(tsne)
    sub, sub_labels = subsample(emb, labels, 500, seed=1)
    again, _ = subsample(emb, labels, 500, seed=1)
    assert sub.shape == (500, 16) and sub_labels.shape == (500,) and np.array_equal(sub, again)
    with pytest.raises(ValueError, match="shape"):
        plot_embedding_map(emb, labels[:10], tmp_path / "m.png")
    emb[3, 0] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        plot_embedding_map(emb, labels, tmp_path / "m.png")
    with pytest.raises(ValueError, match="method"):
        plot_embedding_map(emb[10:20], labels[10:20], tmp_path / "m.png", method="lle")


def test_retrieval_grid_colours_hits_and_misses(tmp_path: Path) -> None:
    images = np.clip(load_digits().images[:3] * 16, 0, 255).astype(np.uint8)
    results = np.stack([images, images[::-1]], axis=1)  # (3, 2, 8, 8)
    labels = np.array([0, 1, 2])
    path = plot_retrieval_grid(
        images,
        labels,
        results,
        np.array([[0, 2], [1, 1], [2, 0]]),
        tmp_path / "g.png",
        class_names=DIGIT_NAMES,
    )
    pixels = np.asarray(mpimg.imread(path))[..., :3]
    _assert_real_png(path)

    def has(color: str) -> bool:
        rgb = np.array([int(color[i : i + 2], 16) for i in (1, 3, 5)]) / 255
        return bool((np.abs(pixels - rgb).max(axis=-1) < 0.02).sum() > 50)

    assert has(HIT_COLOR) and has(MISS_COLOR) and has(QUERY_COLOR)
    with pytest.raises(ValueError, match="result_images"):
        plot_retrieval_grid(images, labels, results[:, :, :4], np.zeros((3, 2)), tmp_path / "g.png")
    colour = np.repeat(images[..., None], 3, axis=-1)
    colour[..., 0] = 255 - colour[..., 0]
    path = plot_retrieval_grid(
        colour,
        labels,
        np.stack([colour] * 4, axis=1),
        np.tile(labels[:, None], 4),
        tmp_path / "c.png",
        title="colour",
    )
    _assert_real_png(path)
    with pytest.raises(ValueError, match="3 channels"):
        plot_retrieval_grid(colour[..., :2], labels, results, np.zeros((3, 2)), tmp_path / "c.png")


def test_per_class_chart(tmp_path: Path) -> None:
    data = {
        "a": {"precision_at_1": {c: 0.5 + 0.04 * c for c in range(10)}},
        "b": {"precision_at_1": {c: 0.6 + 0.03 * c for c in range(10)}},
    }
    _assert_real_png(
        plot_per_class(data, tmp_path / "p.png", metric="precision_at_1", class_names=DIGIT_NAMES)
    )
    with pytest.raises(ValueError, match="no model"):
        plot_per_class(data, tmp_path / "p.png", metric="nmi")
    # 60 classes wrap onto three rows of bars instead of one unreadably wide strip
    many = {"a": {"nmi": {c: (c % 7) / 7 for c in range(60)}}}
    tall = np.asarray(mpimg.imread(plot_per_class(many, tmp_path / "m.png", metric="nmi")))
    short = np.asarray(mpimg.imread(tmp_path / "p.png"))
    assert tall.shape[0] > 2.5 * short.shape[0] and tall.shape[1] < 2 * short.shape[1]


def test_check_script_without_chromium(tmp_path: Path) -> None:
    html_path = write_report(tmp_path, title="t", metrics={"a": {"precision_at_1": 0.5}})
    done = subprocess.run(
        [sys.executable, str(CHECK_SCRIPT), str(html_path)],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": str(tmp_path)},
    )
    assert done.returncode == 2 and "apt-get install -y chromium" in done.stderr
    done = subprocess.run(
        [sys.executable, str(CHECK_SCRIPT), str(tmp_path / "nope.html")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "nope.html" in done.stderr


# --------------------------------------------------------------------------------------------
# Headless Chromium
# --------------------------------------------------------------------------------------------
@pytest.mark.skipif(
    shutil.which("chromium") is None, reason="chromium not on PATH (apt-get install -y chromium)"
)
def test_report_renders_in_chromium(tmp_path: Path, two_model_report: Path) -> None:
    shutil.copytree(two_model_report.parent, tmp_path / "run")
    html_path = tmp_path / "run" / "report.html"
    before = {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()}
    shot = tmp_path / "shot.png"
    done = subprocess.run(
        [sys.executable, str(CHECK_SCRIPT), str(html_path), "--screenshot", str(shot)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr
    assert "OK: 6/6 images rendered" in done.stdout
    _assert_real_png(shot, min_side=1000)
    # the check's probe page lives elsewhere: the run folder is left exactly as it was
    after = {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()}
    assert after == before
    # a broken image makes the check fail with a clear message
    (html_path.parent / "figures" / "training_curves.png").write_bytes(b"not a png")
    done = subprocess.run(
        [sys.executable, str(CHECK_SCRIPT), str(html_path)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 1 and "5 of 6 images rendered" in done.stderr


def test_rewrite_drops_stale_figures(tmp_path: Path, digits_run: dict[str, Any]) -> None:
    _write(tmp_path, digits_run)
    html_path = _write(tmp_path, _one_model(digits_run))
    on_disk = {p.name for p in (tmp_path / "figures").glob("*.png")}
    linked = {Path(src).name for src in _img_sources(html_path.read_text(encoding="utf-8"))}
    assert on_disk == linked and not any("simclr" in name for name in on_disk)
