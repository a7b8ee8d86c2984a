"""Evaluation tasks over plain files (the formats of ../shared/data, see its README).

Each task takes file paths, embeds with ``model.encode`` and returns a :class:`TaskResult`: the
main score (x100, as MTEB reports), secondary scores, and per-item scores (what the study's
significance tests pair across designs). ``evaluate`` is ``score(embed(model))``: the two phases
are separate so that a caller can embed on the GPU and score (k-means, logistic regression) on
CPU workers while the GPU goes on with the next model; ``score`` takes only numpy arrays.
Prompts follow the paper and its peers: retrieval
queries get the model's ``query`` prompt, documents its ``document`` prompt, or no prompt where the
model has none by that name (:data:`SIDE_PROMPT`, ``encode_query`` / ``encode_document``'s rule);
symmetric tasks (STS, classification, clustering) use ``prompt_name`` (default: none, i.e. the
model's default). A prompt name given explicitly must be one of the model's prompts:
:func:`check_prompts` refuses it, before any task runs, when it is not.
scikit-learn and scipy are needed (``pip install llm-embed[evaluation]``).

Every CSV, TSV and JSONL file, built-in or your own, is read by :func:`read_records`: one reader,
so that a column renamed, a delimiter changed or a field missing is handled (and named, with the
file and the line) the same way everywhere. The task classes take ``columns`` (role -> column or
JSON field name) and ``delimiter`` for files of your own; without them they read the built-in
layouts. :mod:`.task_specs` builds them from command-line specs (``--task sts:pairs.csv ...``).

Small subsets (``limit``) are checked when a task is built, before any model runs: a subset on
which the metric cannot mean anything raises :class:`SampleTooSmallError` (a ``ValueError``); one
on which it is merely noisy or biased emits a :class:`SmallSampleWarning` and the reason is kept in
``task.warnings`` and in the result's ``warnings``. The rules, per task class:

- STS: fewer than 3 pairs, or constant gold scores, are refused (no correlation); under 100 pairs
  warns with the spread of Spearman x100 under no correlation, 100 / sqrt(n - 1);
- retrieval: refused when no query has a relevant document (qrels score > 0) in the corpus (every
  score would be 0); warns when some queries have none (they score 0 whatever the model), under
  50 queries (standard error up to 50 / sqrt(n) points), or a corpus of 100 documents or fewer
  (recall@100 is then 100 for any model);
- classification: refused with fewer than 2 classes in training, fewer training rows than the
  task's classes (counted over both whole files), or no test item whose class is in training;
  warns when some test classes are absent from training (accuracy ceiling), under 5 training rows
  per class, or under 100 test items (standard error up to 50 / sqrt(n) points);
- clustering: refused with fewer than 2 gold labels or clusters, at least as many clusters as
  texts, or when a random assignment of the texts to the clusters already scores a V-measure of 50
  or more (V-measure rises as clusters get as many as texts: 20 texts in 13 clusters score about
  79 at random); warns from 10 (``scores["v_measure_chance"]`` gives that chance level).
"""

from __future__ import annotations

import csv
import importlib
import json
import math
import warnings
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..encoding import PROMPT_SIDES, side_prompt_name

__all__ = [
    "LIMIT_KEYS",
    "TASK_FILES",
    "ClassificationTask",
    "ClusteringTask",
    "EvaluationTask",
    "RetrievalTask",
    "STSTask",
    "SampleTooSmallError",
    "SmallSampleWarning",
    "TaskResult",
    "chance_v_measure",
    "check_task_files",
    "cosine_pairs",
    "default_tasks",
    "ndcg_at_k",
    "parse_task_limit",
    "read_labelled_csv",
    "read_pairs",
    "read_records",
    "read_sick",
    "read_stsb",
    "recall_at_k",
    "require",
    "seeded_subset",
    "task_limits",
]


def require(module: str, extra: str = "evaluation"):
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(f"this task needs {module.split('.')[0]}: pip install 'llm-embed[{extra}]'") from err


@dataclass
class TaskResult:
    task: str
    category: str
    main_metric: str
    main_score: float
    scores: dict[str, float]
    per_item: dict[str, list] = field(default_factory=dict)
    #: why this score is noisy or biased (small subsets, see the module docstring); empty when it is not
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


class SampleTooSmallError(ValueError):
    """A task's items (usually a ``limit`` subset) are too few for its metric to mean anything."""


class SmallSampleWarning(UserWarning):
    """A task's items are few enough that its score is noisy or biased; the task still runs."""


class _SidePrompt:
    """The type of :data:`SIDE_PROMPT` (one instance; its repr is what signatures show)."""

    def __repr__(self) -> str:
        return "SIDE_PROMPT"


#: a retrieval task's default query / document prompt: the model's prompt named ``"query"`` /
#: ``"document"`` when it has one, else no prompt (:func:`~llm_embed.encoding.side_prompt_name`,
#: the rule of ``encode_query`` / ``encode_document`` and of sentence-transformers), so that a
#: model saved without those prompts is evaluated without prompts instead of failing
SIDE_PROMPT = _SidePrompt()


def model_prompts(model) -> dict[str, str]:
    """The named prompts of ``model``: an llm_embed model's ``config.prompts``, a sentence-transformers
    model's ``prompts``; none for any other object with an ``encode``."""
    prompts = getattr(getattr(model, "config", None), "prompts", None)
    if prompts is None:
        prompts = getattr(model, "prompts", None)
    return dict(prompts or {})


def check_prompts(model, tasks) -> None:
    """Refuse, before any task runs, a prompt name that ``model`` does not have: otherwise the tasks
    before it would run (minutes on a real corpus) and the report be lost to the error."""
    prompts = model_prompts(model)
    for task in tasks:
        for key, name in task.prompt_names().items():
            if name not in prompts and name not in PROMPT_SIDES:  # "query" / "document": every model has them
                raise ValueError(f"task {task.name}: {key}={name!r} (the task's {key}_name) is not a prompt of the "
                                 f"model, whose prompts are {sorted(prompts) or 'none'}; name one of those or leave "
                                 f"{key} out (checked before any task runs)")


