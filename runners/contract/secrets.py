"""Credentials never written or printed: the userinfo of a URI (`https://user:pw@host` → `https://***@host`), the
values of keys that name a secret (`token`, `password`, `api_key`, …) and of secret environment variables
(`HF_TOKEN`, `AWS_*`, `WANDB_API_KEY`, anything named like a token, secret, password or key).

Everything ftgrid writes to a file or prints passes what it did not make itself through here: grid.yaml and
best.yaml (`redact`), console lines and error messages (`scrub`), trial.log's command lines, Ray's saved state.
The real values stay in memory, where they are used to connect.
"""

from __future__ import annotations

import os
import re

MASK = "***"
# scheme://userinfo@ — the userinfo is everything up to the last @ before the host's end
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/?#\s@]*(?:@[^/?#\s@]*)*)@")
# a key is secret when one of its words (split at _ - . and case changes) is one of these, or it ends in a key pair
_SECRET_WORDS = {"token", "secret", "password", "passwd", "apikey", "credential", "credentials", "auth"}
_SECRET_PAIRS = ("api_key", "access_key", "private_key", "secret_key", "account_key")
_SECRET_ENV = re.compile(r"^(AWS_.+|HF_TOKEN|WANDB_API_KEY|.*(TOKEN|SECRET|PASSWORD|PASSWD|API_KEY|CREDENTIAL).*)$")
_SHORTEST = 6  # an environment value shorter than this is not searched for in text (it would match anywhere)


def secret_key(key: str) -> bool:
    """Whether a mapping key names a secret (its value is masked)."""
    name = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", str(key)).lower().replace("-", "_").replace(".", "_")
    return bool(_SECRET_WORDS & set(name.split("_"))) or name.endswith(_SECRET_PAIRS)


def secret_env(name: str) -> bool:
    """Whether an environment variable holds a secret."""
    return bool(_SECRET_ENV.match(name.upper()))


def redact_uri(text: str) -> str:
    """The text with the userinfo of every URI in it masked: `s3://key:secret@host/x` → `s3://***@host/x`."""
    return _USERINFO.sub(lambda m: f"{m['scheme']}{MASK}@", text)


def secret_values(environ=None) -> list[str]:
    """The values of the secret environment variables, longest first."""
    env = os.environ if environ is None else environ
    values = {value for name, value in env.items() if secret_env(name) and len(value) >= _SHORTEST}
    return sorted(values, key=len, reverse=True)


def scrub(text: str, environ=None) -> str:
    """Text to write or print: URI userinfo masked, and any secret environment variable's value."""
    text = redact_uri(str(text))
    for value in secret_values(environ):
        text = text.replace(value, MASK)
    return text


def redact(value, environ=None):
    """A JSON-like value (what a YAML or JSON file holds) with every secret masked: the values of secret-named
    keys, and secrets inside strings (`scrub`)."""
    if isinstance(value, dict):
        return {k: MASK if secret_key(k) and v not in (None, "") else redact(v, environ) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(v, environ) for v in value]
    return scrub(value, environ) if isinstance(value, str) else value
