"""The errors every layer raises and the CLI turns into a message: bad input from the user (exit code 2), and a
request to a run folder's storage that failed (exit code 1)."""

from __future__ import annotations


class ConfigError(ValueError):
    """Bad input from the user (config, arguments, data). The CLI prints it and exits with code 2."""


class StorageError(OSError):
    """A request to a run folder in storage (s3://, gs://, …) that failed once the file system's own retries were
    spent: what `RunStore` raises for any error of pyarrow's file system but a missing file. An OSError, as the error
    it stands for; the CLI prints it and exits with code 1."""

    def __init__(self, location: str, err: OSError):
        super().__init__(
            f"a request to the run folder's storage ({location}) failed: {err}; check the endpoint and the "
            "credentials (for S3: AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID), then run the same command again (what "
            "finished is kept)"
        )
