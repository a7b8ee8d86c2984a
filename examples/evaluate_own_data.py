"""Evaluate a model on data of your own: four small files written here, scored from the command line.

    .venv/bin/python examples/evaluate_own_data.py [--model path/to/saved/model] [--keep DIR]

Writes, into a temporary folder (or ``--keep DIR``), the four kinds of task in the three formats the
evaluation reads, each with column names of its own so that the ``key=value`` renames show:

- ``faq_pairs.csv``: STS pairs (question, answer, similarity 0-5);
- ``intents_train.tsv`` / ``intents_test.tsv``: classification (utterance, intent);
- ``docs.jsonl`` / ``questions.jsonl`` / ``relevant.tsv``: retrieval (a corpus, queries, qrels);
- ``topics.jsonl``: clustering (headline, topic);

then runs exactly what a shell would run (``llm-embed-evaluate MODEL --task ... --output ...``) and
prints the report. Without ``--model`` the model is the bundled SmolLM2-135M with mean pooling,
untrained (saved into the folder first, about 525 MiB, deleted at the end unless ``--keep``). About
half a minute on two CPU cores. The sets are tiny, so the scores they make noisy are marked (``*``)
and the reasons listed under the table (36 headlines in 3 topics are enough for clustering, which is
not marked): the point is the file formats and the command, not the numbers.
"""

from __future__ import annotations

import argparse
import csv
import json
import shlex
import tempfile
from pathlib import Path

from llm_embed.evaluation import main as evaluate_command

TOPICS = {
    "cards": ["How do I reset my card PIN?", "My card was stolen, what now?", "Can I freeze my debit card?",
              "Where do I activate a new card?", "Why was my card declined at the shop?",
              "How long until my replacement card arrives?", "Can I change the PIN at an ATM?",
              "My contactless payment does not work", "How do I order a second card?",
              "The card reader says my card is blocked", "Is there a fee for a new card?",
              "I lost my card on holiday"],
    "transfers": ["How long does an international transfer take?", "Can I cancel a transfer I just sent?",
                  "What is the fee for sending money abroad?", "My transfer has not arrived yet",
                  "How do I add a new payee?", "Is there a daily limit on transfers?",
                  "Why was my transfer returned?", "Can I schedule a monthly transfer?",
                  "Which details do I need for an IBAN transfer?", "The recipient says they got nothing",
                  "How do I send money to a friend?", "Can I transfer money in dollars?"],
    "weather": ["Heavy rain expected across the north tonight", "Heatwave brings record temperatures",
                "Snow closes mountain roads for the weekend", "Storm warning issued for the coast",
                "Sunny skies return after a week of fog", "Hail damages crops in the valley",
                "Strong winds knock down power lines", "Mild and dry weather for the holidays",
                "Flood alerts as rivers burst their banks", "Thunderstorms likely on Friday afternoon",
                "First frost of the autumn arrives early", "Drought continues for a third month"],
}

FAQ = [  # question, answer, how similar (0-5)
    ("How do I reset my PIN?", "You can change your PIN in the app under Cards, Security.", 4.6),
    ("How do I reset my PIN?", "Our branches open at 9am on weekdays.", 0.4),
    ("When are you open?", "Our branches open at 9am on weekdays.", 4.8),
    ("When are you open?", "International transfers take two business days.", 0.3),
    ("How long do transfers abroad take?", "International transfers take two business days.", 4.7),
    ("How long do transfers abroad take?", "You can change your PIN in the app under Cards, Security.", 0.2),
    ("My card is lost", "Freeze a lost card at once in the app and order a new one.", 4.5),
    ("My card is lost", "A transfer abroad costs a flat fee of 5 euros.", 0.5),
    ("What does a foreign transfer cost?", "A transfer abroad costs a flat fee of 5 euros.", 4.9),
    ("What does a foreign transfer cost?", "Freeze a lost card at once in the app and order a new one.", 0.6),
    ("Is the bank open on Saturday?", "On Saturdays branches are open until noon.", 4.4),
    ("Is the bank open on Saturday?", "You can change your PIN in the app under Cards, Security.", 0.8),
]


