"""Evaluate a saved model on the local evaluation sets (same as the console command llm-embed-evaluate).

    .venv/bin/python examples/evaluate.py path/to/model --data-dir ../shared/data --tasks stsb scifact \
        --output results.json

``--data-dir`` (relative to the current folder) holds the five tasks' files at fixed paths; nothing
is downloaded (``--help`` shows the layout and every default; docs/evaluation.md says where the data
comes from). ``--limit 100 stackoverflow=1000`` makes a quick run; subsets too small for a task's
metric are refused or warned about.
"""

from llm_embed.evaluation.runner import cli

if __name__ == "__main__":
    raise SystemExit(cli())  # exit status 0 on success, 1 with a one-line reason on an error
