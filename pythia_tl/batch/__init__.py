"""Batch conversion of many models and training steps: resumable, deduplicated, shardable.

``plan_batch`` turns a request into this shard's work list before any work starts;
``run_batch`` resumes, converts and summarises it.
"""

from pythia_tl.batch.plan import BatchPlan, BatchRequest, plan_batch
from pythia_tl.batch.runner import BatchReporter, run_batch
from pythia_tl.batch.step_spec import StepSpec, parse_step_spec
from pythia_tl.batch.summary import BatchSummary, RevisionResult
from pythia_tl.batch.work import Shard, WorkItem, parse_shard

__all__ = [
    "BatchPlan",
    "BatchReporter",
    "BatchRequest",
    "BatchSummary",
    "RevisionResult",
    "Shard",
    "StepSpec",
    "WorkItem",
    "parse_shard",
    "parse_step_spec",
    "plan_batch",
    "run_batch",
]
