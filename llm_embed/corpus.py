"""Embed a corpus into sharded, resumable safetensors files: ``llm-embed-encode``.

    llm-embed-encode path/to/model corpus.jsonl --output-dir embeddings/ --prompt-name document

(``.venv/bin/llm-embed-encode`` unless the virtualenv is activated; ``torchrun --nproc-per-node 4 -m
llm_embed.corpus ...`` or ``accelerate launch -m llm_embed.corpus ...`` for several processes.)

Output, in ``--output-dir``:

- ``shard-00000.safetensors``, ``shard-00001.safetensors``, ...: shard ``k`` holds rows
  ``[k * shard_size, (k + 1) * shard_size)`` of the corpus (the input files one after the other, in
  file order) as two tensors: ``embeddings`` (float32, ``(rows, dim)``) and ``ids``. safetensors holds
  only tensors, so ``ids`` is the UTF-8 bytes of a JSON list of strings, as a uint8 tensor, inside the
  shard file rather than in a sidecar file: one file per shard means one atomic rename makes a shard's
  embeddings and ids appear together (a sidecar would leave a window, after a kill, where one exists
  without the other, and resume would have to check pairs), and one checksum covers both. The shard's
  safetensors metadata records a hash of its input (prompt, ids, texts) and a checksum of its tensors
  (:func:`shard_bytes`), so a resume can tell a sound shard from a damaged or stale one without a manifest.
- ``run.json``: what decides the shards' content, written before the first shard: the arguments (model
  path, dtype, fields, prompt name and text, shard size, inputs, batch size), the device kind and, on the
  CPU, torch's thread count (:func:`compute_arguments`), and a fingerprint of the model
  (:func:`model_fingerprint`: its embedding options, backbone config, tokenizer and weights); a rerun
  where any of these differ is refused, naming what changed. A run that fails before any shard exists
  removes its own ``run.json`` (:func:`record_withdrawn_on_failure`); no run overwrites another's.
- ``manifest.json``: written last, once every shard exists: the run's arguments, the model's
  attention and pooling, the dimension, and per shard its file, row count and sha256.

Every file is written to a hidden temporary name in the output folder, fsynced, then renamed
(``os.replace``), so a file with a final name is always whole. A rerun with the same arguments keeps
the shards whose file is sound and was written for this input (:func:`shard_problem`) and embeds the
others again: missing, damaged (its bytes do not match its recorded checksum) or stale (a text, an id
or the prompt of its rows changed). So a run killed at any point and run again gives the same files,
byte for byte, as one run without interruption (on the same
device, dtype, batch size and, on the CPU, thread count, all checked, and the same software: the
embeddings of a shard are computed the same way whichever run computes them).

The input is checked before the model loads (formats, files that exist and hold a row, none given
twice); duplicate ids are refused as they are read (:func:`unique_ids`), before the shard holding the
second one is written.

Several processes (``RANK`` / ``WORLD_SIZE``, as torchrun and accelerate set them) split the shards:
rank ``r`` embeds the shards ``k`` with ``k % WORLD_SIZE == r``. Each rank still reads the whole input
(rows of other ranks' shards are parsed, never embedded), so a shard's rows do not depend on how many
processes ran, and its bytes do not either when each process uses the same device kind and thread count
(torchrun gives each CPU process one thread: compare with a one-process run under
``OMP_NUM_THREADS=1``); rank 0 writes the manifest after every shard file exists and is sound for this
input (it polls the folder: no process group needed).
"""

from __future__ import annotations

import argparse
import csv
import glob
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple, TextIO

import numpy as np

__all__ = ["Document", "cli", "encode_corpus", "load_shards", "main", "read_documents", "shard_name"]

FORMAT = "llm_embed.corpus/2"
"""Recorded in ``run.json``; 2: each shard records its input's hash and its own checksum (:func:`shard_bytes`),
so a folder written by version 1 is refused on resume (start over) but still read by :func:`load_shards`."""
SHARD_RECORD = "llm_embed"
"""The key, in a shard's safetensors metadata, of its record (a JSON object): ``input_sha256``, ``content_sha256``."""
MANIFEST = "manifest.json"
RUN_FILE = "run.json"
FORMATS = {".jsonl": "jsonl", ".csv": "csv", ".tsv": "tsv", ".parquet": "parquet"}

FAIL_AFTER_SHARDS_ENV = "LLM_EMBED_CORPUS_FAIL_AFTER_SHARDS"
"""Test hook: with ``N`` set, the process writes ``N`` shards, then half of the next one's temporary file,
and exits at once (``os._exit(1)``), as a kill at the worst moment would. For the resume tests only."""

WAIT_POLL_SECONDS = 0.5
"""How often rank 0 looks for the other ranks' shard files."""

_MISSING = object()


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.safetensors"


# ----------------------------------------------------------------------------- reading the input


class Document(NamedTuple):
    """One corpus row: its id, the text to embed (title and text joined), and where it was read
    (``path:line``, or ``path: row n`` for Parquet), for error messages."""

    id: str
    text: str
    where: str


def input_format(path: str | os.PathLike) -> str:
    """The format of an input file, from its extension; checked for every input before the model loads."""
    suffix = Path(path).suffix.lower()
    kind = FORMATS.get(suffix)
    if kind is None:
        raise ValueError(f"{path}: unknown input format {suffix or '(no extension)'!r}; pass .jsonl, .csv, .tsv or "
                         ".parquet files (the format is taken from the extension)")
    if kind == "parquet":
        try:
            import pyarrow.parquet  # noqa: F401
        except ImportError as error:
            raise ImportError(f"{path}: reading Parquet needs pyarrow: pip install pyarrow") from error
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such input file (looked at {Path(path).resolve()})")
    return kind


@contextmanager
def open_utf8(path: str | os.PathLike, newline: str | None = None) -> Iterator[TextIO]:
    """``path`` opened as UTF-8 text (a byte-order mark skipped). A byte that is not UTF-8, met while
    reading in the ``with`` block, is reported with the file and the fix, not as a bare codec error."""
    try:
        with open(path, encoding="utf-8-sig", newline=newline) as handle:
            yield handle
    except UnicodeDecodeError as error:
        raise ValueError(
            f"{path}: byte 0x{error.object[error.start]:02x} is not UTF-8 ({error.reason}); the corpus must be "
            f"UTF-8: re-encode it, e.g. from Latin-1: iconv -f latin1 -t utf-8 {path} > fixed{Path(path).suffix}"
        ) from error


