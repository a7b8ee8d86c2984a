"""Evaluation of embedding models on local files: STS, retrieval, classification, clustering.

    from llm_embed.evaluation import default_tasks, evaluate
    results = evaluate(model, default_tasks("../shared/data", ["stsb", "scifact"]))

``data_dir`` holds the five built-in tasks' files at fixed paths (``tasks.TASK_FILES``; see
docs/evaluation.md): nothing is downloaded. A ``limit`` too small for a task's metric raises
:class:`SampleTooSmallError`; a merely noisy one warns (:class:`SmallSampleWarning`) and the reason
is kept in each result's ``warnings``.
"""

from .runner import evaluate, format_table, main
from .tasks import (
    ClassificationTask,
    ClusteringTask,
    EvaluationTask,
    RetrievalTask,
    SampleTooSmallError,
    SmallSampleWarning,
    STSTask,
    TaskResult,
    default_tasks,
    ndcg_at_k,
    recall_at_k,
)

__all__ = [
    "ClassificationTask",
    "ClusteringTask",
    "EvaluationTask",
    "RetrievalTask",
    "STSTask",
    "SampleTooSmallError",
    "SmallSampleWarning",
    "TaskResult",
    "default_tasks",
    "evaluate",
    "format_table",
    "main",
    "ndcg_at_k",
    "recall_at_k",
]
