"""Paired significance tests between two models evaluated on the same items.

With one or two datasets per task category, the paper's test (Wilcoxon over per-dataset scores)
has no power, so designs are compared per item, each task with the test that fits its metric:

- STS: paired bootstrap of the Spearman difference (resample pairs, recompute both correlations);
- retrieval: Wilcoxon signed-rank over per-query nDCG@10 (plus a bootstrap CI of the mean difference);
- classification: exact McNemar test on the discordant test items (plus a bootstrap CI);
- clustering: paired bootstrap of the V-measure difference (resample items; the clusterings are kept;
  1,000 resamples through a numpy V-measure).

Every comparison returns the difference A - B in the task's main unit (x100), its 95% bootstrap
confidence interval and a two-sided p-value. :func:`holm` adjusts the p-values of many pairs.
scipy is needed (``pip install 'llm-embed[evaluation]'``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .tasks import TaskResult, require


@dataclass
class Comparison:
    task: str
    metric: str
    test: str
    difference: float  # score(A) - score(B), x100
    ci_low: float
    ci_high: float
    p_value: float
    n_items: int

    def to_dict(self) -> dict:
        return asdict(self)


def bootstrap_p_value(resampled_differences: np.ndarray) -> float:
    """Two-sided p-value of "difference = 0" from the bootstrap distribution (percentile method),
    as (1 + count) / (1 + resamples) so that it is never 0: with 1000 resamples the smallest
    reportable p is about 0.002."""
    n = len(resampled_differences)
    crossing = min(int(np.sum(resampled_differences <= 0)), int(np.sum(resampled_differences >= 0)))
    return min(1.0, 2 * (1 + crossing) / (1 + n))


def resample_indices(n_items: int, n_resamples: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n_items, size=(n_resamples, n_items))


def interval(samples: np.ndarray) -> tuple[float, float]:
    low, high = np.percentile(samples, [2.5, 97.5])
    return float(low), float(high)


def rowwise_spearman(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman correlation of each row of ``x`` with the same row of ``y`` (ties get average ranks)."""
    rankdata = require("scipy.stats").rankdata
    rx, ry = rankdata(x, axis=1), rankdata(y, axis=1)
    rx -= rx.mean(axis=1, keepdims=True)
    ry -= ry.mean(axis=1, keepdims=True)
    return (rx * ry).sum(axis=1) / np.sqrt((rx**2).sum(axis=1) * (ry**2).sum(axis=1))


#: the largest share of bootstrap resamples whose statistic may be undefined (an STS resample of
#: pairs that all have one gold score): they are left out, which is harmless while they are rare
MAX_UNDEFINED_RESAMPLES = 0.01


def defined_resamples(differences: np.ndarray, task: str) -> np.ndarray:
    """The resampled differences whose statistic is defined. NaNs would otherwise count on neither
    side of 0 and shrink the p-value (and make the interval NaN); when more than
    :data:`MAX_UNDEFINED_RESAMPLES` of them are NaN, the items are too few for the bootstrap."""
    undefined = int(np.isnan(differences).sum())
    if undefined > MAX_UNDEFINED_RESAMPLES * len(differences):
        raise ValueError(f"{task}: {undefined} of {len(differences)} bootstrap resamples leave a correlation "
                         "undefined (every resampled pair has the same gold or cosine score): too few distinct "
                         "items for a paired bootstrap; compare on more items")
    return differences[~np.isnan(differences)]


def check_paired(a: TaskResult, b: TaskResult, key: str) -> int:
    if a.task != b.task:
        raise ValueError(f"cannot pair results of different tasks: {a.task!r} vs {b.task!r}")
    if a.category != b.category:
        raise ValueError(f"{a.task}: cannot pair a {a.category} result with a {b.category} result; compare results "
                         "of the same task")
    missing = [name for name, result in (("A", a), ("B", b)) if key not in result.per_item]
    if missing:
        raise ValueError(f"{a.task}: result {' and '.join(missing)} has no per-item {key!r} scores; compare results "
                         "as the evaluation returns them (TaskResult.per_item)")
    n_a, n_b = len(a.per_item[key]), len(b.per_item[key])
    if n_a != n_b:
        raise ValueError(f"{a.task}: the two results cover {n_a} vs {n_b} items; evaluate both on the same items")
    return n_a


def compare_sts(a: TaskResult, b: TaskResult, n_resamples: int = 1000, seed: int = 0) -> Comparison:
    n = check_paired(a, b, "cosine")
    gold = np.asarray(a.per_item["gold"], dtype=np.float64)
    if not np.array_equal(gold, np.asarray(b.per_item["gold"], dtype=np.float64)):
        raise ValueError(f"{a.task}: the two results have different gold scores; they are not the same items")
    cos_a, cos_b = np.asarray(a.per_item["cosine"]), np.asarray(b.per_item["cosine"])
    index = resample_indices(n, n_resamples, seed)
    with np.errstate(invalid="ignore", divide="ignore"):  # constant resamples: NaN, handled just below
        differences = 100 * (rowwise_spearman(cos_a[index], gold[index]) - rowwise_spearman(cos_b[index], gold[index]))
    differences = defined_resamples(differences, a.task)
    return Comparison(a.task, "spearman", "paired bootstrap", a.main_score - b.main_score, *interval(differences),
                      bootstrap_p_value(differences), n)


