"""The failures a stage expects and reports in one line (`STAGE: message`), not as a traceback."""

from __future__ import annotations

import re

# A URL's user:password@ (or token@): everything between `://` and `@` in the authority.
_CREDENTIALS = re.compile(r"(?<=://)[^/\s@?#]*@")


class PipelineError(Exception):
    """A known failure: its message says what is wrong and what to do."""


class ParamsError(PipelineError, ValueError):
    """params.yaml holds a value the pipeline cannot use."""


class DataError(PipelineError):
    """A data or model file is missing, unreadable, or not what the stage that writes it writes."""


class SetupError(PipelineError):
    """The environment cannot run what params.yaml asks: a variable unset, a store that cannot work here."""


def without_credentials(text: str) -> str:
    """`text` as it may be printed or recorded: every URL's user:password@ left out."""
    return _CREDENTIALS.sub("", text)
