"""Evaluate a saved model on the local evaluation sets (same as the console command llm-embed-evaluate).

    python examples/evaluate.py path/to/model --data-dir ../shared/data --tasks stsb scifact --output results.json
"""

from llm_embed.evaluation.runner import cli

if __name__ == "__main__":
    raise SystemExit(cli())  # exit status 0 on success, 1 with a one-line reason on an error
