#!/bin/bash
# One SLURM array task per job of one phase of a fan-out job list; written from
# this template by a launch script's --slurm, which fills the @...@ fields.
# Edit the #SBATCH lines below for your cluster, pass --sbatch
# "--partition=gpu --time=24:00:00" for extra ones, or pass --slurm-template
# to use your own copy. Each task runs job $SLURM_ARRAY_TASK_ID
# of phase @PHASE@ and records WORKDIR/fanout_status.json.
#SBATCH --job-name=@NAME@
#SBATCH --array=@ARRAY@
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=8
#SBATCH --output=@LOG_DIR@/%x-%A_%a.out
@SBATCH_EXTRA@
set -euo pipefail
cd @REPO@
@SETUP@
exec @PYTHON@ -m launch.fanout run-one --jobs @JOBS@ --phase @PHASE@ --index "${SLURM_ARRAY_TASK_ID}"
