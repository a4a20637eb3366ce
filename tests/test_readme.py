"""README and docs stay honest: the Quickstart holds exactly the two commands CI runs, the
quick tier plus the slow tier is the full suite, and every local link resolves."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def quickstart_commands() -> list[str]:
    """The lines of the first bash block under README's ``## Quickstart``."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Quickstart\n", 1)[1]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip()]


def test_quickstart_is_two_commands_setup_then_run_and_tests():
    run, tests = quickstart_commands()
    assert run.startswith("bash scripts/setup.sh && .venv/bin/bnnprune run")
    assert tests.startswith("bash scripts/setup.sh --test &&") and "pytest" in tests


def test_ci_runs_the_readme_test_command_and_the_rest_of_the_suite():
    """.ci/run calls README's test command (CI=1 only turns skips into failures), and the
    tier that command leaves out, so CI runs the whole suite."""
    _, tests = quickstart_commands()
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert tests.replace("&& .venv", "&& CI=1 .venv", 1) in ci
    assert tests.endswith('-m "not slow"')
    assert 'CI=1 .venv/bin/python -m pytest -m slow' in ci


def test_slow_marker_is_declared():
    text = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'^\s*"slow: ', text, re.M)


def test_every_local_link_in_readme_and_docs_resolves():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    broken = []
    for page in pages:
        for target in LINK.findall(page.read_text()):
            if "://" in target or target.startswith("mailto:"):
                continue
            if not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
    assert not broken, broken


def test_docs_index_lists_every_page():
    index = (ROOT / "docs" / "README.md").read_text()
    linked = set(LINK.findall(index))
    missing = [p.name for p in sorted((ROOT / "docs").glob("*.md"))
               if p.name != "README.md" and p.name not in linked]
    assert not missing, missing


def test_readme_python_example_is_the_package_docstrings():
    """The README shows the example that tests/test_public_api.py runs (the docstring's)."""
    import bnnprune

    readme = (ROOT / "README.md").read_text()
    block = re.search(r"BEGIN python-example.*?```python\n(.*?)```", readme, re.S)
    assert block, "README.md has no python-example block"
    doc = "\n".join(line[4:] for line in bnnprune.__doc__.splitlines() if line.startswith("    "))
    code = [line for line in block.group(1).splitlines() if line.strip()]
    assert code == doc.splitlines()  # the docstring's blank lines carry no indent: compared without