def has_rows(path: str | os.PathLike, kind: str) -> bool:
    """Whether an input file holds at least one row (a blank line is none, nor is a CSV/TSV header):
    reads up to its first row, so every input is checked before the model loads or a shard is written."""
    if kind == "jsonl":  # read as the reader reads it: a byte-order mark and a newline are no row
        with open_utf8(path) as handle:
            return any(line.strip() for line in handle)
    if kind == "parquet":
        import pyarrow
        import pyarrow.parquet as pq

        try:
            return pq.ParquetFile(path).metadata.num_rows > 0
        except pyarrow.ArrowInvalid as error:  # pyarrow's message ("Parquet file size is 0 bytes") names no file
            raise ValueError(f"{path} is not a readable Parquet file ({error}); pass a Parquet file written by "
                             "pyarrow or pandas, or the corpus as .jsonl, .csv or .tsv") from error
    with open_utf8(path, newline="") as handle:
        rows = (row for row in csv_rows(_csv_reader(handle, "," if kind == "csv" else "\t"), path) if row)
        next(rows, None)  # the header
        return next(rows, None) is not None


def check_output_dir(output_dir) -> Path:
    """The output folder as an absolute path, refused when it is, or lies under, a file (the command
    checks it before the model loads)."""
    output_dir = Path(output_dir).absolute()
    blocking = next((folder for folder in (output_dir, *output_dir.parents)
                     if folder.exists() and not folder.is_dir()), None)
    if blocking is not None:
        raise ValueError(f"output folder {output_dir} (--output-dir): {blocking} is a file, not a folder; pass the "
                         "path of a folder (it is created if missing), or move the file away")
    return output_dir


def check_inputs(inputs: Iterable[str | os.PathLike]) -> list[str]:
    """The input paths, each checked before the model loads: a known format (:func:`input_format`), an
    existing file holding at least one row (an empty corpus is a mistake, as in ``llm-embed-train`` and
    ``llm-embed-evaluate``), and none given twice (its rows would be embedded twice under the same ids)."""
    paths = [os.fspath(path) for path in inputs]
    if not paths:
        raise ValueError("no input files: pass at least one .jsonl, .csv, .tsv or .parquet file")
    seen: dict[str, str] = {}
    for path in paths:
        kind = input_format(path)
        real = os.path.realpath(path)
        if real in seen:
            raise ValueError(f"{path}: given twice as an input (also as {seen[real]}); its rows would be embedded "
                             "twice under the same ids. Pass each file once")
        seen[real] = path
        if not has_rows(path, kind):
            what = "a header but no row" if kind in ("csv", "tsv") else "no row"
            raise ValueError(f"{path}: holds {what}: an empty corpus; pass a file with at least one row")
    return paths


def _jsonl_records(path: str) -> Iterator[tuple[Any, str]]:
    with open_utf8(path) as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue  # blank lines (a trailing one, most often) are not rows
            where = f"{path}:{number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{where}: not valid JSON ({error.msg}, column {error.colno})") from error
            if not isinstance(record, dict):
                raise ValueError(f"{where}: expected a JSON object {{...}} per line, got {type(record).__name__}")
            yield record, where


def _csv_reader(handle, delimiter: str, reader_class=csv.reader):
    """CSV: the csv module's dialect (quoted fields may hold commas and newlines), strict: a quote left
    open, or one inside an unquoted field, is an error. Not strict, the csv module read every line after
    an unclosed quote into that one field (four rows became one document's text, exit status 0) and
    dropped a quote in ``"5" screen"``. TSV: no quoting, as in BEIR's and MS MARCO's files (a field
    holds no tab or newline; a ``"`` is an ordinary character)."""
    csv.field_size_limit(2**31 - 1)  # documents longer than the default 128 KiB per field are still documents
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    return reader_class(handle, delimiter=delimiter, quoting=quoting, strict=True)  # read by csv_rows


def csv_rows(reader, path) -> Iterator:
    """The rows of a strict csv ``reader`` (:func:`_csv_reader`), a malformed one named by its line
    (``csv.Error`` names none). Also what ``llm-embed-evaluate`` reads its CSV task files with."""
    rows = iter(reader)
    while True:
        try:
            row = next(rows)
        except StopIteration:
            return
        except csv.Error as error:
            raise ValueError(
                f"{path}:{reader.line_num}: not valid CSV ({error}): a quoted field is left open, or a quote stands "
                "inside an unquoted field. Quote a field that holds a quote as a whole and double its quotes "
                "(\"5\"\" screen\"), or write the file as .jsonl") from error
        yield row


def _csv_records(path: str, delimiter: str, fields: tuple[str, ...]) -> Iterator[tuple[Any, str]]:
    """Rows of a CSV or TSV file (:func:`_csv_reader`) as dicts by the header's columns; a row with more
    or fewer fields than the header is refused, never cut or padded."""
    with open_utf8(path, newline="") as handle:
        reader = _csv_reader(handle, delimiter, csv.DictReader)
        try:
            header = reader.fieldnames or []
        except csv.Error as error:
            raise ValueError(f"{path}:1: the header is not valid CSV ({error})") from error
        repeated = sorted({name for name in header if header.count(name) > 1})
        if repeated:
            raise ValueError(f"{path}:1: the header names column {', '.join(map(repr, repeated))} more than once: "
                             "one of them would be read and the other dropped; rename or remove the repeat")
        for field in fields:
            if field not in header:
                raise ValueError(f"{path}:1: missing field {field!r}: the header has no such column (its columns: "
                                 f"{', '.join(map(str, header)) or 'none'})")
        for record in csv_rows(reader, path):
            where = f"{path}:{reader.line_num}"
            if None in record:  # DictReader's restkey: the values past the header's columns
                count = len(header) + len(record[None])
                fix = ("quote a field that holds a comma: \"...\"" if delimiter == "," else
                       "a TSV field holds no tab (it has no quoting): replace the tabs in the field, or write a "
                       "quoted .csv")
                raise ValueError(f"{where}: {count} fields, the header has {len(header)}: a delimiter inside a "
                                 f"field split it, and the text would be cut there; {fix}")
            if any(value is None for value in record.values()):  # DictReader's restval: columns past the row's end
                count = sum(value is not None for value in record.values())
                raise ValueError(f"{where}: {count} field{'' if count == 1 else 's'}, the header has {len(header)}: "
                                 "the row is short (a field left out, or a line break inside an unquoted field); "
                                 "give every column a value, empty ones included")
            yield record, where


