"""Tasks on your own files from the command line: ``--task KIND:FILE[,FILE...] [key=value ...]``.

    llm-embed-evaluate my-model --task sts:pairs.csv sentence1=question sentence2=answer score=label \\
        --task classification:train.tsv,test.tsv text=body label=intent name=Intents

A spec names the kind of task, its files (comma-separated, in the order of :data:`KINDS`) and then,
as separate ``key=value`` words (the form of ``--limit 20 stackoverflow=1000``), the column or JSON
field of each role, the delimiter, a name for the report and a few per-task settings. Tokens stay
words of the shell, so no quoting is needed unless a value holds a space or a ``;``. A spec only
describes the task: :meth:`TaskSpec.build` turns it into the same task classes as Python code
builds (:mod:`.tasks`), whose files are read by the same reader as the built-in tasks' files
(:func:`~.tasks.read_records`), so own and built-in tasks mix in one run, one report and the
study's significance tests. A spec is a frozen dataclass of strings: it pickles into the study's
scoring processes, which rebuild the tasks from it.

Errors: a malformed spec (unknown kind or key, wrong number of files, a bad value) raises
:class:`TaskSpecError` (the commands turn it into a usage error, exit status 2); a missing file or
a bad row is found when the task is built, before any model loads (exit status 1, one line naming
the file, the line and the fix).
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .tasks import (
    RETRIEVAL_COLUMNS,
    SIDE_PROMPT,
    ClassificationTask,
    ClusteringTask,
    EvaluationTask,
    RetrievalTask,
    STSTask,
)

__all__ = ["KINDS", "TASK_SPEC_HELP", "TaskSpec", "TaskSpecError", "build_tasks", "check_unique_names",
           "parse_task_spec", "parse_task_specs", "task_spec_help"]


class TaskSpecError(ValueError):
    """A ``--task`` spec that cannot describe a task: a usage error, named with its fix."""


@dataclass(frozen=True)
class Kind:
    """What a ``--task`` kind takes: its files (one tuple of file roles per accepted count), the
    roles of its columns with their default names, and its other keys (key -> help)."""

    files: tuple[tuple[str, ...], ...]
    columns: dict[str, str]
    settings: dict[str, str]
    example: str

    def keys(self) -> list[str]:
        return [*self.columns, "delimiter", "name", *self.settings]


_SYMMETRIC = {"limit": "seeded random subset of N items", "prompt": "prompt name for every text (default: none)"}

#: every kind of ``--task``; column defaults are the common names (STS-B's, BEIR's, text/label)
KINDS: dict[str, Kind] = {
    "sts": Kind(files=(("PAIRS",),), columns={"sentence1": "sentence1", "sentence2": "sentence2", "score": "score"},
                settings=dict(_SYMMETRIC), example="sts:pairs.csv sentence1=question sentence2=answer score=label"),
    "classification": Kind(files=(("TRAIN", "TEST"),), columns={"text": "text", "label": "label"},
                           settings={**_SYMMETRIC, "limit": "seeded random subset of N test items",
                                     "train_limit": "seeded random subset of N training rows"},
                           example="classification:train.csv,test.csv label=intent"),
    "retrieval": Kind(files=(("CORPUS", "QUERIES", "QRELS"),), columns=dict(RETRIEVAL_COLUMNS),
                      settings={"limit": "seeded random subset of N queries",
                                "corpus_limit": "the first N documents of the corpus file, then only those "
                                                "relevant to a kept query",
                                "query_prompt": "prompt name of the queries (default: the model's query prompt, or "
                                                "none if it has none; none for no prompt)",
                                "document_prompt": "prompt name of the documents (default: the model's document "
                                                   "prompt, or none if it has none; none for no prompt)"},
                      example="retrieval:corpus.jsonl,queries.jsonl,qrels.tsv"),
    "clustering": Kind(files=(("TEXTS",), ("TEXTS", "LABELS")), columns={"text": "text", "label": "label"},
                       settings={**_SYMMETRIC, "clusters": "k of k-means (default: the number of labels)"},
                       example="clustering:titles.csv label=topic"),
}

#: delimiter names that need no quoting in a shell
DELIMITER_NAMES = {"tab": "\t", "\\t": "\t", "comma": ",", "semicolon": ";", "pipe": "|", "space": " "}
_INTEGER_KEYS = ("limit", "train_limit", "corpus_limit", "clusters")


_TASK_SPEC_HELP = """\
Your own data: --task KIND:FILE[,FILE...] [key=value ...] (repeatable; mixes with --tasks in one
report). Files are CSV (.csv), TSV (.tsv) with a header row, or JSONL (.jsonl, one object a line),
read by the same reader as the built-in tasks; paths are relative to the current folder. The
key=value words after the files rename columns (JSON fields) and set the rest:

  sts:PAIRS                  sentence1= sentence2= score=   (defaults: those names)
  classification:TRAIN,TEST  text= label=                   (defaults: text, label)
  retrieval:CORPUS,QUERIES,QRELS
                             doc_id= title= text= (corpus; defaults _id, title, text; no title column: no title)
                             query_id= query= (queries; defaults _id, text)
                             qrels_query_id= qrels_doc_id= qrels_score= (defaults query-id, corpus-id, score)
  clustering:TEXTS           text= label=                   (or TEXTS,LABELS: one text / one label a line)

  every kind: name=REPORT_NAME (default: the file's name without suffix; for classification and
  retrieval, the folder of the files), delimiter=CHAR (or tab, comma, semicolon, pipe; default:
  from the suffix), limit=N (seeded random subset; {limit_option} applies to the built-in tasks only);
  sts, classification, clustering: prompt=NAME; classification: train_limit=N; retrieval:
  corpus_limit=N, query_prompt=NAME, document_prompt=NAME (none: no prompt); clustering: clusters=K.