def write_files(folder: Path) -> list[list[str]]:
    """The example files, and one ``--task`` (its words) per task."""
    with open(folder / "faq_pairs.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["question", "answer", "similarity"])
        writer.writerows(FAQ)
    banking = {topic: texts for topic, texts in TOPICS.items() if topic != "weather"}
    for split, rows in (("train", slice(0, 8)), ("test", slice(8, 12))):
        with open(folder / f"intents_{split}.tsv", "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle, delimiter="\t")
            writer.writerow(["utterance", "intent"])
            writer.writerows((text, topic) for topic, texts in banking.items() for text in texts[rows])
    # retrieval: the answers are the corpus, the questions the queries, each question's good answer relevant
    documents = {answer: f"doc{i}" for i, answer in enumerate(dict.fromkeys(answer for _, answer, _ in FAQ))}
    questions = {question: f"q{i}" for i, question in enumerate(dict.fromkeys(question for question, _, _ in FAQ))}
    relevant = [(questions[question], documents[answer]) for question, answer, score in FAQ if score >= 4]
    (folder / "docs.jsonl").write_text("".join(json.dumps({"id": did, "body": text}) + "\n"
                                               for text, did in documents.items()), encoding="utf-8")
    (folder / "questions.jsonl").write_text("".join(json.dumps({"id": qid, "question": text}) + "\n"
                                                    for text, qid in questions.items()), encoding="utf-8")
    (folder / "relevant.tsv").write_text("query\tdoc\tgrade\n" + "".join(f"{q}\t{d}\t1\n" for q, d in relevant),
                                         encoding="utf-8")
    (folder / "topics.jsonl").write_text("".join(json.dumps({"headline": text, "topic": topic}) + "\n"
                                                 for topic, texts in TOPICS.items() for text in texts),
                                         encoding="utf-8")
    return [
        ["sts:faq_pairs.csv", "sentence1=question", "sentence2=answer", "score=similarity", "name=FAQ-pairs"],
        ["classification:intents_train.tsv,intents_test.tsv", "text=utterance", "label=intent", "name=Intents"],
        ["retrieval:docs.jsonl,questions.jsonl,relevant.tsv", "doc_id=id", "text=body", "query_id=id",
         "query=question", "qrels_query_id=query", "qrels_doc_id=doc", "qrels_score=grade", "name=FAQ-search"],
        ["clustering:topics.jsonl", "text=headline", "label=topic", "name=Headlines"],
    ]


def bundled_model(folder: Path) -> str:
    """The bundled SmolLM2-135M backbone with mean pooling (no trained head needed), saved."""
    from llm_embed import LLMEmbeddingModel
    from llm_embed.bundled import smollm2_backbone_path

    model = LLMEmbeddingModel.from_backbone(smollm2_backbone_path(), attention="causal", pooling="mean")
    model.save_pretrained(folder / "model")
    return str(folder / "model")


def run(folder: Path, model: str | None, kept: bool) -> list:
    specs = write_files(folder)
    model = model or bundled_model(folder)
    argv = [model, "--output", str(folder / "results.json"), "--no-progress", "--batch-size", "16"]
    for words in specs:
        argv += ["--task", *spec_with_folder(words, folder)]
    files = " ".join(sorted(p.name for p in folder.iterdir() if p.is_file()))
    shown = [Path(model).name if Path(model).parent == folder else model, "--output", "results.json"]
    shown += [word for words in specs for word in ("--task", *words)]
    print(f"wrote {files} into {folder}\nrunning, as from inside that folder: llm-embed-evaluate "
          f"{shlex.join(shown)}\n", flush=True)
    results = evaluate_command(argv)
    print(f"\nper-item scores in {folder / 'results.json'}" if kept else
          "\nper-item scores were in results.json, deleted with the folder: pass --keep DIR to keep them")
    return results


def spec_with_folder(words: list[str], folder: Path) -> list[str]:
    kind, _, files = words[0].partition(":")
    return [f"{kind}:{','.join(str(folder / f) for f in files.split(','))}", *words[1:]]


def main(argv: list[str] | None = None) -> list:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None,
                        help="a saved llm_embed model or LoRA artifact (default: bundled SmolLM2-135M, mean pooling)")
    parser.add_argument("--keep", default=None, help="write the files (and the model) here and keep them")
    args = parser.parse_args(argv)
    if args.keep:
        Path(args.keep).mkdir(parents=True, exist_ok=True)
        return run(Path(args.keep), args.model, kept=True)
    with tempfile.TemporaryDirectory(prefix="llm_embed_own_data_") as folder:
        return run(Path(folder), args.model, kept=False)


if __name__ == "__main__":
    main()
