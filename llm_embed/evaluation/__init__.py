"""Evaluation of embedding models on local files: STS, retrieval, classification, clustering.

    from llm_embed.evaluation import default_tasks, evaluate
    results = evaluate(model, default_tasks("../shared/data", ["stsb", "scifact"]))
"""

from .runner import evaluate, format_table, main
from .tasks import (
    ClassificationTask,
    ClusteringTask,
    EvaluationTask,
    RetrievalTask,
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
    "TaskResult",
    "default_tasks",
    "evaluate",
    "format_table",
    "main",
    "ndcg_at_k",
    "recall_at_k",
]
