"""Evaluation of embedding models on local files: STS, retrieval, classification, clustering.

    from llm_embed.evaluation import default_tasks, evaluate
    results = evaluate(model, default_tasks("../shared/data", ["stsb", "scifact"]))

``data_dir`` holds the five built-in tasks' files at fixed paths (``tasks.TASK_FILES``; see
docs/evaluation.md): nothing is downloaded. A ``limit`` too small for a task's metric raises
:class:`SampleTooSmallError`; a merely noisy one warns (:class:`SmallSampleWarning`) and the reason
is kept in each result's ``warnings``. Files of your own: the task classes' ``columns`` and
``delimiter``, or a command-line spec parsed by :mod:`.task_specs`::

    tasks = [parse_task_spec(["sts:pairs.csv", "score=label"]).build()]
"""

from .runner import evaluate, format_table, load_model, main
from .task_specs import TaskSpec, TaskSpecError, parse_task_spec
from .tasks import (
    SIDE_PROMPT,
    ClassificationTask,
    ClusteringTask,
    EvaluationTask,
    RetrievalTask,
    SampleTooSmallError,
    SmallSampleWarning,
    STSTask,
    TaskResult,
    check_prompts,
    default_tasks,
    ndcg_at_k,
    recall_at_k,
)

__all__ = [
    "SIDE_PROMPT",
    "ClassificationTask",
    "ClusteringTask",
    "EvaluationTask",
    "RetrievalTask",
    "STSTask",
    "SampleTooSmallError",
    "SmallSampleWarning",
    "TaskResult",
    "TaskSpec",
    "TaskSpecError",
    "check_prompts",
    "default_tasks",
    "evaluate",
    "format_table",
    "load_model",
    "main",
    "ndcg_at_k",
    "parse_task_spec",
    "recall_at_k",
]