class EvaluationTask:
    """What every task has: ``name``, ``category``, ``embed(model)`` and ``score(embeddings)``;
    ``evaluate`` runs both. ``warnings`` lists why the score of this subset is noisy (empty if it is not)."""

    name: str
    category: str

    def prompt_names(self) -> dict[str, str]:
        """The prompt names this task passes to ``encode`` explicitly, by the ``--task`` key that sets
        them (for :func:`check_prompts`): a symmetric task's ``prompt_name`` when given."""
        prompt_name = getattr(self, "prompt_name", None)
        return {} if prompt_name is None else {"prompt": prompt_name}

    @property
    def warnings(self) -> list[str]:
        return self.__dict__.setdefault("_warnings", [])

    def warn_small(self, message: str) -> None:
        """Record and emit a :class:`SmallSampleWarning` naming this task."""
        self.warnings.append(message)
        warnings.warn(f"{self.name}: {message}", SmallSampleWarning, stacklevel=3)

    def refuse(self, message: str):
        raise SampleTooSmallError(f"{self.name}: {message}")

    def evaluate(self, model, batch_size: int = 32, show_progress_bar: bool = False) -> TaskResult:
        return self.score(self.embed(model, batch_size=batch_size, show_progress_bar=show_progress_bar))


#: sample-size rules (see the module docstring): below a MIN a task refuses, below a NOISY it warns
MIN_STS_PAIRS = 3
NOISY_STS_PAIRS = 100
NOISY_QUERIES = 50
MIN_ROWS_PER_CLASS = 5
NOISY_TEST_ITEMS = 100
MIN_TEXTS_PER_CLUSTER = 50
REFUSED_CHANCE_V_MEASURE = 50.0
NOISY_CHANCE_V_MEASURE = 10.0


def seeded_subset(rows: list, limit: int | None, seed: int = 0) -> list:
    """``limit`` rows drawn at random with a fixed seed, in file order. The shared files are sorted
    (STS-B by genre, Banking77 and StackOverflow by label), so their first rows are one genre or a
    few labels and would not be a fair sample of the task."""
    if limit is None or limit >= len(rows):
        return rows
    keep = sorted(np.random.default_rng(seed).permutation(len(rows))[:limit])
    return [rows[i] for i in keep]


#: the delimiter of a table file, from its name, when none is given; JSONL_SUFFIXES are JSON lines
SUFFIX_DELIMITERS = {".csv": ",", ".tsv": "\t", ".tab": "\t"}
JSONL_SUFFIXES = (".jsonl", ".ndjson")


def file_format(path, delimiter: str | None) -> str | None:
    """The delimiter of a table file, or None for JSON lines: ``delimiter`` if given, else from the
    file's suffix (``.csv``, ``.tsv``/``.tab``, ``.jsonl``/``.ndjson``)."""
    if delimiter is not None:
        if len(delimiter) != 1:
            raise ValueError(f"{path}: delimiter must be one character, got {delimiter!r}")
        return delimiter
    suffix = Path(path).suffix.lower()
    if suffix in JSONL_SUFFIXES:
        return None
    if suffix in SUFFIX_DELIMITERS:
        return SUFFIX_DELIMITERS[suffix]
    raise ValueError(f"{path}: cannot tell its format from the name; name it .csv, .tsv or .jsonl (one JSON object a "
                     "line), or pass the delimiter of a table with a header (e.g. delimiter=tab)")


def label_text(text: str) -> str:
    """A label as written, refusing an empty one: it would be read as a class named ``""`` (a class
    more for k-means, one more for the classifier to learn and be scored on)."""
    if not text.strip():
        raise ValueError(text)
    return text


