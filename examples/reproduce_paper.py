"""Reproduce Tang & Yang (2024): train the five designs on one backbone and compare them.

    # CPU smoke run (minutes): tiny budget, a few items per task
    python examples/reproduce_paper.py --max-steps 5 --batch-size 8 --task-limit 50 stackoverflow=1000 \
        --output-dir study_out
    # the real study (GPU, bf16; docs/results.md has the run and its command)
    python examples/reproduce_paper.py --seeds 0 1 --max-steps 200 --batch-size 64 --bf16 --output-dir study_out

Writes study_out/results.json, results.md (tables by category, paired significance tests, the
paper's claims checked) and designs.png. Same as the console command ``llm-embed-study``;
all options: python examples/reproduce_paper.py --help.
"""

from llm_embed.study import cli

if __name__ == "__main__":
    raise SystemExit(cli())  # exit status 0 on success, 1 with a one-line reason on an error