def _parquet_records(path: str, fields: tuple[str, ...]) -> Iterator[tuple[Any, str]]:
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(path)
    columns = parquet.schema_arrow.names
    for field in fields:
        if field not in columns:
            raise ValueError(f"{path}: row 1: missing field {field!r}: the file has no such column (its columns: "
                             f"{', '.join(columns)})")
    number = 0
    for batch in parquet.iter_batches(batch_size=1024, columns=list(dict.fromkeys(fields))):
        for record in batch.to_pylist():
            number += 1
            yield record, f"{path}: row {number}"


def _field(record: Mapping, field: str, option: str, where: str) -> Any:
    value = record.get(field, _MISSING)
    if value is _MISSING or (value is None and option != "--title-field"):
        what = "is null" if value is None else "is missing"
        keys = ", ".join(str(key) for key in record if key is not None)
        raise ValueError(f"{where}: missing field {field!r} ({option}): it {what} in this row (its fields: {keys})")
    return value


def _document(record: Mapping, where: str, text_field: str, title_field: str | None, id_field: str) -> Document:
    doc_id = _field(record, id_field, "--id-field", where)
    if isinstance(doc_id, bool) or not isinstance(doc_id, (str, int)):
        raise ValueError(f"{where}: field {id_field!r} (--id-field) must be a string or an integer, "
                         f"got {type(doc_id).__name__}")
    doc_id = str(doc_id)
    if not doc_id:
        raise ValueError(f"{where}: field {id_field!r} (--id-field) is empty; every row needs an id")
    surrogate = next((char for char in doc_id if "\ud800" <= char <= "\udfff"), None)
    if surrogate is not None:  # a JSON escape of half a pair: the shard's ids (UTF-8) could not be written
        raise ValueError(f"{where}: field {id_field!r} (--id-field) holds a lone surrogate {surrogate!r}, which is "
                         "not valid Unicode and cannot be stored as UTF-8; fix the id at its source (join the "
                         "surrogate pair, or drop the character)")
    text = _field(record, text_field, "--text-field", where)
    if not isinstance(text, str):
        raise ValueError(f"{where}: field {text_field!r} (--text-field) must be a string, got {type(text).__name__}")
    if title_field is not None:
        title = _field(record, title_field, "--title-field", where)
        if title is None:
            title = ""  # a document without a title, as BEIR corpora write it
        if not isinstance(title, str):
            raise ValueError(f"{where}: field {title_field!r} (--title-field) must be a string, "
                             f"got {type(title).__name__}")
        text = f"{title} {text}".strip()  # as BEIR joins them
    return Document(doc_id, text, where)


def read_documents(inputs: Iterable[str | os.PathLike], text_field: str = "text", title_field: str | None = None,
                   id_field: str = "id") -> Iterator[Document]:
    """The rows of the input files, one after the other, as :class:`Document`; streamed (a generator:
    one row, or one Parquet batch, in memory at a time). A row without one of the fields is an error
    naming the file, the line and the field."""
    for path in inputs:
        path = os.fspath(path)
        kind = input_format(path)
        fields = (id_field, text_field) + ((title_field,) if title_field is not None else ())
        if kind == "jsonl":
            records = _jsonl_records(path)
        elif kind == "parquet":
            records = _parquet_records(path, fields)
        else:
            records = _csv_records(path, "," if kind == "csv" else "\t", fields)
        for record, where in records:
            yield _document(record, where, text_field, title_field, id_field)


def unique_ids(documents: Iterable[Document], find_first: Callable[[str], str]) -> Iterator[Document]:
    """The documents, with a ``ValueError`` at the first id seen before: it names the id and both rows
    (``file:line``). Two rows with one id would make ``load_shards`` return an id twice, for two vectors.

    Streamed: only the ids seen so far are kept, in a set (about 60 bytes plus the id's length per row,
    e.g. some 1.3 GB for a 21M-passage corpus with short ids); where the first occurrence was is not
    kept but found again with ``find_first(id)`` (a second read of the input, on the error path only)."""
    seen: set[str] = set()
    for document in documents:
        if document.id in seen:
            raise ValueError(f"{document.where}: duplicate id {document.id!r}, first at {find_first(document.id)}; "
                             "every row needs its own id (--id-field): remove or rename one of them")
        seen.add(document.id)
        yield document


def count_rows(inputs: Iterable[str | os.PathLike]) -> int:
    """How many rows the inputs hold, for the progress bar's total and ETA: one cheap pass (no field is
    checked; Parquet from its metadata)."""
    total = 0
    for path in inputs:
        kind = input_format(path)
        if kind == "jsonl":
            with open(path, "rb") as handle:
                total += sum(1 for line in handle if line.strip())
        elif kind == "parquet":
            import pyarrow.parquet as pq

            total += pq.ParquetFile(path).metadata.num_rows
        else:
            with open_utf8(path, newline="") as handle:
                reader = _csv_reader(handle, "," if kind == "csv" else "\t")
                total += max(sum(1 for row in csv_rows(reader, path) if row) - 1, 0)  # less the header
    return total


def shards_of(documents: Iterable[Document], shard_size: int) -> Iterator[list[Document]]:
    """The documents in consecutive groups of ``shard_size`` (the last one shorter): one shard in memory."""
    shard: list[Document] = []
    for document in documents:
        shard.append(document)
        if len(shard) == shard_size:
            yield shard
            shard = []
    if shard:
        yield shard


# ----------------------------------------------------------------------------- writing and checking shards


