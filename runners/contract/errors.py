"""Bad input from the user: the one exception every layer raises for it and the CLI turns into exit code 2."""

from __future__ import annotations


class ConfigError(ValueError):
    """Bad input from the user (config, arguments, data). The CLI prints it and exits with code 2."""