def finite_float(text: str) -> float:
    """``float(text)``, refusing ``nan`` and ``inf``: a gold score that is not a number would make
    the task's correlation ``nan`` (and the results file invalid JSON) instead of an error."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(text)
    return value


def refuse_duplicate_ids(ids: Sequence[str], path, what: str) -> None:
    """Refuse an id that names two records of ``path``: a repeated document id would count as two
    documents (each adding gain, so nDCG above 100), a repeated query id would keep one text only."""
    first: dict[str, int] = {}
    for number, item in enumerate(ids, 1):
        if item in first:
            raise ValueError(f"{path}: {what} id {item!r} names records {first[item]} and {number} (counting records, "
                             "not lines); ids must be unique: remove or rename the repeated one")
        first[item] = number


def _where(path, line: int) -> str:
    return f"{path}:{line}"


def read_records(path, columns: Mapping[str, str | int], *, delimiter: str | None = None, header: bool = True,
                 quoting: int | None = None, optional: Collection[str] = (),
                 convert: Mapping[str, Callable[[str], object]] | None = None) -> list[dict]:
    """Rows of a CSV/TSV file with a header row, or of a JSONL file, as dicts role -> value.

    ``columns`` maps each role the task needs (``score``, ``text``, ...) to its column (header
    name, or 0-based index when ``header=False``) or JSON field. The format comes from
    ``delimiter`` or the suffix (:func:`file_format`). ``optional`` roles missing from a file read as
    ``""`` (a corpus without titles). ``convert`` turns a role's text into a value (``float`` for
    a score). Every problem is a ``ValueError`` naming the file, the line, what is missing and
    which ``role=<column>`` to pass, since a renamed column is the usual cause. ``quoting`` (None: by
    the delimiter) is the csv module's: a TSV is read without quoting (``QUOTE_NONE``, as the
    built-in STS-B reader and ``llm-embed-encode`` read it), since tab-separated exports do not
    quote and a text that opens with ``"`` would otherwise swallow the following lines; other
    delimiters with CSV quoting."""
    delimiter = file_format(path, delimiter)
    if quoting is None:
        quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    convert = convert or {}
    # utf-8-sig: a byte-order mark (what Excel writes) would otherwise stick to the first column's name
    try:
        with open(path, encoding="utf-8-sig", newline="" if delimiter is not None else None) as handle:
            return _read_open_records(path, handle, columns, delimiter, header, quoting, optional, convert)
    except UnicodeDecodeError as error:
        raise not_utf8(path, error) from error


def not_utf8(path, error: UnicodeDecodeError) -> ValueError:
    return ValueError(f"{path} is not UTF-8 text ({error.reason}, byte {error.object[error.start:error.end]!r}); "
                      f"save it as UTF-8, e.g. iconv -f latin1 -t utf-8 {path} > fixed{Path(path).suffix}")


def read_lines(path) -> list[str]:
    """The lines of a text file (one item a line), ended by ``\n``, ``\r\n`` or ``\r`` only: a text may hold
    Unicode line or paragraph separators (U+2028, U+0085, form feeds) that ``str.splitlines`` would also cut at,
    misaligning one file's lines with another's. A byte-order mark is skipped, as :func:`read_records` does."""
    try:
        with open(path, encoding="utf-8-sig", newline=None) as handle:
            return [line[:-1] if line.endswith("\n") else line for line in handle]
    except UnicodeDecodeError as error:
        raise not_utf8(path, error) from error


def _read_open_records(path, handle, columns, delimiter, header, quoting, optional, convert) -> list[dict]:
    rows: list[dict] = []
    if delimiter is None:
        for line, raw in enumerate(handle, 1):
            if raw.strip():
                rows.append(_json_record(path, line, raw, columns, optional, convert))
        return rows
    from ..corpus import csv_rows

    # strict: not strict, an unclosed quote read every later line into one cell (fewer pairs, other scores)
    reader = csv.reader(handle, delimiter=delimiter, quoting=quoting, strict=True)
    cells_of = csv_rows(reader, path)
    index: dict[str, int] = {}
    names: list[str] = []
    if header:
        names = next(cells_of, [])
        if not names:
            raise ValueError(f"{_where(path, 1)}: no header row (the file is empty); a table starts with a row of "
                             f"column names, here {', '.join(map(str, columns.values()))}")
        index = _header_index(path, reader.line_num or 1, names, columns, optional, delimiter)
    else:
        index = {role: int(column) for role, column in columns.items()}
    for cells in cells_of:
        if not cells:
            continue
        line = reader.line_num
        if names and len(cells) > len(names):  # extra cells would be dropped: a text cut at a comma / tab
            raise ValueError(f"{_where(path, line)}: {len(cells)} cells, the header has {len(names)}; a field holds "
                             f"the delimiter ({delimiter!r}): quote it (\"hello, world\") in a CSV; a TSV field "
                             "cannot hold a tab")
        record = {}
        for role, position in index.items():
            if position >= len(cells):
                what = f"column {names[position]!r}" if names else f"column {position + 1}"
                raise ValueError(f"{_where(path, line)}: only {len(cells)} cells, no {what} for {role}; check the "
                                 f"delimiter ({delimiter!r}) and the quoting of this line")
            record[role] = _convert(path, line, role, columns.get(role, role), cells[position], convert)
        record.update({role: "" for role in columns if role not in index})
        rows.append(record)
    return rows


def _header_index(path, line: int, names: list[str], columns: Mapping[str, str | int], optional: Collection[str],
                  delimiter: str) -> dict[str, int]:
    positions = {name: i for i, name in enumerate(names)}
    index = {}
    for role, column in columns.items():
        if column in positions:
            index[role] = positions[column]
        elif role not in optional:
            hint = ""
            others = [d for d in ",\t;|" if d != delimiter and len(names) == 1 and d in names[0]]
            if others:
                hint = f" (the header is one column: is the delimiter {others[0]!r}? pass delimiter=...)"
            raise ValueError(f"{_where(path, line)}: no column {column!r} (columns: {', '.join(names)}){hint}; "
                             f"pass {role}=<column>")
    return index


def _json_record(path, line: int, raw: str, columns: Mapping[str, str | int], optional: Collection[str],
                 convert: Mapping[str, Callable[[str], object]]) -> dict:
    try:
        item = json.loads(raw)
    except json.JSONDecodeError as error:
        raise ValueError(f"{_where(path, line)}: not valid JSON ({error.msg}); a .jsonl file holds one JSON object a "
                         "line") from None
    if not isinstance(item, dict):
        raise ValueError(f"{_where(path, line)}: expected a JSON object {{...}}, got {type(item).__name__}")
    record = {}
    for role, field_name in columns.items():
        if field_name not in item:
            if role in optional:
                record[role] = ""
                continue
            raise ValueError(f"{_where(path, line)}: no field {field_name!r} (fields: {', '.join(item)}); "
                             f"pass {role}=<field>")
        value = item[field_name]
        if isinstance(value, (dict, list)) or value is None:
            raise ValueError(f"{_where(path, line)}: field {field_name!r} ({role}) is {json.dumps(value)[:40]}, "
                             "not a text or a number")
        record[role] = _convert(path, line, role, field_name, json_text(value), convert)
    return record


def json_text(value) -> str:
    """A JSON value as the text a table cell would hold. JSON has one kind of number, so ``1`` and ``1.0``
    are one label: both read ``"1"`` (as ``str``, a file writing labels 1.0 and one writing 1 shared no class)."""
    if isinstance(value, str):
        return value
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _convert(path, line: int, role: str, column, value: str, convert: Mapping[str, Callable[[str], object]]):
    if role not in convert:
        return value
    try:
        return convert[role](value)
    except ValueError:
        kinds = {int: "a whole number", finite_float: "a finite number",
                 label_text: "a label: it is empty, and every text needs one (fill it in or remove the row)"}
        kind = kinds.get(convert[role], "a number")
        raise ValueError(f"{_where(path, line)}: {role} {value!r} (column {column!r}) is not {kind}") from None


#: the roles of an STS file (:func:`read_pairs`), and their columns in the built-in files
PAIR_COLUMNS = {"sentence1": "sentence1", "sentence2": "sentence2", "score": "score"}
STSB_COLUMNS = {"sentence1": 5, "sentence2": 6, "score": 4}
SICK_COLUMNS = {"sentence1": "sentence_A", "sentence2": "sentence_B", "score": "relatedness_score"}


def read_pairs(path, columns: Mapping[str, str | int] | None = None, limit: int | None = None, seed: int = 0, *,
               delimiter: str | None = None, header: bool = True, quoting: int | None = None
               ) -> list[tuple[str, str, float]]:
    """(sentence1, sentence2, score) rows of an STS table or JSONL file (:func:`read_records`);
    ``columns`` renames the roles ``sentence1``, ``sentence2``, ``score`` (default: those names).
    ``limit`` keeps a seeded random subset (:func:`seeded_subset`)."""
    columns = {**PAIR_COLUMNS, **(columns or {})}
    records = read_records(path, columns, delimiter=delimiter, header=header, quoting=quoting,
                           convert={"score": finite_float})
    return seeded_subset([(r["sentence1"], r["sentence2"], r["score"]) for r in records], limit, seed)


def read_stsb(path, limit: int | None = None, seed: int = 0) -> list[tuple[str, str, float]]:
    """STS Benchmark TSV: genre, file, year, id, score, sentence1, sentence2 (extra columns ignored).
    ``limit`` keeps a seeded random subset (the file is sorted by genre)."""
    return read_pairs(path, STSB_COLUMNS, limit, seed, delimiter="\t", header=False, quoting=csv.QUOTE_NONE)


def read_sick(path, limit: int | None = None, seed: int = 0) -> list[tuple[str, str, float]]:
    """SICK TSV with sentence_A, sentence_B and relatedness_score; ``limit`` keeps a seeded random subset."""
    return read_pairs(path, SICK_COLUMNS, limit, seed, delimiter="\t")


class STSTask(EvaluationTask):
    """Spearman correlation (x100) of cosine similarity with the gold score."""

    category = "sts"

    def __init__(self, name: str, path, format: str = "stsb", limit: int | None = None,
                 prompt_name: str | None = None, *, columns: Mapping[str, str] | None = None,
                 delimiter: str | None = None):
        """``format``: ``"stsb"`` or ``"sick"`` (the built-in files), or ``"table"``: a CSV/TSV with a
        header or a JSONL file of your own, whose ``columns`` map ``sentence1``, ``sentence2`` and
        ``score`` to its column names (default: those names) and whose ``delimiter`` comes from the
        suffix unless given."""
        readers = {"stsb": read_stsb, "sick": read_sick,
                   "table": lambda path, limit: read_pairs(path, columns, limit, delimiter=delimiter)}
        if format not in readers:
            raise ValueError(f"format must be one of {sorted(readers)}, got {format!r}")
        if format != "table" and (columns or delimiter):
            raise ValueError(f"columns and delimiter are for format='table' (your own files), not {format!r}")
        self.name, self.prompt_name = name, prompt_name
        self.pairs = readers[format](path, limit)
        if not self.pairs:
            raise ValueError(f"{path} holds no pairs")
        self.check_sample()

    def check_sample(self) -> None:
        n = len(self.pairs)
        if n < MIN_STS_PAIRS:
            self.refuse(f"{n} pair(s): a Spearman correlation needs at least {MIN_STS_PAIRS} (with 2 it can only be "
                        "+1 or -1); raise the limit")
        if len({p[2] for p in self.pairs}) < 2:
            self.refuse(f"all {n} gold scores are equal: no correlation is defined; raise the limit or check the file")
        if n < NOISY_STS_PAIRS:
            self.warn_small(f"only {n} pairs: even with no real correlation, Spearman x100 over {n} pairs scatters by "
                            f"+-{100 / math.sqrt(n - 1):.0f} (one standard deviation); use {NOISY_STS_PAIRS}+ pairs "
                            "for a score worth reading")

    def embed(self, model, batch_size: int = 32, show_progress_bar: bool = False) -> dict[str, np.ndarray]:
        encode = lambda texts: model.encode(texts, prompt_name=self.prompt_name, batch_size=batch_size,
                                            show_progress_bar=show_progress_bar)
        return {"first": encode([p[0] for p in self.pairs]), "second": encode([p[1] for p in self.pairs])}

    def score(self, embeddings: dict[str, np.ndarray]) -> TaskResult:
        spearmanr = require("scipy.stats").spearmanr
        cosine = cosine_pairs(embeddings["first"], embeddings["second"])
        gold = [p[2] for p in self.pairs]
        spearman = 100 * float(spearmanr(cosine, gold).statistic)
        return TaskResult(self.name, self.category, "spearman", spearman, {"spearman": spearman},
                          {"cosine": cosine.tolist(), "gold": gold}, list(self.warnings))


def cosine_pairs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return np.sum(a * b, axis=1)


def ndcg_at_k(ranked: list[str], relevant: dict[str, int], k: int = 10) -> float:
    """nDCG@k with graded relevance (gain = relevance, log2 discount), as BEIR/pytrec_eval compute it:
    a grade of 0 or below gains nothing (Touché-2020's qrels grade some documents -2; as negative gains
    they made the ideal DCG negative and nDCG 0, or halved it)."""
    dcg = sum(max(relevant.get(doc, 0), 0) / math.log2(rank + 2) for rank, doc in enumerate(ranked[:k]))
    ideal = sorted((gain for gain in relevant.values() if gain > 0), reverse=True)[:k]
    idcg = sum(gain / math.log2(rank + 2) for rank, gain in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def recall_at_k(ranked: list[str], relevant: dict[str, int], k: int = 100) -> float:
    positives = {doc for doc, score in relevant.items() if score > 0}
    return len(positives & set(ranked[:k])) / len(positives) if positives else 0.0


#: the roles of a retrieval task's files and their BEIR names: corpus (doc_id, title, text), queries
#: (query_id, query), qrels (qrels_query_id, qrels_doc_id, qrels_score)
RETRIEVAL_COLUMNS = {"doc_id": "_id", "title": "title", "text": "text", "query_id": "_id", "query": "text",
                     "qrels_query_id": "query-id", "qrels_doc_id": "corpus-id", "qrels_score": "score"}


class RetrievalTask(EvaluationTask):
    """BEIR layout: nDCG@10 (main, x100) and recall@100 over the queries in the qrels, exact cosine
    top-k over the whole corpus, computed in blocks of queries."""

    category = "retrieval"

    def __init__(self, name: str, corpus_path, queries_path, qrels_path, limit_queries: int | None = None,
                 corpus_limit: int | None = None, query_prompt_name: str | None | _SidePrompt = SIDE_PROMPT,
                 document_prompt_name: str | None | _SidePrompt = SIDE_PROMPT, *,
                 columns: Mapping[str, str] | None = None, delimiter: str | None = None):
        """``query_prompt_name`` / ``document_prompt_name``: a prompt of the model, ``None`` for no
        prompt, or :data:`SIDE_PROMPT` (default): the model's ``query`` / ``document`` prompt when it has
        one, else none. ``columns`` renames the roles of the three files (:data:`RETRIEVAL_COLUMNS`, default: the
        BEIR names); each file is a table or JSONL by its suffix, a table's ``delimiter`` from the
        suffix unless given (the qrels, named ``.tsv`` in BEIR, are read as TSV whatever their name
        when neither is given)."""
        self.name = name
        self.query_prompt_name, self.document_prompt_name = query_prompt_name, document_prompt_name
        roles = {**RETRIEVAL_COLUMNS, **(columns or {})}
        pick = lambda keys: {key: roles[key] for key in keys}
        qrels_delimiter = delimiter if delimiter is not None or Path(qrels_path).suffix.lower() in (
            *SUFFIX_DELIMITERS, *JSONL_SUFFIXES) else "\t"
        self.qrels: dict[str, dict[str, int]] = {}
        qrels = read_records(qrels_path, pick(("qrels_query_id", "qrels_doc_id", "qrels_score")),
                             delimiter=qrels_delimiter, convert={"qrels_score": int})
        refuse_duplicate_ids([f"{row['qrels_query_id']} -> {row['qrels_doc_id']}" for row in qrels], qrels_path,
                             "judgement (query -> document)")
        for row in qrels:
            self.qrels.setdefault(row["qrels_query_id"], {})[row["qrels_doc_id"]] = row["qrels_score"]
        query_rows = read_records(queries_path, pick(("query_id", "query")), delimiter=delimiter)
        refuse_duplicate_ids([row["query_id"] for row in query_rows], queries_path, "query")
        queries = {row["query_id"]: row["query"] for row in query_rows if row["query_id"] in self.qrels}
        self.query_ids = seeded_subset(sorted(queries), limit_queries)
        self.queries = [queries[q] for q in self.query_ids]
        self.corpus_ids, self.documents = [], []
        needed = {doc for q in self.query_ids for doc in self.qrels[q]}
        corpus = read_records(corpus_path, pick(("doc_id", "title", "text")), delimiter=delimiter, optional=("title",))
        refuse_duplicate_ids([item["doc_id"] for item in corpus], corpus_path, "document")
        for item in corpus:
            if corpus_limit is not None and len(self.corpus_ids) >= corpus_limit and item["doc_id"] not in needed:
                continue
            self.corpus_ids.append(item["doc_id"])
            self.documents.append((item["title"] + " " + item["text"]).strip())
        if not self.query_ids:
            raise ValueError(f"no query of {queries_path} appears in {qrels_path}")
        self.check_sample()

    def check_sample(self) -> None:
        in_corpus = set(self.corpus_ids)
        lost = [q for q in self.query_ids
                if not any(score > 0 and doc in in_corpus for doc, score in self.qrels[q].items())]
        n = len(self.query_ids)
        if len(lost) == n:
            self.refuse(f"none of the {n} queries has a relevant document (qrels score > 0) in the corpus of "
                        f"{len(self.corpus_ids)}: nDCG@10 and recall@100 would be 0 whatever the model; check that "
                        "the qrels' corpus-id values are corpus.jsonl _id values")
        if lost:
            self.warn_small(f"{len(lost)} of {n} queries have no relevant document in the corpus (e.g. {lost[0]!r}): "
                            "they score 0 whatever the model and pull the mean down")
        if n < NOISY_QUERIES:
            self.warn_small(f"only {n} queries: per-query nDCG@10 ranges 0-100, so the mean has a standard error "
                            f"of up "
                            f"to {50 / math.sqrt(n):.0f} points; use {NOISY_QUERIES}+ queries")
        if len(self.corpus_ids) <= 100:
            self.warn_small(f"the corpus holds only {len(self.corpus_ids)} documents: recall@100 is 100 for any model "
                            "(nDCG@10 still ranks them)")

    def prompt_names(self) -> dict[str, str]:
        sides = {"query_prompt": self.query_prompt_name, "document_prompt": self.document_prompt_name}
        return {option: name for option, name in sides.items() if isinstance(name, str)}

    def side_prompts(self, model) -> tuple[str | None, str | None]:
        """The (query, document) prompt names to encode with: :data:`SIDE_PROMPT` resolved against the
        model's prompts, a name or ``None`` as given."""
        prompts = model_prompts(model)
        resolve = lambda name, side: side_prompt_name(prompts, side) if name is SIDE_PROMPT else name
        return resolve(self.query_prompt_name, "query"), resolve(self.document_prompt_name, "document")

    def embed(self, model, batch_size: int = 32, show_progress_bar: bool = False) -> dict[str, np.ndarray]:
        query_prompt, document_prompt = self.side_prompts(model)
        # prompt="" with no prompt name: no prompt at all, not the model's default_prompt_name
        side = lambda name: {"prompt_name": name} if name is not None else {"prompt": ""}
        return {
            "corpus": model.encode(self.documents, **side(document_prompt), batch_size=batch_size,
                                   show_progress_bar=show_progress_bar),
            "queries": model.encode(self.queries, **side(query_prompt), batch_size=batch_size,
                                    show_progress_bar=show_progress_bar),
        }

    def score(self, embeddings: dict[str, np.ndarray], top_k: int = 100) -> TaskResult:
        corpus = torch.from_numpy(np.asarray(embeddings["corpus"], dtype=np.float32))
        queries = torch.from_numpy(np.asarray(embeddings["queries"], dtype=np.float32))
        corpus = torch.nn.functional.normalize(corpus, dim=-1)
        queries = torch.nn.functional.normalize(queries, dim=-1)
        ndcg, recall = [], []
        k = min(top_k, len(self.corpus_ids))
        # pytrec_eval's (trec_eval's) ranking: score descending, a tie by document id descending. topk
        # orders exact ties (the same text under two ids) arbitrarily, so a duplicate of the relevant
        # document could rank above it in about half the queries
        order = sorted(range(len(self.corpus_ids)), key=self.corpus_ids.__getitem__, reverse=True)
        corpus, corpus_ids = corpus[order], [self.corpus_ids[i] for i in order]
        for start in range(0, len(self.query_ids), 256):
            scores = queries[start:start + 256] @ corpus.T
            top = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]
            for offset, row in enumerate(top.tolist()):
                ranked = [corpus_ids[i] for i in row]
                relevant = self.qrels[self.query_ids[start + offset]]
                ndcg.append(ndcg_at_k(ranked, relevant, 10))
                recall.append(recall_at_k(ranked, relevant, 100))
        scores = {"ndcg_at_10": 100 * float(np.mean(ndcg)), "recall_at_100": 100 * float(np.mean(recall))}
        return TaskResult(self.name, self.category, "ndcg_at_10", scores["ndcg_at_10"], scores,
                          {"query_ids": self.query_ids, "ndcg_at_10": ndcg, "recall_at_100": recall},
                          list(self.warnings))