Example{example}
A bad file stops the run before the model loads, naming file:line and the key to pass, e.g.
  pairs.csv:1: no column 'score' (columns: q, d, label); pass score=<column>
A worked example that writes its own small files: examples/evaluate_own_data.py.
"""


def task_spec_help(example: str, limit_option: str = "--limit") -> str:
    """The ``--task`` syntax for a command's ``--help``; ``example``: the part from ``Example`` on
    (``:`` and the indented command lines) and ``limit_option``: the built-in tasks' limit, both in
    the command's own options (one shared text with a word replaced went wrong for the study)."""
    return _TASK_SPEC_HELP.format(example=example, limit_option=limit_option)


#: ``llm-embed-evaluate``'s ``--task`` help (``llm-embed-study`` passes its own example to :func:`task_spec_help`)
TASK_SPEC_HELP = task_spec_help(""" (put the model before --task):
  llm-embed-evaluate my-model --task sts:pairs.csv sentence1=q sentence2=d score=label name=Mine \\
      --task classification:train.tsv,test.tsv text=body label=intent --tasks stsb --limit 100""")


@dataclass(frozen=True)
class TaskSpec:
    """One parsed ``--task``: its kind, files and ``key=value`` options, all as given."""

    kind: str
    files: tuple[str, ...]
    options: tuple[tuple[str, str], ...] = ()

    @property
    def text(self) -> str:
        """The spec as written on a command line (for errors and reports)."""
        return " ".join([f"{self.kind}:{','.join(self.files)}", *(f"{k}={v}" for k, v in self.options)])

    @property
    def name(self) -> str:
        given = dict(self.options).get("name")
        if given:
            return given
        first = Path(self.files[0])
        if len(self.files) == 1 or self.kind == "clustering":
            return first.stem
        return first.resolve().parent.name or first.stem

    def columns(self) -> dict[str, str]:
        """Role -> column (or JSON field) name: the kind's defaults, overridden by the options."""
        options = dict(self.options)
        return {role: options.get(role, default) for role, default in KINDS[self.kind].columns.items()}

    def setting(self, key: str, default=None):
        value = dict(self.options).get(key)
        if value is None:
            return default
        if key in _INTEGER_KEYS:
            return int(value)
        if key == "delimiter":
            return DELIMITER_NAMES.get(value, value)
        if key.endswith("prompt") and value.lower() == "none":
            return None
        return value

    def check_files(self) -> None:
        missing = [path for path in self.files if not Path(path).is_file()]
        if missing:
            looked = "; ".join(f"{path} (looked at {Path(path).resolve()})" for path in missing)
            raise FileNotFoundError(f"--task {self.text}: no such file {looked}; paths are relative to the current "
                                    f"folder {Path.cwd()}")

    def build(self) -> EvaluationTask:
        """The task, its files read and checked now (errors name file:line; see :mod:`.tasks`)."""
        self.check_files()
        columns, delimiter, limit = self.columns(), self.setting("delimiter"), self.setting("limit")
        prompt = self.setting("prompt")
        if self.kind == "sts":
            return STSTask(self.name, self.files[0], "table", limit, prompt, columns=columns, delimiter=delimiter)
        if self.kind == "classification":
            return ClassificationTask(self.name, *self.files, self.setting("train_limit"), limit, prompt,
                                      columns=columns, delimiter=delimiter)
        if self.kind == "retrieval":
            return RetrievalTask(self.name, *self.files, limit, self.setting("corpus_limit"),
                                 self.setting("query_prompt", SIDE_PROMPT),
                                 self.setting("document_prompt", SIDE_PROMPT),
                                 columns=columns, delimiter=delimiter)
        if len(self.files) == 2:
            return ClusteringTask(self.name, *self.files, self.setting("clusters"), limit, prompt)
        return ClusteringTask(self.name, self.files[0], None, self.setting("clusters"), limit, prompt,
                              columns=columns, delimiter=delimiter)


