"""What a newcomer meets following the docs on a fresh clone (issue 11): commands written so that
they run as given, GPU-only commands labelled, links that resolve, the quickstart cleaning up."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
COMMAND_DOCS = [ROOT / "README.md", ROOT / "docs" / "training.md", ROOT / "docs" / "evaluation.md"]


def bash_blocks(path: Path) -> list[tuple[int, str]]:
    """(offset, body) of every ```bash block."""
    text = path.read_text(encoding="utf-8")
    return [(m.start(), m.group(1)) for m in re.finditer(r"```bash\n(.*?)```", text, re.S)]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_readme_starts_with_its_two_commands():
    first = bash_blocks(ROOT / "README.md")[0][1].splitlines()
    assert first == [
        "bash scripts/setup.sh && .venv/bin/python examples/quickstart.py   # main job: SmolLM2-135M -> embedding "
        "model, search, save, reload",
        "bash scripts/setup.sh && .venv/bin/python -m pytest -q             # the whole test suite",
    ]


@pytest.mark.parametrize("path", COMMAND_DOCS, ids=lambda p: p.name)
def test_console_commands_are_written_with_the_virtualenv(path):
    """A bare ``llm-embed-train`` is "command not found" outside an activated .venv; the docs write
    ``.venv/bin/llm-embed-...`` and say how to activate it."""
    bare = [line for _, block in bash_blocks(path) for line in block.splitlines()
            if re.match(r"\s*llm-embed-", line)]
    assert not bare, bare
    assert "source .venv/bin/activate" in path.read_text(encoding="utf-8")


@pytest.mark.parametrize("path", COMMAND_DOCS, ids=lambda p: p.name)
def test_bf16_commands_are_labelled_gpu_only(path):
    """``--bf16`` stops a CPU run ("Your setup doesn't support bf16/gpu")."""
    text = path.read_text(encoding="utf-8")
    for offset, block in bash_blocks(path):
        if "--bf16" in block:
            assert "GPU only" in text[max(0, offset - 600):offset] + block, block


def test_training_doc_has_a_cpu_command():
    text = (ROOT / "docs" / "training.md").read_text(encoding="utf-8")
    section = text[text.index("## One process"):text.index("## ", text.index("## One process") + 3)]
    cpu = [block for block in re.findall(r"```bash\n(.*?)```", section, re.S) if "--bf16" not in block]
    assert cpu and "On the CPU" in section and "On one GPU" in section


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_relative_links_and_anchors_resolve(path):
    text = path.read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+://", target) or target.startswith("mailto:"):
            continue
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        assert linked.exists(), f"{path.name}: {target}"
        if anchor and linked.suffix == ".md":
            headings = re.findall(r"^#+ (.+)$", linked.read_text(encoding="utf-8"), re.M)
            assert anchor in {slug(h) for h in headings}, f"{path.name}: {target}"


@pytest.mark.slow
def test_quickstart_runs_and_deletes_its_temporary_model(tmp_path):
    """The README's main job: the saved model (about 525 MiB) goes to a temporary folder that is
    removed at the end (it used to stay in /tmp, unannounced)."""
    env = dict(os.environ, TMPDIR=str(tmp_path))
    # two fine-tuning steps instead of the default 16: the same path, a tenth of the time
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "quickstart.py"), "--steps", "2"], cwd=ROOT,
                            env=env,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "identical embeddings after reload: OK" in result.stdout
    assert re.search(r"fine-tuned 2 steps x 16 triplets of snli_triplets_512.jsonl \(512 rows\) in \d+s: "
                     r"loss \d+\.\d+ -> \d+\.\d+", result.stdout)
    assert "the card-PIN answer ranks" in result.stdout
    assert "training for 2 steps on general-domain data" in result.stdout  # the steps run, not the default 16
    assert "16 steps" not in result.stdout
    assert not list(tmp_path.glob("llm_embed_quickstart_train_*"))
    assert re.search(r"saved to .*llm_embed_quickstart_\w+ \(\d+ MiB\)", result.stdout)
    assert "deleted the temporary folder" in result.stdout
    assert not list(tmp_path.glob("llm_embed_quickstart_*"))
