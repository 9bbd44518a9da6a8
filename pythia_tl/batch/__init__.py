"""Batch conversion of many models and training steps: resumable, deduplicated, shardable.

``list_work`` turns a request into this shard's work list before any work starts;
``run_batch`` resumes, converts and summarises it.
"""

from pythia_tl.batch.request import BatchRequest, WorkList, list_work
from pythia_tl.batch.runner import BatchReporter, run_batch
from pythia_tl.batch.step_spec import StepSpec, parse_step_spec
from pythia_tl.batch.summary import BatchSummary, RevisionResult
from pythia_tl.batch.work import Shard, WorkItem, parse_shard

__all__ = [
    "BatchReporter",
    "BatchRequest",
    "BatchSummary",
    "RevisionResult",
    "Shard",
    "StepSpec",
    "WorkItem",
    "WorkList",
    "list_work",
    "parse_shard",
    "parse_step_spec",
    "run_batch",
]
