#!/usr/bin/env bash
# Convert a Pythia checkpoint suite on a Slurm cluster: one array task per shard.
#
#   mkdir -p logs && sbatch examples/batch_slurm.sh
#   MODELS="pythia-1b pythia-1b-deduped" STEPS=all OUT=/shared/pythia-tl sbatch --array=1-32 examples/batch_slurm.sh
#
# Task K of N converts the K-th of N disjoint parts of the sorted (model, step) list into the
# shared folder OUT and writes its own OUT/summary-K-of-N.json; no two tasks write the same file.
# Array task IDs must run from 1 to N, as --array=1-16 does. Resubmitting the same array (after a
# time limit, a preemption, a failed node) skips every output already complete and converts only
# the rest.
#
#SBATCH --job-name=pythia-tl-suite
#SBATCH --array=1-16
#SBATCH --cpus-per-task=4
#SBATCH --mem=16G
#SBATCH --time=08:00:00
#SBATCH --output=logs/%x-%A_%a.out
set -euo pipefail

models=${MODELS:-"pythia-70m pythia-160m pythia-410m"}
steps=${STEPS:-all}
out=${OUT:-$HOME/pythia-tl-suite}
jobs=${JOBS:-2} # revisions at once: memory grows with it (one conversion each)

# Weights are streamed from the Hub straight into the outputs: nothing of them is written to any
# disk but OUT. The huggingface_hub cache receives only each revision's small files (config.json,
# the index and the tokenizer files), and the outputs record where the tokenizer files are, so
# pythia_tl.load() finds them offline later. Keep that cache where the machines that load the
# outputs see it (the default, ~/.cache/huggingface/hub, or HF_HUB_CACHE set before sbatch); a
# per-task cache in $TMPDIR would be deleted with the task and take the tokenizer files with it.
export HF_HUB_DISABLE_PROGRESS_BARS=1

# Slurm sends SIGTERM at the time limit: pythia-tl stops the conversions in flight, leaves no
# partial file and records what it finished; the next submission resumes from there.
# shellcheck disable=SC2086  # $models is a list of names
exec pythia-tl batch $models --steps "$steps" -o "$out" --jobs "$jobs" \
    --shard "${SLURM_ARRAY_TASK_ID}/${SLURM_ARRAY_TASK_COUNT}"
