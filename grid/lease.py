"""Exactly once across drivers, with no database: a trial of a run folder in S3 runs under a lease, the object
`RUN/.leases/<trial_id>.json`, taken and renewed with S3's conditional writes.

- Taken with `If-None-Match: *` (the write fails if the object exists), so of two drivers only one gets it.
- Renewed every quarter of its term with `If-Match: <its ETag>`: each renewal changes the object, so its ETag.
- A driver that finds the lease held waits. When the holder has not renewed it for a whole term (by the waiting
  driver's own clock: no two machines' clocks are compared), the waiter takes it over with `If-Match` on the ETag it
  watched go stale, so of two waiters only one succeeds. The trial then resumes from its checkpoint in storage.
- A holder whose renewal fails the condition has been taken over: it stops the trial (`LeaseLost`) and writes no
  result.
- Released (deleted, `If-Match`) once the trial's result.json is in storage; a waiting driver then finds the trial
  finished and takes it from the cache.

A store without conditional writes (or a URI that is not s3://) gets no lease: a warning says so, and each node's
lock alone keeps a trial from running twice at once on that node. The lease's term is FTGRID_LEASE_S seconds
(default 60).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from urllib.parse import parse_qsl, urlsplit

from botocore.exceptions import BotoCoreError, ClientError

from runners.contract.errors import ConfigError
from runners.contract.store import RunStore

log = logging.getLogger("ftgrid.lease")

LEASES = ".leases"
LEASE_HELD_BY = "lease_held_by"  # the report of a trial that waits on another driver's lease: who holds it
DEFAULT_TERM_S = 60.0
_conditional: dict[tuple, bool] = {}  # (endpoint, bucket) → whether the server honours conditional writes


class LeaseLost(RuntimeError):
    """Another driver took this trial's lease over (this one had not renewed it for a whole term)."""


def term_s() -> float:
    text = os.environ.get("FTGRID_LEASE_S") or str(DEFAULT_TERM_S)
    try:
        term = float(text)
    except ValueError:
        term = -1.0
    if not 2 <= term <= 86400:
        raise ConfigError(f"FTGRID_LEASE_S={text}: a lease's term in seconds, between 2 and 86400")
    return term


class Lease:
    """One trial's lease in an S3 run folder (see the module's text)."""

    def __init__(self, client, bucket: str, key: str, term: float):
        self.client, self.bucket, self.key, self.term = client, bucket, key, term
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.etag: str | None = None
        self.lost = False
        self._renewals = 0
        self._stop = threading.Event()
        # The trial renews the lease itself (before its result goes to storage) while the background thread renews
        # it too: one renewal at a time, or one would send the ETag the other is replacing and read its own
        # holder's write as a takeover.
        self._writing = threading.Lock()

    def _body(self) -> bytes:
        self._renewals += 1
        fields = {"holder": self.holder, "term_s": self.term, "renewal": self._renewals, "at": time.time()}
        return json.dumps(fields).encode()

    def _put(self, **condition) -> bool:
        """One conditional write of the lease: True if it was made, False if the condition failed."""
        try:
            reply = self.client.put_object(Bucket=self.bucket, Key=self.key, Body=self._body(), **condition)
        except ClientError as err:
            if _code(err) in ("PreconditionFailed", "ConditionalRequestConflict", "412", "409"):
                return False
            raise
        self.etag = reply["ETag"]
        return True

    def _look(self) -> tuple[str, dict] | None:
        """(ETag, content) of the lease as it is now, or None if nobody holds it."""
        try:
            reply = self.client.get_object(Bucket=self.bucket, Key=self.key)
        except ClientError as err:
            if _code(err) in ("NoSuchKey", "404"):
                return None
            raise
        try:
            content = json.loads(reply["Body"].read())
        except ValueError:
            content = {}
        return reply["ETag"], content if isinstance(content, dict) else {}

    def acquire(self, on_wait=None) -> None:
        """Take the lease, waiting while another driver holds it and renews it."""
        seen, since, told = None, time.monotonic(), False
        while True:
            if self._put(IfNoneMatch="*"):
                return
            now = self._look()
            if now is None:
                continue  # released meanwhile: try again at once
            etag, content = now
            if etag != seen:  # renewed (or new): its term starts again, on this driver's clock
                seen, since = etag, time.monotonic()
            term = max(self.term, _number(content.get("term_s")))
            if time.monotonic() - since >= term:
                if self._put(IfMatch=etag):
                    log.warning("%s: took over the lease of %s (not renewed for %.0f s)", self.key, content, term)
                    return
                continue
            if not told:
                log.info("%s: held by %s; waiting", self.key, content.get("holder", "another driver"))
                if on_wait is not None:
                    on_wait(content.get("holder", "another driver"))
                told = True
            time.sleep(min(2.0, term / 4))

    def renew(self) -> None:
        """Renew the lease now; LeaseLost if another driver has taken it over."""
        with self._writing:
            if not self.lost and not self._put(IfMatch=self.etag):
                self.lost = True
        self.check()

    def check(self) -> None:
        """LeaseLost if the renewals found the lease taken over."""
        if self.lost:
            raise LeaseLost(f"{self.key}: another driver took this trial over; this one stops and writes nothing")

    def _renew_every_quarter(self) -> None:
        while not self._stop.wait(self.term / 4):
            try:
                self.renew()
            except LeaseLost:
                log.error("%s: lease taken over by another driver", self.key)
                return
            except (ClientError, BotoCoreError) as err:  # the storage unreachable a moment: the next one tries
                log.warning("%s: could not renew the lease (%s)", self.key, err)

    def release(self) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self.key, IfMatch=self.etag)
        except (ClientError, BotoCoreError) as err:  # taken over meanwhile, or the storage unreachable: it expires
            log.info("%s: not released (%s)", self.key, err)

    @contextmanager
    def held(self, on_wait=None) -> Iterator[Lease]:
        """The lease, taken (waiting if need be) and renewed in the background until the block ends."""
        self.acquire(on_wait)
        renewer = threading.Thread(target=self._renew_every_quarter, name=f"lease {self.key}", daemon=True)
        renewer.start()
        try:
            yield self
        finally:
            self._stop.set()
            renewer.join()
            if not self.lost:
                self.release()


