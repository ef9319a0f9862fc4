"""What users import most is importable from the package's top level."""

from __future__ import annotations

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