def compare_retrieval(a: TaskResult, b: TaskResult, n_resamples: int = 1000, seed: int = 0) -> Comparison:
    n = check_paired(a, b, "ndcg_at_10")
    if a.per_item["query_ids"] != b.per_item["query_ids"]:
        raise ValueError(f"{a.task}: the two results rank different queries")
    per_query = 100 * (np.asarray(a.per_item["ndcg_at_10"]) - np.asarray(b.per_item["ndcg_at_10"]))
    if np.all(per_query == 0):
        p_value = 1.0  # identical rankings: Wilcoxon is undefined, and there is no difference
    else:
        p_value = float(require("scipy.stats").wilcoxon(per_query, zero_method="wilcox").pvalue)
    means = per_query[resample_indices(n, n_resamples, seed)].mean(axis=1)
    return Comparison(a.task, "ndcg_at_10", "Wilcoxon signed-rank (per query)", float(per_query.mean()),
                      *interval(means), p_value, n)


def compare_classification(a: TaskResult, b: TaskResult, n_resamples: int = 1000, seed: int = 0) -> Comparison:
    n = check_paired(a, b, "correct")
    if "gold" in a.per_item and "gold" in b.per_item and list(a.per_item["gold"]) != list(b.per_item["gold"]):
        raise ValueError(f"{a.task}: the two results have different gold labels; they are not the same items")
    correct_a, correct_b = np.asarray(a.per_item["correct"], bool), np.asarray(b.per_item["correct"], bool)
    only_a, only_b = int(np.sum(correct_a & ~correct_b)), int(np.sum(~correct_a & correct_b))
    if only_a + only_b == 0:
        p_value = 1.0
    else:  # exact McNemar: the discordant items split 50/50 under the null
        p_value = float(require("scipy.stats").binomtest(only_a, only_a + only_b, 0.5).pvalue)
    per_item = 100 * (correct_a.astype(float) - correct_b.astype(float))
    means = per_item[resample_indices(n, n_resamples, seed)].mean(axis=1)
    return Comparison(a.task, "accuracy", "exact McNemar", float(per_item.mean()), *interval(means), p_value, n)


def v_measure_codes(gold: np.ndarray, cluster: np.ndarray, n_gold: int, n_clusters: int) -> float:
    """V-measure (x1, beta 1) of integer-coded labels from their contingency table, as sklearn's
    ``v_measure_score`` defines it, in one ``bincount``: fast enough for 1,000 bootstrap resamples
    of 20,000 items (sklearn's per-call overhead made 200 the affordable count, and with five
    designs Holm multiplies the smallest p = 2/201 by 10, so no clustering difference could ever
    be significant)."""
    table = np.bincount(gold * n_clusters + cluster, minlength=n_gold * n_clusters).reshape(n_gold, n_clusters)
    joint = table / table.sum()
    p_gold, p_cluster = joint.sum(axis=1), joint.sum(axis=0)
    entropy = lambda p: -float(np.sum(p[p > 0] * np.log(p[p > 0])))
    nonzero = joint > 0
    outer_gold = np.broadcast_to(p_gold[:, None], joint.shape)[nonzero]
    outer_cluster = np.broadcast_to(p_cluster[None, :], joint.shape)[nonzero]
    gold_given_cluster = -float(np.sum(joint[nonzero] * np.log(joint[nonzero] / outer_cluster)))
    cluster_given_gold = -float(np.sum(joint[nonzero] * np.log(joint[nonzero] / outer_gold)))
    h_gold, h_cluster = entropy(p_gold), entropy(p_cluster)
    homogeneity = 1.0 if h_gold == 0 else 1 - gold_given_cluster / h_gold
    completeness = 1.0 if h_cluster == 0 else 1 - cluster_given_gold / h_cluster
    if homogeneity + completeness == 0:
        return 0.0
    return 2 * homogeneity * completeness / (homogeneity + completeness)


def compare_clustering(a: TaskResult, b: TaskResult, n_resamples: int = 1000, seed: int = 0) -> Comparison:
    n = check_paired(a, b, "cluster")
    if list(a.per_item["gold"]) != list(b.per_item["gold"]):
        raise ValueError(f"{a.task}: the two results have different gold labels; they are not the same items")
    codes = lambda labels: np.unique(np.asarray(labels), return_inverse=True)[1].ravel()
    gold, cluster_a, cluster_b = codes(a.per_item["gold"]), codes(a.per_item["cluster"]), codes(b.per_item["cluster"])
    sizes = int(gold.max()) + 1, int(max(cluster_a.max(), cluster_b.max())) + 1
    differences = np.array([
        100 * (v_measure_codes(gold[i], cluster_a[i], *sizes) - v_measure_codes(gold[i], cluster_b[i], *sizes))
        for i in resample_indices(n, n_resamples, seed)
    ])
    return Comparison(a.task, "v_measure", "paired bootstrap", a.main_score - b.main_score, *interval(differences),
                      bootstrap_p_value(differences), n)


COMPARISONS = {
    "sts": compare_sts,
    "retrieval": compare_retrieval,
    "classification": compare_classification,
    "clustering": compare_clustering,
}


def compare(a: TaskResult, b: TaskResult, seed: int = 0) -> Comparison:
    """The paired test for the task's category (see the module docstring)."""
    if a.category not in COMPARISONS:
        raise ValueError(f"no paired test for task category {a.category!r}; known: {sorted(COMPARISONS)}")
    return COMPARISONS[a.category](a, b, seed=seed)


def holm(p_values: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (same order as given)."""
    order = np.argsort(p_values)
    adjusted = np.empty(len(p_values))
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, (len(p_values) - rank) * p_values[index])
        adjusted[index] = min(1.0, running)
    return adjusted.tolist()


__all__ = [
    "COMPARISONS", "Comparison", "bootstrap_p_value", "compare", "compare_classification", "compare_clustering",
    "compare_retrieval", "compare_sts", "holm",
]