def parse_task_spec(tokens: Sequence[str] | str) -> TaskSpec:
    """``["sts:pairs.csv", "score=label", ...]`` (the words of one ``--task``; a string is split as a
    shell would) -> :class:`TaskSpec`; :class:`TaskSpecError` names what is wrong and the fix."""
    words = shlex.split(tokens) if isinstance(tokens, str) else list(tokens)
    if not words:
        raise TaskSpecError("--task needs KIND:FILE[,FILE...], e.g. --task sts:pairs.csv")
    head, rest = words[0], words[1:]
    written = " ".join(words)
    kind, colon, files_text = head.partition(":")
    if not colon or kind not in KINDS:
        problem = f"no kind in {head!r}" if not colon else f"unknown kind {kind!r}"
        raise TaskSpecError(f"--task {written}: {problem}; write KIND:FILE[,FILE...] with KIND one of "
                            f"{', '.join(KINDS)} (e.g. --task {KINDS['sts'].example})")
    spec_kind = KINDS[kind]
    files = tuple(files_text.split(","))
    counts = sorted({len(roles) for roles in spec_kind.files})
    if any(not file for file in files) or len(files) not in counts:
        forms = " or ".join(",".join(roles) for roles in spec_kind.files)
        raise TaskSpecError(f"--task {written}: {kind} takes {' or '.join(map(str, counts))} file(s), {forms}, "
                            f"comma-separated without spaces (got {len([f for f in files if f])}); e.g. --task "
                            f"{spec_kind.example}")
    options: dict[str, str] = {}
    for word in rest:
        key, equals, value = word.partition("=")
        if not equals:
            raise TaskSpecError(f"--task {written}: {word!r} is not key=value; after the files come key=value words "
                                f"(keys for {kind}: {', '.join(spec_kind.keys())}); llm-embed-evaluate takes the "
                                "model before --task")
        if key not in spec_kind.keys():
            raise TaskSpecError(f"--task {written}: unknown key {key!r} for {kind}; keys: "
                                f"{', '.join(spec_kind.keys())} (see --help)")
        if key in options:
            raise TaskSpecError(f"--task {written}: {key} is given twice")
        if not value and key != "title":
            raise TaskSpecError(f"--task {written}: {key}= needs a value")
        _check_value(written, key, value)
        options[key] = value
    if len(files) == 2 and kind == "clustering":
        table_keys = [key for key in options if key in spec_kind.columns or key == "delimiter"]
        if table_keys:
            raise TaskSpecError(f"--task {written}: {', '.join(table_keys)} are for one table of texts and labels "
                                "(clustering:TEXTS); TEXTS,LABELS are two files of one text and one label a line")
    return TaskSpec(kind, files, tuple(options.items()))


def _check_value(written: str, key: str, value: str) -> None:
    if key in _INTEGER_KEYS and not (value.isdigit() and int(value) > 0):
        raise TaskSpecError(f"--task {written}: {key} must be a whole number above 0, got {value!r}")
    if key == "delimiter" and value not in DELIMITER_NAMES and len(value) != 1:
        raise TaskSpecError(f"--task {written}: delimiter must be one character or one of "
                            f"{', '.join(DELIMITER_NAMES)}, got {value!r}")


def parse_task_specs(groups: Iterable[Sequence[str]] | None) -> list[TaskSpec]:
    """Every ``--task`` of a command line (argparse's ``action="append", nargs="+"``), names unique."""
    specs = [parse_task_spec(group) for group in groups or []]
    names = [spec.name for spec in specs]
    for spec in specs:
        if names.count(spec.name) > 1:
            raise TaskSpecError(f"two --task specs are named {spec.name!r}; give each a name=... of its own")
    return specs


def build_tasks(specs: Iterable[TaskSpec]) -> list[EvaluationTask]:
    """The tasks of the specs, in order (files read and checked now, before a model loads)."""
    return [spec.build() for spec in specs]


def check_unique_names(tasks: Iterable[EvaluationTask]) -> None:
    """Results are keyed by task name (the report, the study's paired tests): refuse a clash of an
    own task with a built-in one (or another own one) before anything runs."""
    names = [task.name for task in tasks]
    clashes = sorted({name for name in names if names.count(name) > 1})
    if clashes:
        raise ValueError(f"more than one task is named {', '.join(map(repr, clashes))}; give your --task a "
                         "name=... of its own")
