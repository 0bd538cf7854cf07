#!/bin/bash
# Issue 36's protocol at the paper's size, in one command that fits a device
# lease (about 8 minutes on one H100): CV fold 0 of
# configs/isic2017.py:crossval,fullsize (ResNet-50, 224 px crops) with seeds
# 0-2 as one population, only RAP and the GAP control after Steps 2-3; then
# launch.robustness on those runs: strata out of fold and on the test split,
# the four image versions and CAM energy, with its --check.
#
#   bash launch/robustness_fullsize.sh OUT_DIR ISIC_DIR ARTEFACTS_CSV [--tiny]
#
# ISIC_DIR holds the official zips and CSVs (../shared/data/isic2017-256 does
# not travel to a device: copy it and the artefacts CSV under data_local/,
# which git ignores, and carry data_local). --tiny: the same commands with a
# tiny network at 32 px and a few steps (tests/test_robustness_launch.py runs
# it on the CPU). Writes OUT_DIR/fullsize/ (results.json, results.md,
# strata_scores.csv, versions.csv, runs.csv, strata.png, versions.png) and
# OUT_DIR/robustness_fullsize.log; $RUNS (default runs/) keeps the fold runs
# and the data (the command resumes). Run it from the repository root.
set -u -o pipefail
out=${1:?usage: robustness_fullsize.sh OUT_DIR ISIC_DIR ARTEFACTS_CSV [--tiny]}
isic=${2:?ISIC_DIR}
artefacts=${3:?ARTEFACTS_CSV}
size=fullsize
overrides=()
if [[ ${4:-} == --tiny ]]; then
  size=tiny
  overrides=(--config.model.depth=tiny --config.model.width=0.0625
             --config.data.image_size=32 --config.data.crop_size=32
             --config.model.output_stride=8
             --config.stages.classification.max_steps=4
             --config.stages.classification.warmup_steps=0
             --config.stages.segmentation.max_steps=2
             --config.stages.joint.max_steps=2
             --config.stages.gap_control.max_steps=2
             --config.rankopt.max_steps=20)
fi
mkdir -p "$out/fullsize"
if compgen -G ".whl/*.whl" > /dev/null; then   # what the device image lacks
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
export PYTHONUNBUFFERED=1
work=${RUNS:-runs}/robustness_$size
data=${RUNS:-runs}/tfds_isic_$size
{
  python3 -m launch.crossval --population --workdir "$work" --folds 0 \
      --seeds 0,1,2 --config "configs/isic2017.py:crossval,fullsize" -- \
      "--config.data.manual_dir=$isic" "--config.data.data_dir=$data" \
      "--config.stage_order=('classification','segmentation','joint','gap_control')" \
      "${overrides[@]}" &&
  python3 -m launch.robustness --out "$out/fullsize" --cv-scores "$work/report" \
      --cv-workdir "$work" --data-dir "$data" --artefacts "$artefacts" &&
  python3 -m launch.robustness --check "$out/fullsize" --artefacts "$artefacts"
} 2>&1 | tee "$out/robustness_fullsize.log"