#: the roles of a labelled file (classification, one-file clustering) and Banking77's columns
LABELLED_COLUMNS = {"text": "text", "label": "category"}


def read_labelled_csv(path, limit: int | None = None, seed: int = 0, all_labels: set | None = None, *,
                      columns: Mapping[str, str] | None = None, delimiter: str | None = None
                      ) -> tuple[list[str], list[str]]:
    """Texts and labels of a table or JSONL file (:func:`read_records`): by default Banking77's CSV
    text,category; ``columns`` renames the roles ``text`` and ``label``. ``limit`` keeps a seeded
    random subset (the files are sorted by label); ``all_labels``, if given, receives the labels of
    the whole file."""
    records = read_records(path, {**LABELLED_COLUMNS, **(columns or {})}, delimiter=delimiter,
                           convert={"label": label_text})
    rows = [(row["text"], row["label"]) for row in records]
    if all_labels is not None:
        all_labels.update(label for _, label in rows)
    rows = seeded_subset(rows, limit, seed)
    return [text for text, _ in rows], [label for _, label in rows]


class ClassificationTask(EvaluationTask):
    """Accuracy (x100) of a logistic-regression classifier trained on frozen train embeddings."""

    category = "classification"

    def __init__(self, name: str, train_path, test_path, limit_train: int | None = None, limit_test: int | None = None,
                 prompt_name: str | None = None, seed: int = 0, *, columns: Mapping[str, str] | None = None,
                 delimiter: str | None = None):
        """``columns`` and ``delimiter``: see :func:`read_labelled_csv` (default: Banking77's CSV)."""
        self.name, self.prompt_name, self.seed = name, prompt_name, seed
        classes: set[str] = set()
        read = lambda path, limit: read_labelled_csv(path, limit, seed, classes, columns=columns, delimiter=delimiter)
        self.train_texts, self.train_labels = read(train_path, limit_train)
        self.test_texts, self.test_labels = read(test_path, limit_test)
        self.n_classes = len(classes)  # over both whole files, before any limit
        if not self.train_texts or not self.test_texts:
            raise ValueError(f"{train_path if not self.train_texts else test_path} holds no rows")
        # the advice in refusals: raise the limit only where a limit cut the training rows
        cut = limit_train is not None and len(self.train_texts) >= limit_train
        self.train_fix = "raise the training limit" if cut else f"add rows to {train_path} (no limit cut them)"
        self.check_sample()

    def check_sample(self) -> None:
        n_train, n_test, classes = len(self.train_texts), len(self.test_texts), self.n_classes
        trained = set(self.train_labels)
        if len(trained) < 2:
            self.refuse(f"{n_train} training row(s) of {len(trained)} class: a classifier needs at least 2 classes; "
                        f"{self.train_fix}")
        if n_train < classes:
            self.refuse(f"{n_train} training rows for {classes} classes: at least {classes - n_train} classes cannot "
                        f"have a training example, so their test items are wrong by construction; {self.train_fix} "
                        f"(at least {classes}, better {MIN_ROWS_PER_CLASS * classes})")
        unseen = [label for label in self.test_labels if label not in trained]
        if len(unseen) == n_test:
            self.refuse(f"none of the {n_test} test items has a class seen in the {n_train} training rows: accuracy "
                        f"would be 0 whatever the model; {self.train_fix}")
        if unseen:
            n_unseen = len(set(unseen))
            self.warn_small(f"{len(unseen)} of {n_test} test items ({n_unseen} class{'es' if n_unseen > 1 else ''}) "
                            "have no training example: they are wrong whatever the model, so accuracy cannot exceed "
                            f"{100 * (1 - len(unseen) / n_test):.1f}")
        if n_train < MIN_ROWS_PER_CLASS * classes:
            self.warn_small(f"only {n_train / classes:.1f} training rows per class ({n_train} rows, {classes} "
                            f"classes): a few-shot classifier; use {MIN_ROWS_PER_CLASS}+ per class")
        if n_test < NOISY_TEST_ITEMS:
            self.warn_small(f"only {n_test} test items: accuracy has a standard error of up to "
                            f"{50 / math.sqrt(n_test):.0f} points; use {NOISY_TEST_ITEMS}+")

    def embed(self, model, batch_size: int = 32, show_progress_bar: bool = False) -> dict[str, np.ndarray]:
        encode = lambda texts: model.encode(texts, prompt_name=self.prompt_name, batch_size=batch_size,
                                            show_progress_bar=show_progress_bar)
        return {"train": encode(self.train_texts), "test": encode(self.test_texts)}

    def score(self, embeddings: dict[str, np.ndarray]) -> TaskResult:
        linear_model = require("sklearn.linear_model")
        classifier = linear_model.LogisticRegression(max_iter=1000, random_state=self.seed)
        classifier.fit(embeddings["train"], self.train_labels)
        predicted = classifier.predict(embeddings["test"])
        correct = [bool(p == g) for p, g in zip(predicted, self.test_labels)]
        accuracy = 100 * float(np.mean(correct))
        return TaskResult(self.name, self.category, "accuracy", accuracy, {"accuracy": accuracy},
                          {"correct": correct, "predicted": [str(p) for p in predicted],
                           "gold": list(self.test_labels)}, list(self.warnings))


