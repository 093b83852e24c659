"""No credentials in what git tracks (the tests hold fake ones on purpose)."""

import re

from tests.helpers import REPO_ROOT, run_in


SECRET_PATTERNS = [
    r"AKIA[0-9A-Z]{16}",  # AWS access key id
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----",
    r"(?i)(password|secret|token)\s*[:=]\s*['\"][^'\"]{6,}['\"]",
    r"[a-z+]+://[^/\s:@'\"]+:[^/\s@'\"]+@",  # user:password@ in a URL
]


def test_no_credentials_are_committed():
    tracked = run_in(REPO_ROOT, "git", "ls-files").split()
    offenders = []
    for name in tracked:
        path = REPO_ROOT / name
        if name.startswith("tests/") or not path.is_file() or path.stat().st_size > 1_000_000:
            continue  # the tests hold fake credentials on purpose
        text = path.read_text(errors="ignore")
        offenders += [f"{name}: {p}" for p in SECRET_PATTERNS if re.search(p, text)]
    assert offenders == []
