"""What every claimed job's run shares: how its outcome becomes the row's final state.

A subclass does the work in `work()` and returns the task's result; `run()` turns what it
raises into the row's state: cancellation, bad input and storage failures end the job with a
message for the user, a database error goes up (the task retries, and the lease lets another
worker take the job over), anything else fails the job as an internal error.
"""

from __future__ import annotations

import logging

from sqlalchemy.exc import SQLAlchemyError

from app.catalog import jobs
from app.catalog.db import session_factory
from app.settings import get_settings
from app.storage import StorageError
from worker import runtime
from worker.erasure.errors import ErasureCancelled, ErasureInputError
from worker.job_lease import JobLease
from worker.storage_retry import with_storage_retries

logger = logging.getLogger(__name__)


class JobRun:
    table: type  # the job's table (ErasureJob or EvaluationJob)
    noun: str  # "job" or "evaluation", in logs
    stored_what: str  # what a storage failure could not store, in the user's message

    def __init__(self, job, lease: JobLease):
        self.job, self.lease = job, lease
        self.settings = get_settings()
        self.store = runtime.store()

    def work(self) -> dict:
        raise NotImplementedError

    def run(self) -> dict:
        try:
            return self.work()
        except ErasureCancelled:
            if self.lease.lost.is_set():
                return {"status": "lost"}
            return self.finish("cancelled", error=None)
        except ErasureInputError as exc:
            return self.finish("failed", error=str(exc))
        except StorageError as exc:
            return self.finish("failed", error=f"{self.stored_what} could not be stored: {exc}")
        except SQLAlchemyError:
            raise
        except Exception as exc:
            logger.exception("%s %s failed", self.noun, self.job.id)
            return self.finish("failed", error=f"internal error: {type(exc).__name__}: {exc}")

    def with_retries(self, action, what: str):
        """`action()` retried on transient storage errors, each retry noted on the lease."""
        return with_storage_retries(
            action,
            what=what,
            attempts=self.settings.STORAGE_ATTEMPTS,
            backoff_s=self.settings.STORAGE_BACKOFF_S,
            on_retry=self.lease.note,
        )

    def finish(self, status: str, **values) -> dict:
        with session_factory()() as db:
            jobs.finish(
                db,
                self.job.id,
                worker=self.lease.worker,
                status=status,
                stage_timings=dict(self.lease.timings),
                table=self.table,
                **values,
            )
        logger.info("%s %s: %s %s", self.noun, self.job.id, status, values.get("error", ""))
        return {"status": status, **values}