class ClusteringTask(EvaluationTask):
    """V-measure (x100) of k-means on the embeddings against the gold labels; k defaults to the
    number of distinct gold labels (20 on the full StackOverflow set)."""

    category = "clustering"

    def __init__(self, name: str, texts_path, labels_path=None, n_clusters: int | None = None,
                 limit: int | None = None, prompt_name: str | None = None, seed: int = 0, *,
                 columns: Mapping[str, str] | None = None, delimiter: str | None = None):
        """Two files, one text a line and its label on the same line of ``labels_path`` (the
        built-in StackOverflow layout), or, with ``labels_path=None``, one table or JSONL file of
        texts and labels read as :func:`read_labelled_csv` reads it (``columns``: ``text`` and
        ``label``, default Banking77's text,category)."""
        self.name, self.prompt_name, self.seed = name, prompt_name, seed
        if labels_path is None:
            texts, labels = read_labelled_csv(texts_path, columns=columns, delimiter=delimiter)
        else:
            if columns or delimiter:
                raise ValueError("columns and delimiter are for one table of texts and labels (labels_path=None), "
                                 "not for two files of one text and one label a line")
            texts, labels = read_lines(texts_path), read_lines(labels_path)
            if len(texts) != len(labels):
                raise ValueError(f"{texts_path} and {labels_path} have {len(texts)} vs {len(labels)} lines; line i of "
                                 "one is the label of line i of the other")
            blank = next((i for i, label in enumerate(labels, 1) if not label.strip()), None)
            if blank is not None:
                raise ValueError(f"{_where(labels_path, blank)}: an empty label (for {texts_path} line {blank}); "
                                 "every text needs its label on the same line")
        rows = seeded_subset(list(zip(texts, labels)), limit, seed)
        self.texts, self.labels = [t for t, _ in rows], [label for _, label in rows]
        self.n_clusters = n_clusters or len(set(self.labels))
        self.limited = limit is not None and limit < len(texts)  # the advice: raise the limit only where it cut
        self.clusters_given = n_clusters is not None
        self.check_sample(n_clusters or len(set(labels)))

    def check_sample(self, full_k: int) -> None:
        """``full_k``: the cluster count on the whole file (what a larger limit tends to), for the advice."""
        n, k, n_gold = len(self.texts), self.n_clusters, len(set(self.labels))
        more_texts = (f"raise the limit (at least {MIN_TEXTS_PER_CLUSTER * full_k} texts)" if self.limited else
                      "give more texts (no limit cut them)")
        fewer_clusters = f"ask for fewer clusters (clusters=, now {k})" if self.clusters_given else None
        if n_gold < 2 or k < 2:
            fix = more_texts if n_gold < 2 else "ask for at least 2 clusters (clusters=)"
            self.refuse(f"{n} texts with {n_gold} gold label(s) into {k} cluster(s): V-measure needs at least 2 of "
                        f"each; {fix}")
        if k >= n:
            self.refuse(f"{k} clusters for {n} texts: k-means cannot make more clusters than texts, and with as many "
                        "each text is its own cluster and the score depends on the labels only; "
                        f"{' or '.join(filter(None, (fewer_clusters, more_texts)))}")
        self.chance_v_measure = chance_v_measure(self.labels, k, self.seed)
        per_cluster = (f"{MIN_TEXTS_PER_CLUSTER} texts per cluster bring it under about "
                       f"{NOISY_CHANCE_V_MEASURE:.0f}")
        if self.limited:
            advice = f"raise the limit to {MIN_TEXTS_PER_CLUSTER * full_k}+ texts ({per_cluster})"
        else:
            advice = f"{fewer_clusters + ' or ' if fewer_clusters else ''}give more texts ({per_cluster})"
        if self.chance_v_measure >= REFUSED_CHANCE_V_MEASURE:
            self.refuse(f"a random assignment of these {n} texts to {k} clusters already scores a V-measure of "
                        f"{self.chance_v_measure:.1f} (it rises as clusters get as many as texts): a score here would "
                        f"measure the subset size, not the embeddings; {advice}")
        if self.chance_v_measure >= NOISY_CHANCE_V_MEASURE:
            self.warn_small(f"a random assignment of these {n} texts to {k} clusters already scores a V-measure of "
                            f"{self.chance_v_measure:.1f}: read the score against that, not against 0; {advice}")

    def embed(self, model, batch_size: int = 32, show_progress_bar: bool = False) -> dict[str, np.ndarray]:
        return {"texts": model.encode(self.texts, prompt_name=self.prompt_name, batch_size=batch_size,
                                      show_progress_bar=show_progress_bar)}

    def score(self, embeddings: dict[str, np.ndarray]) -> TaskResult:
        cluster, metrics = require("sklearn.cluster"), require("sklearn.metrics")
        assigned = cluster.KMeans(n_clusters=self.n_clusters, n_init=10, random_state=self.seed).fit_predict(
            embeddings["texts"])
        v_measure = 100 * float(metrics.v_measure_score(self.labels, assigned))
        scores = {"v_measure": v_measure, "v_measure_chance": self.chance_v_measure}
        return TaskResult(self.name, self.category, "v_measure", v_measure, scores,
                          {"cluster": assigned.tolist(), "gold": list(self.labels)}, list(self.warnings))


