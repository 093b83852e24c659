"""README.md and docs/ as a reader meets them: every relative link and anchor leads somewhere, and
the README's results are the committed reports' (reports/metrics.json, reports/comparison.csv)."""

import json
import re
from pathlib import Path

import pandas as pd
import pytest

from tests.helpers import REPO_ROOT

PAGES = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)


def github_anchor(heading: str) -> str:
    """The id GitHub gives a heading: lower case, punctuation but hyphens and underscores dropped,
    spaces as hyphens (hand-checked against GitHub's rendering of this repository's headings)."""
    text = re.sub(r"`|\*\*|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip()).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every heading's anchor in `page`, numbered as GitHub numbers repeats (-1, -2, ...)."""
    seen: dict[str, int] = {}
    found = set()
    for line in FENCE.sub("", page.read_text()).splitlines():
        if match := re.match(r"#{1,6} (.+)", line):
            anchor = github_anchor(match.group(1))
            found.add(f"{anchor}-{seen[anchor]}" if anchor in seen else anchor)
            seen[anchor] = seen.get(anchor, 0) + 1
    return found


def relative_links(page: Path) -> list[str]:
    return [target for target in LINK.findall(FENCE.sub("", page.read_text())) if not re.match(r"[a-z]+:", target)]


def test_the_anchor_rule_on_hand_worked_headings():
    assert github_anchor("Is there a better one? The search") == "is-there-a-better-one-the-search"
    assert github_anchor("`make search`: budgets and the frontier") == "make-search-budgets-and-the-frontier"
    assert github_anchor("Share trained models (DVC remote)") == "share-trained-models-dvc-remote"


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.relative_to(REPO_ROOT).as_posix())
def test_every_relative_link_and_anchor_leads_somewhere(page):
    broken = []
    for target in relative_links(page):
        path, _, anchor = target.partition("#")
        destination = (page.parent / path).resolve() if path else page
        if not destination.exists():
            broken.append(f"{target}: no such file")
        elif anchor and destination.suffix == ".md" and anchor not in anchors(destination):
            broken.append(f"{target}: no heading with that anchor in {destination.relative_to(REPO_ROOT)}")
    assert not broken, f"{page.relative_to(REPO_ROOT)}: " + "; ".join(broken)


def readme_table(readme: str) -> pd.DataFrame:
    """The README's results table (the one whose first column is `variant`), as text cells."""
    lines = [line for line in readme.splitlines() if line.startswith("| variant |")]
    assert len(lines) == 1, "one results table, headed `| variant |`"
    start = readme.splitlines().index(lines[0])
    rows = []
    for line in readme.splitlines()[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip().strip("`*") for cell in line.strip("|").split("|")])
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    return pd.DataFrame(rows, columns=header)


def test_the_readme_results_are_the_committed_reports():
    readme = (REPO_ROOT / "README.md").read_text()
    comparison = pd.read_csv(REPO_ROOT / "reports/comparison.csv").set_index("variant")
    metrics = json.loads((REPO_ROOT / "reports/metrics.json").read_text())
    table = readme_table(readme).set_index("variant")
    assert list(table.index) == list(comparison.index), "every variant, in the report's order (best ensemble on validation first)"
    for variant, row in table.iterrows():
        report = comparison.loc[variant]
        assert row["served ensemble: validation accuracy"] == f"{report['ensemble_val_accuracy']:.4f}", variant
        assert row["its test accuracy [95% Wilson]"] == (
            f"{report['ensemble_test_accuracy']:.4f} [{report['ensemble_test_ci_low']:.4f}, {report['ensemble_test_ci_high']:.4f}]"
        ), variant
        assert row["replicates: test accuracy, mean ± sd"] == f"{report['test_accuracy_mean']:.4f} ± {report['test_accuracy_std']:.4f}", variant
        tied = "champion" if pd.isna(report["tied_with_champion"]) else ("yes" if report["tied_with_champion"] else "no")
        assert row["tied with champion"] == tied, variant
    champion = (
        f"**Champion: `{metrics['champion']}`**: its seed ensemble, what `@champion` serves, has the best validation accuracy, "
        f"{metrics['champion_ensemble_val_accuracy']:.4f}; on the test set it scores {metrics['champion_ensemble_test_accuracy']:.4f}, "
        f"95% Wilson interval [{metrics['champion_ensemble_test_ci_low']:.4f}, {metrics['champion_ensemble_test_ci_high']:.4f}]"
    )
    assert champion in " ".join(readme.split()), "the README's champion sentence, from reports/metrics.json"