def ids_bytes(ids: list[str]) -> bytes:
    """The shard's ids as stored: compact UTF-8 JSON (the same bytes for the same ids, always)."""
    return json.dumps(ids, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def input_digest(prefix: str, shard: list[Document]) -> str:
    """sha256 of what a shard's vectors are computed from besides the model (``run.json``): the prompt, and
    each row's id and text (the title joined). Recorded in the shard, so that a resume re-embeds a shard
    whose input changed since it was written (a text edited under the same id kept its old vector when only
    the ids were compared). JSON with ASCII escapes: any text hashes, a lone surrogate included (encode
    refuses that one, naming the row)."""
    value = [prefix, [[document.id, document.text] for document in shard]]
    return hashlib.sha256(json.dumps(value, separators=(",", ":")).encode("ascii")).hexdigest()


def shard_bytes(ids: list[str], embeddings: np.ndarray, input_sha256: str) -> bytes:
    """A shard file's content: the tensors and, in safetensors' metadata (one key, :data:`SHARD_RECORD`, so
    its order cannot vary), the shard's record: ``input_sha256`` (:func:`input_digest`) and
    ``content_sha256`` (of the ids' bytes and the embeddings' bytes). Nothing in it varies between runs,
    so the same input and embeddings give the same bytes.

    Why the shard carries its own checksum: a resume must tell a shard it can keep from a damaged one
    before any manifest exists (a killed run has none), and the manifest it would otherwise trust is the
    file the resume rewrites: a damaged shard kept there got its new sha256 recorded and was then read as
    sound. :func:`shard_problem` rebuilds these bytes from what it parses, so a change anywhere in the file
    (tensors, header, record) shows."""
    from safetensors.numpy import save

    embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
    ids_data = ids_bytes(ids)
    content = hashlib.sha256(ids_data + embeddings.tobytes()).hexdigest()
    record = json.dumps(dict(content_sha256=content, input_sha256=input_sha256), sort_keys=True)
    ids_tensor = np.frombuffer(ids_data, dtype=np.uint8).copy()
    return save({"embeddings": embeddings, "ids": ids_tensor}, metadata={SHARD_RECORD: record})


def parse_shard(data: bytes, path: Path) -> tuple[list[str], np.ndarray]:
    from safetensors.numpy import load

    try:
        tensors = load(data)
        ids = json.loads(tensors["ids"].tobytes().decode("utf-8"))
        embeddings = tensors["embeddings"]
    except Exception as error:
        raise ValueError(f"{path}: not a readable shard ({type(error).__name__}: {error}); {REWRITE}") from error
    if embeddings.ndim != 2 or embeddings.dtype != np.float32 or embeddings.shape[0] != len(ids):
        raise ValueError(f"{path}: embeddings of shape {embeddings.shape} ({embeddings.dtype}) for {len(ids)} ids; "
                         f"{REWRITE}")
    return ids, embeddings


REWRITE = ("rerun llm-embed-encode with the same arguments: it embeds a damaged shard again (and writes the "
           "manifest anew)")
"""The fix named for a damaged shard, by :func:`load_shards` and the resume alike."""


def shard_problem(data: bytes, path: Path, input_sha256: str, dimension: int) -> str | None:
    """Why a shard file cannot be kept for this run, or None: damaged (unreadable, or its bytes not the ones
    :func:`shard_bytes` writes for what it holds, its own checksum included), written for another input
    (its recorded input hash is not ``input_sha256``: a text, an id or the prompt changed), or of another
    dimension. The resume embeds such a shard again; rank 0 waits for its rank to do so."""
    try:
        ids, embeddings = parse_shard(data, path)
        length = int.from_bytes(data[:8], "little")
        record = json.loads(json.loads(data[8 : 8 + length])["__metadata__"][SHARD_RECORD])
        recorded = record["input_sha256"]
    except (ValueError, KeyError, TypeError) as error:  # what json and a missing key raise on damaged bytes
        cause = error.__cause__ or error  # parse_shard's own message names the path and the fix: not needed here
        return f"damaged (not a readable shard: {type(cause).__name__}: {cause})"
    if not isinstance(recorded, str) or data != shard_bytes(ids, embeddings, recorded):
        return "damaged (its bytes do not match the checksum recorded in it)"
    if recorded != input_sha256:
        return "its input (prompt, ids or texts) changed since it was written"
    if embeddings.shape[1] != dimension:
        return f"embeddings of dimension {embeddings.shape[1]}, the model gives {dimension}"
    return None


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (a no-op where folders cannot be opened, as on Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def temporary_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def remove_temporaries(path: Path) -> None:
    """Temporary files a killed run left for ``path`` (any process id)."""
    for stale in glob.glob(glob.escape(str(path.parent / f".{path.name}.")) + "*.tmp"):
        try:
            os.remove(stale)
        except FileNotFoundError:
            pass


def write_atomically(path: Path, data: bytes, fail_midway: bool = False) -> None:
    """Write ``data`` to a temporary name beside ``path``, fsync, then rename it to ``path``: a reader
    (or a rerun) sees the old file or the whole new one, never part of one."""
    temporary = temporary_name(path)
    try:
        with open(temporary, "wb") as handle:
            if fail_midway:  # FAIL_AFTER_SHARDS_ENV: die like a kill in the middle of a write
                handle.write(data[: len(data) // 2])
                handle.flush()
                os._exit(1)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def json_bytes(value: Any) -> bytes:
    return (json.dumps(value, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def write_json(path: Path, value: Any) -> None:
    write_atomically(path, json_bytes(value))


# ----------------------------------------------------------------------------- the run's arguments


WEIGHT_SAMPLE = 65536
"""Elements per tensor that :func:`weights_fingerprint` hashes (all of a smaller tensor)."""

TRAINING_ONLY_OPTIONS = ("initializer_range",)
"""Config options that do not change a trained model's vectors (besides the ``loss_*`` ones), so not
part of :func:`model_fingerprint`: the head's initial weights are hashed as weights."""


def _sha256_json(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()


def weights_fingerprint(model) -> str:
    """sha256 over every state-dict tensor (sorted by name): its name, dtype, shape and the exact bytes of
    ``WEIGHT_SAMPLE`` elements spread over it (every element of a smaller tensor: norms, biases).

    Why a sample and not every byte: hashing a 7B model's 14 GB (bf16) takes some 18 s at this CPU's
    770 MB/s, and a copy of each tensor from the GPU; the sample is one small gather per tensor on its
    own device, so its cost grows with the number of tensors, not their size (0.24 s for SmolLM2-135M's
    272 tensors on this 2-core CPU; a 7B Mistral has 291, 38 MB of samples; not timed). It is still sound
    for what it guards against, the same folder holding other or retrained weights: training (full, LoRA
    merged into the weights, or the head alone) moves practically every element of each trained tensor,
    so the sampled ones differ unless almost none moved. A hand edit of a few elements of a large tensor
    could pass unseen. Exact bytes, not float sums, so the same weights give the same hash on any device. The
    positions are offset within each stride so that they do not all fall in the same columns of a
    matrix."""
    import torch

    digest = hashlib.sha256()
    positions: dict[tuple[int, torch.device], torch.Tensor] = {}  # per tensor size and device: layers share them
    for name, tensor in sorted(model.state_dict().items()):
        if tensor.device.type == "meta":
            raise ValueError(f"cannot fingerprint the model's weights: {name} is not in memory (meta device: "
                             "offloaded?); load the model without disk offload to embed a corpus")
        flat = tensor.detach().reshape(-1)
        count = flat.numel()
        if count > WEIGHT_SAMPLE:
            key = (count, flat.device)
            if key not in positions:
                index = np.arange(WEIGHT_SAMPLE, dtype=np.int64)
                spread = index * count // WEIGHT_SAMPLE + (index * 40503) % (count // WEIGHT_SAMPLE)
                positions[key] = torch.from_numpy(spread).to(flat.device)
            flat = flat[positions[key]]
        digest.update(f"{name}|{str(tensor.dtype).removeprefix('torch.')}|{tuple(tensor.shape)}|".encode())
        if count:
            digest.update(flat.contiguous().view(torch.uint8).cpu().numpy().tobytes())
    return digest.hexdigest()


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 of what decides the token ids: the tokenizer's definition (the ``tokenizers`` JSON, less
    its truncation and padding state, which ``encode`` does not use; else the vocabulary) and its EOS and
    pad ids."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        definition = json.loads(backend.to_str())
        definition.pop("truncation", None)
        definition.pop("padding", None)
    else:
        definition = dict(type=type(tokenizer).__name__, vocab=sorted(tokenizer.get_vocab().items()))
    return _sha256_json(dict(definition=definition, eos=tokenizer.eos_token_id, pad=tokenizer.pad_token_id))


def model_fingerprint(model) -> dict:
    """What decides the vectors besides the input, recorded in ``run.json`` so that a resume with another
    model saved at the same path is refused: the embedding options (attention, pooling, prompts,
    normalize, output_dim, max_seq_length, append_eos, padding side, ...: every config option but the
    training-only ones), the attention implementation in use, the backbone's config (hashed), the
    tokenizer (hashed, :func:`tokenizer_fingerprint`) and the weights (:func:`weights_fingerprint`)."""
    from .configuration_llm_embed import OPTIONS

    config = model.config
    options = {option.name: getattr(config, option.name) for option in OPTIONS
               if not option.name.startswith("loss_") and option.name not in TRAINING_ONLY_OPTIONS}
    backbone = model.backbone.config.to_dict()
    for key in [key for key in backbone if key.startswith("_") or key in ("transformers_version", "dtype")]:
        del backbone[key]  # not the model: where it was loaded from, the library version, the dtype (recorded apart)
    attn = getattr(model.backbone.config, "_attn_implementation", None)
    return dict(options=options, attn_implementation=attn, backbone_config_sha256=_sha256_json(backbone),
                tokenizer_sha256=tokenizer_fingerprint(model.tokenizer), weights_sha256=weights_fingerprint(model))


HINTS = {
    "model_fingerprint": "the model is not the one that wrote these shards: another model saved at the same path, "
                         "or retrained?",
    "batch_size": "the batch size changes the embeddings' last bits",
    "cpu_threads": "torch's CPU thread count changes the embeddings' last bits: set OMP_NUM_THREADS to the "
                   "recorded count (torchrun sets 1 per process)",
    "device": "another kind of device changes the embeddings' last bits",
    "format": "an earlier llm-embed-encode wrote this folder: its shards record no checksum, so they cannot be "
              "checked for a resume; load_shards still reads a finished one",
}
"""Why a difference in these ``run.json`` entries is refused, for the message."""


def differences(saved: Any, current: Any, key: str = "") -> list[str]:
    """``key: <saved> there, <current> now`` for each differing entry, nested keys joined by dots. At the
    top, only the keys of ``current`` (the manifest holds more than the arguments); below, both sides'."""
    if isinstance(saved, dict) and isinstance(current, dict):
        names = list(current) + ([name for name in saved if name not in current] if key else [])
        return [line for name in names for line in differences(saved.get(name, _MISSING), current.get(name, _MISSING),
                                                                 f"{key}.{name}" if key else name)]
    if saved is _MISSING:
        return [f"{key}: not recorded there (written by an earlier llm-embed-encode), {current!r} now"]
    if current is _MISSING:
        return [f"{key}: {saved!r} there, absent now"]
    return [] if saved == current else [f"{key}: {saved!r} there, {current!r} now"]


def check_arguments(output_dir: Path, arguments: dict) -> None:
    """Refuse to resume into a folder that another run wrote, naming what differs; write ``run.json``
    if there is none.

    Every rank does this at start; ranks of one run write the same bytes, so their races are harmless.
    A record is never overwritten: one without a shard beside it may be another rank's that has not
    finished its first shard yet (ranks started together with other arguments then both ran, their
    shards mixed). A run that fails before any shard exists withdraws its own record instead
    (:func:`record_withdrawn_on_failure`), so a corrected command is not blocked by it; a record left by a
    process killed before its first shard is refused like any other (pass another folder, or delete it)."""
    for name in (RUN_FILE, MANIFEST):
        path = output_dir / name
        if not path.is_file():
            continue
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as error:
            raise ValueError(f"{path}: not readable ({error}); pass another --output-dir") from error
        found = differences(saved, arguments)
        if found:
            hints = [HINTS[key] for key in HINTS if any(item.startswith(key) for item in found)]
            why = f" ({'; '.join(hints)})" if hints else ""
            raise ValueError(f"{output_dir} holds the output of a run with other arguments ({name}: "
                             f"{'; '.join(found)}){why}. Its shards would mix with this run's. Rerun with the same "
                             "arguments to resume it, or pass another --output-dir (or delete this one) to start over")
    run_file = output_dir / RUN_FILE
    if not run_file.is_file():
        if glob.glob(glob.escape(str(output_dir)) + "/shard-*.safetensors"):
            if run_file.is_file():  # another rank of this run wrote it (and a shard) meanwhile: check it
                return check_arguments(output_dir, arguments)
            raise ValueError(f"{output_dir} holds shard files but no {RUN_FILE}: they were not written by "
                             "llm-embed-encode, or by another run; pass another --output-dir (or empty this one)")
        write_json(run_file, arguments)


@contextmanager
def record_withdrawn_on_failure(output_dir: Path, arguments: dict) -> Iterator[None]:
    """Around the embedding loop: on a failure (a missing field, a duplicate id, an interrupt) while the
    folder holds no shard and no manifest, remove ``run.json`` if it is this run's record (the same
    bytes), then let the error pass. Nothing of the run can mix with another's then, so the corrected
    command starts afresh; and since only a failing run removes its own record, a rank that finds another
    rank's record cannot take it for a failed run's (:func:`check_arguments`). A sibling rank of the same
    run that goes on writes the record again before its next shard (:func:`claim_record`)."""
    try:
        yield
    except BaseException:
        run_file = output_dir / RUN_FILE
        if (not glob.glob(glob.escape(str(output_dir)) + "/shard-*.safetensors") and not (output_dir / MANIFEST)
                .is_file() and run_file.is_file() and run_file.read_bytes() == json_bytes(arguments)):
            run_file.unlink(missing_ok=True)
        raise


def claim_record(output_dir: Path, arguments: dict) -> None:
    """Before each shard is written: ``run.json`` is still this run's (written again if a failed rank of
    the same run withdrew it; refused if another run's record took its place meanwhile)."""
    run_file = output_dir / RUN_FILE
    if not run_file.is_file():
        write_json(run_file, arguments)
    elif run_file.read_bytes() != json_bytes(arguments):
        check_arguments(output_dir, arguments)


def rank_and_world_size(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """``RANK`` / ``WORLD_SIZE`` from the environment (torchrun, accelerate launch) unless given; 0 / 1."""
    try:
        rank = int(os.environ.get("RANK", "0")) if rank is None else rank
        world_size = int(os.environ.get("WORLD_SIZE", "1")) if world_size is None else world_size
    except ValueError as error:
        raise ValueError(f"RANK / WORLD_SIZE must be integers ({error})") from error
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"RANK={rank} WORLD_SIZE={world_size}: need WORLD_SIZE >= 1 and 0 <= RANK < WORLD_SIZE")
    return rank, world_size


# ----------------------------------------------------------------------------- the Python function


def model_dtype(model) -> str:
    return str(model.dtype).removeprefix("torch.")


def compute_arguments(model, batch_size: int) -> dict:
    """How the vectors are computed, beyond the model: float reductions run in another order with another
    batch size (batches are sorted by length and padded or packed per batch), another kind of device, or,
    on the CPU, another number of torch threads (``torch.get_num_threads()``: ``OMP_NUM_THREADS``, which
    torchrun sets to 1 per process), so their last bits differ (measured: up to 9e-8 between batch sizes
    1 and 32). Recorded so that a resume cannot mix shards computed either way; a GPU's model and
    software versions also matter but are not recorded."""
    import torch

    device = model.device.type
    return dict(batch_size=batch_size, device=device, cpu_threads=torch.get_num_threads() if device == "cpu" else None)


def encode_corpus(
    model,
    inputs: str | os.PathLike | list[str | os.PathLike],
    output_dir: str | os.PathLike,
    *,
    text_field: str = "text",
    title_field: str | None = None,
    id_field: str = "id",
    prompt_name: str | None = None,
    batch_size: int = 32,
    shard_size: int = 10000,
    model_path: str | None = None,
    rank: int | None = None,
    world_size: int | None = None,
    progress: bool = False,
    wait_timeout: float = 3600.0,
) -> dict:
    """Embed the rows of ``inputs`` with ``model`` (an :class:`~llm_embed.LLMEmbeddingModel` with its
    tokenizer) into shards in ``output_dir``; see the module docstring for the files and the resume
    and multi-process behaviour. ``model_path``: recorded in ``run.json`` and the manifest (default:
    ``model.name_or_path``; a local folder as its absolute path, :func:`~llm_embed.hub.recorded_location`).
    Returns a summary: ``output_dir``, ``rows`` (the corpus), ``shards``, ``embedded_rows``, ``written_shards``,
    ``resumed_shards``, ``replaced_shards`` (written again: damaged, or their input changed), ``tokens``,
    ``truncated``, ``seconds`` (this process) and ``manifest`` (its path on rank 0, else None)."""
    from tqdm.auto import tqdm

    from .encoding import check_count, check_embeddings, resolve_prompt
    from .hub import recorded_location

    shard_size = check_count(shard_size, "shard_size", "encode_corpus()")
    batch_size = check_count(batch_size, "batch_size", "encode_corpus()")
    if isinstance(inputs, (str, os.PathLike)):  # one file, not the characters of its name
        inputs = [inputs]
    rank, world_size = rank_and_world_size(rank, world_size)
    inputs = [os.path.abspath(path) for path in check_inputs(inputs)]  # all checked before anything is written
    config = model.config
    prefix = resolve_prompt(config.prompts, config.default_prompt_name, prompt_name, None)  # unknown name: refused
    dimension = int(config.embedding_dim)
    # one form for the command and the function, so either resumes a folder the other wrote
    model_path = recorded_location(model_path if model_path is not None else
                                   str(getattr(model, "name_or_path", "") or ""))
    output_dir = check_output_dir(output_dir)
    arguments = dict(format=FORMAT, model=model_path, dtype=model_dtype(model), prompt_name=prompt_name,
                     text_field=text_field, title_field=title_field, id_field=id_field, inputs=inputs,
                     shard_size=shard_size, **compute_arguments(model, batch_size), prompt=prefix,
                     model_fingerprint=model_fingerprint(model))

    output_dir.mkdir(parents=True, exist_ok=True)
    check_arguments(output_dir, arguments)

    fail_after = os.environ.get(FAIL_AFTER_SHARDS_ENV)
    fail_after = int(fail_after) if fail_after not in (None, "") else None
    chunk_texts = max(1024, 8 * batch_size)  # texts per encode call: the progress bar moves after each
    show = progress and rank == 0
    bar = tqdm(total=count_rows(inputs) if show else None, desc="Embedding", unit="docs", disable=not show)
    start = time.perf_counter()
    expected: list[tuple[int, str]] = []  # per shard: rows and input hash, to check the other ranks' files
    embedded = tokens = truncated = written = resumed = replaced = total = 0
    checked: dict[int, str] = {}  # per shard this process wrote or found sound: its sha256 (not read again)

    def first_place(doc_id: str) -> str:  # where a duplicate id was first seen: read again, on the error path only
        return next((doc.where for doc in read_documents(inputs, text_field, title_field, id_field)
                     if doc.id == doc_id), "an earlier row")

    with record_withdrawn_on_failure(output_dir, arguments), bar:
        documents = unique_ids(read_documents(inputs, text_field, title_field, id_field), first_place)
        for index, shard in enumerate(shards_of(documents, shard_size)):
            ids = [document.id for document in shard]
            total += len(shard)
            digest = input_digest(prefix, shard)
            expected.append((len(shard), digest))
            path = output_dir / shard_name(index)
            if index % world_size != rank:
                bar.update(len(shard))
                continue
            if path.is_file():
                data = path.read_bytes()
                problem = shard_problem(data, path, digest, dimension)
                if problem is None:
                    checked[index] = hashlib.sha256(data).hexdigest()
                    resumed += 1
                    bar.update(len(shard))
                    continue
                print(f"llm-embed-encode: {path}: {problem}; embedding it again", file=sys.stderr, flush=True)
                (output_dir / MANIFEST).unlink(missing_ok=True)  # it describes the old file: load_shards must not
                replaced += 1
            texts = [document.text for document in shard]
            parts = []
            for first in range(0, len(texts), chunk_texts):
                piece = texts[first : first + chunk_texts]
                counts: dict[str, int] = {}
                try:
                    # encode's own pipeline, which also counts tokens and truncations (one tokenization)
                    vectors = model._embed_texts(piece, prefix, batch_size, None, False, None, counts=counts)
                    vectors = vectors.float().cpu()
                    check_embeddings(vectors, bool(config.normalize))
                    parts.append(vectors.numpy())
                except ValueError as error:  # say where: encode numbers the texts of its call only
                    rows = shard[first : first + chunk_texts]
                    raise ValueError(f"in the rows {rows[0].where} to {rows[-1].where} (text i below counts from "
                                     f"0: text 0 is {rows[0].where}): {error}") from error
                tokens += counts["tokens"]
                truncated += counts["truncated"]
                bar.update(len(piece))
            embeddings = np.concatenate(parts) if len(parts) > 1 else parts[0]
            remove_temporaries(path)
            claim_record(output_dir, arguments)
            data = shard_bytes(ids, embeddings, digest)
            write_atomically(path, data, fail_midway=fail_after == written)
            checked[index] = hashlib.sha256(data).hexdigest()
            written += 1
            embedded += len(shard)
    seconds = time.perf_counter() - start

    manifest_path = None
    if rank == 0:
        records = wait_for_shards(output_dir, expected, dimension, wait_timeout, checked)
        manifest = dict(arguments, attention=config.attention, pooling=config.pooling, dimension=dimension,
                        normalized=bool(config.normalize), total_rows=total, shards=records)
        manifest_path = output_dir / MANIFEST
        write_json(manifest_path, manifest)
        for stale in glob.glob(glob.escape(str(output_dir)) + "/.*.tmp"):
            Path(stale).unlink(missing_ok=True)  # left by killed runs; every shard is whole now
    where = f"rank {rank}/{world_size}: " if world_size > 1 else ""
    note = f", {truncated} truncated to max_seq_length={config.max_seq_length}" if truncated else ""
    again = f" ({replaced} of them again: damaged or their input changed)" if replaced else ""
    print(f"llm-embed-encode: {where}{embedded} documents, {tokens} tokens{note} in {seconds:.1f} s "
          f"({tokens / max(seconds, 1e-9):.0f} tokens/s); {written} shards written{again}, {resumed} already there; "
          f"corpus: {total} rows in {len(expected)} shards in {output_dir}", flush=True)
    return dict(output_dir=str(output_dir), rows=total, shards=len(expected), embedded_rows=embedded,
                written_shards=written, resumed_shards=resumed, replaced_shards=replaced, tokens=tokens,
                truncated=truncated, seconds=seconds, manifest=str(manifest_path) if manifest_path else None)


def wait_for_shards(output_dir: Path, expected: list[tuple[int, str]], dimension: int, timeout: float,
                    checked: dict[int, str] | None = None) -> list[dict]:
    """Rank 0: wait until every shard file exists and is one this run can keep (:func:`shard_problem`: whole,
    and written for this input; the other ranks write theirs, and replace a damaged or stale one), and
    return the manifest's records (file, rows, sha256). ``checked``: the sha256 of the shards this process
    wrote or already found sound, which are not read and rebuilt again (a shard of 10,000 x 576 took 74 ms).
    Polls the folder, so no process group is needed (with one initialised, torch.distributed, waits at a
    barrier first); a file is read again only when it changed (inode, mtime, size) since it was last found
    wanting."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
    paths = [output_dir / shard_name(index) for index in range(len(expected))]
    extra = sorted(set(glob.glob(glob.escape(str(output_dir)) + "/shard-*.safetensors")) - {str(p) for p in paths})
    if extra:
        raise ValueError(f"{output_dir} holds shard files past the corpus's {len(paths)} shards "
                         f"({', '.join(Path(p).name for p in extra[:5])}): the input has fewer rows than when they "
                         "were written; start over in another --output-dir (or empty this one)")
    records = {index: dict(file=paths[index].name, rows=expected[index][0], sha256=sha256)
               for index, sha256 in (checked or {}).items()}
    problems: dict[int, str] = {}  # per shard not accepted yet: why
    looked: dict[int, tuple[int, int, int]] = {}  # per shard found wanting: its file's (inode, mtime, size) then
    deadline = time.monotonic() + timeout
    while True:
        for index, path in enumerate(paths):
            if index in records:
                continue
            try:
                stat = path.stat()
            except FileNotFoundError:
                problems[index] = "missing"
                continue
            signature = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
            if looked.get(index) == signature:
                continue
            looked[index] = signature
            data = path.read_bytes()
            rows, digest = expected[index]
            problem = shard_problem(data, path, digest, dimension)
            if problem is None:
                records[index] = dict(file=path.name, rows=rows, sha256=hashlib.sha256(data).hexdigest())
                problems.pop(index, None)
            else:
                problems[index] = problem
        if not problems:
            return [records[index] for index in range(len(paths))]
        if time.monotonic() > deadline:
            listed = "; ".join(f"{paths[index].name}: {problems[index]}" for index in sorted(problems)[:5])
            raise TimeoutError(f"{len(problems)} shards not ready in {output_dir} after {timeout:.0f} s ({listed}"
                               f"{'; ...' if len(problems) > 5 else ''}): their ranks have not finished or have "
                               "failed. Rerun with the same arguments (any number of processes; on the CPU, the "
                               "same thread count each) to embed them; the sound shards written are kept")
        time.sleep(WAIT_POLL_SECONDS)


def load_shards(output_dir: str | os.PathLike) -> tuple[list[str], np.ndarray]:
    """All ids and embeddings of a finished run, in corpus order: ``(ids, (rows, dim) float32 array)``.
    Reads ``manifest.json`` and checks each shard's sha256 and row count against it."""
    output_dir = Path(output_dir)
    manifest_path = output_dir / MANIFEST
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{manifest_path}: no manifest: the run has not finished (rerun llm-embed-encode "
                                "with the same arguments to complete it), or this is not its output folder")
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    all_ids: list[str] = []
    parts = []
    for record in manifest["shards"]:
        path = output_dir / record["file"]
        data = path.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        if digest != record["sha256"]:
            raise ValueError(f"{path}: sha256 {digest} differs from the manifest's {record['sha256']}: the file is "
                             f"damaged or was changed; {REWRITE}")
        ids, embeddings = parse_shard(data, path)
        if len(ids) != record["rows"]:
            raise ValueError(f"{path}: {len(ids)} rows, the manifest says {record['rows']}")
        all_ids.extend(ids)
        parts.append(embeddings)
    if len(all_ids) != manifest["total_rows"]:
        raise ValueError(f"{output_dir}: {len(all_ids)} rows in the shards, the manifest says "
                         f"{manifest['total_rows']}")
    embeddings = np.concatenate(parts) if parts else np.zeros((0, manifest["dimension"]), dtype=np.float32)
    return all_ids, embeddings


# ----------------------------------------------------------------------------- the command


def default_device() -> str:
    """CUDA if available (this process's ``LOCAL_RANK`` GPU under torchrun / accelerate), else CPU."""
    import torch

    if torch.cuda.is_available():
        local_rank = os.environ.get("LOCAL_RANK")
        return f"cuda:{int(local_rank)}" if local_rank not in (None, "") else "cuda"
    return "cpu"


def check_device(name: str) -> str:
    """``--device``, checked before the model loads: a device torch can parse (else torch's RuntimeError
    would come with a traceback after the load), of a kind this machine has, and an index it has."""
    import torch

    from .cli import one_line

    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ValueError(f"--device {name!r}: not a device ({one_line(error)}); pass cpu, cuda, cuda:1, "
                         "mps, ...") from error
    if device.type == "cpu":
        return name
    backend = getattr(torch, device.type, None)
    if device.type == "mps":
        backend = torch.backends.mps
    available = getattr(backend, "is_available", None)
    if available is None or not available():
        raise ValueError(f"--device {name!r}: this machine has no {device.type} device available to torch "
                         f"{torch.__version__}; pass --device cpu (or leave it out: cuda if available, else cpu)")
    count = getattr(backend, "device_count", None)
    if device.index is not None and count is not None and device.index >= count():
        raise ValueError(f"--device {name!r}: this machine has {count()} {device.type} device(s), numbered from 0; "
                         "pass one of them")
    return name


def main(argv: list[str] | None = None) -> dict:
    """Parse the arguments (``sys.argv`` by default), load the model, embed; returns
    :func:`encode_corpus`'s summary. The console command runs :func:`cli`, which turns this into an
    exit status."""
    parser = argparse.ArgumentParser(
        prog="llm-embed-encode",
        description="Embed a corpus (JSONL, CSV, TSV or Parquet files) into sharded safetensors files, resumably\n"
                    "and on several processes (RANK / WORLD_SIZE, as torchrun or accelerate launch set them).",
        epilog="Output: shard-00000.safetensors, ... (tensors 'embeddings' float32 (rows, dim) and 'ids', UTF-8 JSON\n"
               "as uint8), run.json, and manifest.json written last. Rerun the same command to resume a killed run;\n"
               "read the result with llm_embed.corpus.load_shards(output_dir). See docs/usage.md.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="saved model folder or Hub id (loaded with AutoModel)")
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="corpus files, read in this order; the format is taken from the extension: .jsonl, "
                             ".csv, .tsv (no quoting), .parquet (needs pyarrow)")
    parser.add_argument("--output-dir", required=True, help="folder for the shards and the manifest (created)")
    parser.add_argument("--text-field", default="text", help="field holding the text (default: %(default)s)")
    parser.add_argument("--title-field", default=None,
                        help="field holding a title, embedded as f'{title} {text}'.strip() like BEIR (default: none)")
    parser.add_argument("--id-field", default="id", help="field holding the row's id (default: %(default)s)")
    parser.add_argument("--prompt-name", default=None,
                        help="a key of the model's prompts, e.g. document (default: the model's default prompt)")
    parser.add_argument("--batch-size", type=int, default=32, help="texts per forward pass (default: %(default)s)")
    parser.add_argument("--shard-size", type=int, default=10000, help="rows per shard file (default: %(default)s)")
    parser.add_argument("--device", default=None, help="cuda, cuda:1, cpu, ... (default: cuda if available, else cpu)")
    parser.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"],
                        help="load the model in this dtype (default: as saved)")
    parser.add_argument("--progress", action="store_true",
                        help="show the progress bar on rank 0 even when stderr is not a terminal")
    parser.add_argument("--wait-timeout", type=float, default=3600.0,
                        help="seconds rank 0 waits for the other ranks' shards before the manifest (default: "
                             "%(default)s)")
    args = parser.parse_args(argv)
    if args.shard_size < 1 or args.batch_size < 1:
        parser.error("--shard-size and --batch-size must be positive")
    check_inputs(args.inputs)  # an unknown extension, a missing or empty file, pyarrow: before the model loads
    check_output_dir(args.output_dir)
    rank_and_world_size()
    device = check_device(args.device) if args.device else default_device()

    import torch

    from .modeling_llm_embed import LLMEmbeddingModel

    kwargs = {"dtype": getattr(torch, args.dtype)} if args.dtype else {}
    # Not AutoModel: a plain decoder's folder would load as that decoder and fail later on a missing
    # attribute; LLMEmbeddingModel refuses it (and a missing folder, a mistyped path) by name.
    model = LLMEmbeddingModel.from_pretrained(args.model, **kwargs)
    model.to(device)
    return encode_corpus(model, args.inputs, args.output_dir, text_field=args.text_field, title_field=args.title_field,
                         id_field=args.id_field, prompt_name=args.prompt_name, batch_size=args.batch_size,
                         shard_size=args.shard_size, model_path=args.model,
                         progress=args.progress or sys.stderr.isatty(), wait_timeout=args.wait_timeout)


def cli() -> int:
    """``llm-embed-encode``: exit status 0 on success, 1 with a one-line reason on an error
    (see :mod:`llm_embed.cli`)."""
    from .cli import run_console

    return run_console(main, "llm-embed-encode")


if __name__ == "__main__":
    sys.exit(cli())