def chance_v_measure(labels: list, n_clusters: int, seed: int = 0, repeats: int = 10) -> float:
    """V-measure (x100) of a random assignment of the texts to ``n_clusters`` clusters of equal size
    (mean of ``repeats`` seeded shuffles): what a clustering unrelated to the texts scores on these
    labels. Near 0 when there are many texts per cluster; near 100 when clusters are as many as texts."""
    v_measure_score = require("sklearn.metrics").v_measure_score
    rng = np.random.default_rng(seed)
    base = np.arange(len(labels)) % n_clusters
    return 100 * float(np.mean([v_measure_score(labels, rng.permutation(base)) for _ in range(repeats)]))


#: keys of a per-task ``limit`` mapping: each task's items, plus the SciFact corpus (documents beyond
#: the relevant ones) and the Banking77 training set
LIMIT_KEYS = ("stsb", "sick", "scifact", "scifact_corpus", "banking77", "banking77_train", "stackoverflow")


def task_limits(limit: int | Mapping[str, int] | None) -> dict[str, int | None]:
    """One cap per :data:`LIMIT_KEYS` entry. An int caps every task's items (the SciFact corpus and
    the Banking77 training set at ten times it); a mapping caps only the keys it names."""
    if limit is None or isinstance(limit, int):
        scaled = None if limit is None else 10 * limit
        return {key: scaled if key in ("scifact_corpus", "banking77_train") else limit for key in LIMIT_KEYS}
    unknown = sorted(set(limit) - set(LIMIT_KEYS))
    if unknown:
        raise ValueError(f"unknown task limit keys {unknown}; choose from {list(LIMIT_KEYS)}")
    return {key: limit.get(key) for key in LIMIT_KEYS}


