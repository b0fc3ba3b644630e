"""The command line's exit statuses and its one-line messages.

=====  =======================================================================================================
 0     done (inputs that became error rows are listed in the summary; ``--strict`` turns them into status 3)
 1     the job failed: it stopped part-way (storage gone for good, a model that cannot be built; a re-run resumes),
       or every input it ran became an error row
 2     refused before any work: a bad flag, config file, prompt set, input or output (nothing was written)
 3     ``--strict`` only: the job finished but some inputs became error rows (see the manifest's ``error``)
 130   interrupted (Ctrl-C); finished images are in the manifest and a re-run resumes
=====  =======================================================================================================
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["FAILED", "INTERRUPTED", "OK", "REFUSED", "SOME_ERRORS", "config_file_error", "exit_status",
           "one_line", "storage_problem"]

OK, FAILED, REFUSED, SOME_ERRORS, INTERRUPTED = 0, 1, 2, 3, 130


def one_line(exc: BaseException | str) -> str:
    """An exception's message (credentials redacted) on one line: a message of the terminal is one line."""
    from job import io as jio

    return " ".join(jio.redact(exc).split())


#: what an S3 error means for the user, by the words of boto3's and Arrow's messages (compared lower case, without
#: spaces and underscores: ``SIGNATURE_DOES_NOT_MATCH`` and ``SignatureDoesNotMatch`` alike)
_STORAGE_PROBLEMS = (
    (("signaturedoesnotmatch", "invalidaccesskeyid"),
     "the S3 server refused the credentials; check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)"),
    (("accessdenied",), "access denied; the credentials have no permission there, check the bucket's policy"),
    (("nosuchbucket",), "the bucket does not exist: check its name in the URI"),
    (("networkconnection", "couldnotconnect", "connectionrefused", "endpointconnectionerror"),
     "cannot reach the S3 endpoint: is the server up, and AWS_ENDPOINT_URL right?"),
)


def storage_problem(exc: BaseException | str) -> str:
    """A storage error on one line, led by what it means and the fix when the error is a known S3 one (wrong
    credentials, no such bucket, endpoint down): ``"<meaning>: <fix> (<the error>)"``."""
    text = one_line(exc)
    words = re.sub(r"[\s_]", "", text.lower())
    for needles, meaning in _STORAGE_PROBLEMS:
        if any(n in words for n in needles):
            return f"{meaning} ({text})"
    return text


def exit_status(summary: dict[str, Any], *, strict: bool = False) -> int:
    """The status of a run that finished: FAILED when every input it ran became an error row, SOME_ERRORS with
    ``strict`` when some did, else OK."""
    if summary["errors"] and not summary["ok"]:
        return FAILED
    return SOME_ERRORS if strict and summary["errors"] else OK


def config_file_error(path: str, exc: BaseException) -> str:
    """One line for a ``--config`` file that cannot be read or parsed, naming the file, where and the fix."""
    import yaml

    if isinstance(exc, yaml.YAMLError):
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or one_line(exc)
        return (f"--config {path}: not valid YAML{where} ({problem}); fix the file (every key: "
                "python -m job config --doc)")
    return f"--config {path}: {one_line(exc)}; pass the path or s3:// URI of an existing YAML file"
