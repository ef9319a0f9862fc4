"""What users import most is importable from the package's top level."""

from __future__ import annotations

import importlib
import warnings

import lightly_grpo


def test_top_level_exports_the_most_used_names() -> None:
    from lightly_grpo.callbacks import RetrievalEvaluationCallback
    from lightly_grpo.evaluation import RetrievalEvaluator
    from lightly_grpo.index import knn_search

    assert lightly_grpo.RetrievalEvaluator is RetrievalEvaluator
    assert lightly_grpo.knn_search is knn_search
    assert lightly_grpo.RetrievalEvaluationCallback is RetrievalEvaluationCallback
    for name in lightly_grpo.__all__:
        assert getattr(lightly_grpo, name) is not None, name


def test_old_module_paths_keep_working() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        loss = importlib.import_module("lightly_grpo.loss")
        classification = importlib.import_module("lightly_grpo.classification_loss")
    assert loss.GRPORMLoss is lightly_grpo.GRPORMLoss
    assert classification.GRPORMClassificationLoss is lightly_grpo.GRPORMClassificationLoss