def parse_task_limit(values: list[str] | None) -> int | dict[str, int] | None:
    """Command-line form of a limit: ``500`` (every task), ``stsb=500 scifact_corpus=1000 ...`` (only
    the keys named), or both: ``20 stackoverflow=1000`` (every task at 20, as one number does, except
    the keys named)."""
    if not values:
        return None
    numbers = [value for value in values if "=" not in value]
    if len(values) == 1 and numbers:
        return _limit_number(values[0], values[0])
    if len(numbers) > 1:
        _bad_limit(" ".join(numbers))
    limits = {}
    for value in values:
        if value in numbers:
            continue
        key, _, number = value.partition("=")
        limits[key] = _limit_number(number, value)
    task_limits(limits)  # names unknown keys now rather than after a model is loaded
    if numbers:
        limits = {**task_limits(_limit_number(numbers[0], numbers[0])), **limits}
    return limits


def _limit_number(number: str, value: str) -> int:
    """A limit's number: a whole number of at least 1. ``0`` would leave a task no items, and the
    error would then blame the data file."""
    if not number.isdigit():
        _bad_limit(value)
    if int(number) < 1:
        raise ValueError(f"task limit {value!r}: a limit must be at least 1 item; leave the task (or the key) out "
                         "for its whole test set")
    return int(number)