class NoLease:
    """What a trial holds where there is no lease to take (a local or shared path; a store without conditional
    writes): the node's lock alone."""

    def check(self) -> None:
        pass

    def renew(self) -> None:
        pass


@contextmanager
def trial_lease(store: RunStore, trial_id: str, on_wait=None) -> Iterator[Lease | NoLease]:
    """The lease on `trial_id` of a run folder in S3, held for the block; a NoLease for any other run folder."""
    if store.local is not None:
        yield NoLease()
        return
    found = _s3(store)
    if found is None:
        yield NoLease()
        return
    client, bucket, prefix = found
    key = "/".join(part for part in (prefix, LEASES, f"{trial_id}.json") if part)
    with Lease(client, bucket, key, term_s()).held(on_wait) as lease:
        yield lease


def _s3(store: RunStore):
    """(boto3 client, bucket, key prefix) of an s3:// run folder whose server honours conditional writes; None,
    with a warning, for any other store."""
    base, _, query = store.location.partition("?")
    parts = urlsplit(base)
    if parts.scheme != "s3":
        _warn_once((parts.scheme,), f"{parts.scheme}:// run folders get no lease")
        return None
    import boto3

    params = dict(parse_qsl(query))
    endpoint = params.get("endpoint_override")
    if endpoint and "://" not in endpoint:
        endpoint = f"{params.get('scheme', 'https')}://{endpoint}"
    client = boto3.client("s3", endpoint_url=endpoint or None, region_name=params.get("region"))
    bucket, prefix = parts.netloc, parts.path.strip("/")
    where = (client.meta.endpoint_url, bucket)
    if where not in _conditional:
        _conditional[where] = _honours_conditions(client, bucket, prefix)
    if not _conditional[where]:
        _warn_once(where, f"the server at {where[0]} ignores conditional writes")
        return None
    return client, bucket, prefix


def _honours_conditions(client, bucket: str, prefix: str) -> bool:
    """Whether a second `If-None-Match: *` write of one object is refused, as it must be for leases to work."""
    probe = Lease(client, bucket, "/".join(p for p in (prefix, LEASES, f".probe-{uuid.uuid4().hex}") if p), 60)
    try:
        return probe._put(IfNoneMatch="*") and not probe._put(IfNoneMatch="*")
    except ClientError as err:  # NotImplemented and the like
        log.info("conditional write refused: %s", err)
        return False
    finally:
        with suppress(ClientError):
            client.delete_object(Bucket=bucket, Key=probe.key)


_warned: set = set()


def _warn_once(what: tuple, why: str) -> None:
    if what not in _warned:
        _warned.add(what)
        log.warning(
            "%s: two drivers running this grid at once could both run a trial (each node's lock still holds)", why
        )


def _code(err) -> str:
    return str(err.response.get("Error", {}).get("Code", ""))


def _number(value) -> float:
    return float(value) if isinstance(value, int | float) else 0.0