def _bad_limit(value: str):
    raise ValueError(f"task limit {value!r}: write one number, key=number pairs with keys {list(LIMIT_KEYS)}, or "
                     "one number followed by key=number pairs (e.g. 20 stackoverflow=1000)")


#: what each built-in task reads under the data folder, and the public data set it comes from
TASK_FILES = {
    "stsb": (["stsb/sts-test.csv"], "STS Benchmark (STS-B) test split"),
    "sick": (["sick/SICK_test_annotated.txt"], "SICK (SemEval-2014 task 1) test split"),
    "scifact": (["scifact/corpus.jsonl", "scifact/queries.jsonl", "scifact/qrels/test.tsv"],
                "SciFact in the BEIR layout"),
    "banking77": (["banking77/train.csv", "banking77/test.csv"], "Banking77 (PolyAI)"),
    "stackoverflow": (["clustering_stackoverflow/StackOverflow.txt", "clustering_stackoverflow/StackOverflow_gnd.txt"],
                      "StackOverflow short-text clustering (jacoxu/STC2)"),
}

#: the ``limit`` key that sets each task's item count (named in refusals so that the fix is plain)
TASK_LIMIT_KEY = {"stsb": ("stsb", 100), "sick": ("sick", 100), "scifact": ("scifact", 50),
                  "banking77": ("banking77_train", 400), "stackoverflow": ("stackoverflow", 1000)}


def check_task_files(data_dir, names: list[str]) -> None:
    """Every file the named tasks read exists under ``data_dir``; otherwise one error listing the
    missing ones by absolute path (nothing is downloaded: see docs/evaluation.md for the sources)."""
    data = Path(data_dir)
    if not data.is_dir():
        raise FileNotFoundError(f"data folder {data_dir} not found (looked at {data.resolve()}); pass the folder that "
                                "holds stsb/, sick/, scifact/, banking77/ and clustering_stackoverflow/ (see "
                                "docs/evaluation.md: nothing is downloaded)")
    missing = [f"{name}: {(data / file).resolve()}" for name in names for file in TASK_FILES[name][0]
               if not (data / file).is_file()]
    if missing:
        raise FileNotFoundError(f"missing task files under {data.resolve()}: {'; '.join(missing)}. Each task reads "
                                "its files at fixed paths there (see docs/evaluation.md, 'The data folder'); nothing "
                                "is downloaded")


def default_tasks(data_dir, names: list[str] | None = None, limit: int | Mapping[str, int] | None = None) -> list:
    """The shared data sets as tasks. ``limit`` (see :func:`task_limits`) keeps seeded random subsets
    for quick or CPU-sized runs; a subset too small for its metric raises :class:`SampleTooSmallError`
    naming the limit key to raise (see the module docstring). A name listed twice is refused: its
    results would clash in the report, and the fix is to list it once, not to rename it."""
    twice = sorted({name for name in names or () if list(names).count(name) > 1})
    if twice:
        raise ValueError(f"--tasks lists {', '.join(twice)} more than once; name each task once")
    data = Path(data_dir)
    caps = task_limits(limit)
    factories = {
        "stsb": lambda: STSTask("STS-B", data / "stsb" / "sts-test.csv", "stsb", caps["stsb"]),
        "sick": lambda: STSTask("SICK-R", data / "sick" / "SICK_test_annotated.txt", "sick", caps["sick"]),
        "scifact": lambda: RetrievalTask("SciFact", data / "scifact" / "corpus.jsonl",
                                         data / "scifact" / "queries.jsonl",
                                         data / "scifact" / "qrels" / "test.tsv", limit_queries=caps["scifact"],
                                         corpus_limit=caps["scifact_corpus"]),
        "banking77": lambda: ClassificationTask("Banking77", data / "banking77" / "train.csv",
                                                data / "banking77" / "test.csv", limit_train=caps["banking77_train"],
                                                limit_test=caps["banking77"]),
        "stackoverflow": lambda: ClusteringTask("StackOverflow",
                                                data / "clustering_stackoverflow" / "StackOverflow.txt",
                                                data / "clustering_stackoverflow" / "StackOverflow_gnd.txt", None,
                                                caps["stackoverflow"]),
    }
    names = names or list(factories)
    unknown = [n for n in names if n not in factories]
    if unknown:
        raise ValueError(f"unknown tasks {unknown}; choose from {sorted(factories)}")
    check_task_files(data, names)
    tasks = []
    for name in names:
        try:
            tasks.append(factories[name]())
        except SampleTooSmallError as error:
            key, example = TASK_LIMIT_KEY[name]
            raise SampleTooSmallError(f"{error} (raise it with the limit key {key!r}, e.g. on the command line "
                                      f"--limit 20 {key}={example}, or leave {name} out of the tasks)") from None
    return tasks
