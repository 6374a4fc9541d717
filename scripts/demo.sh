#!/usr/bin/env bash
# The main job end to end on the embedded synthetic dataset (README quick start):
# train (XLA) -> evaluate (full ranking and pop100) -> export for TF Serving -> verify the
# export the way TF Serving loads it. A few minutes on 2 CPU cores.
# TensorFlow's C++ start-up lines are hidden; VERBOSE=1 shows them (tfrs-linear --verbose).
source "$(dirname "$0")/venv.sh"
RUN="${RUN:-runs/demo}"
NAME="${NAME:-demo}"
tl() { .venv/bin/tfrs-linear ${VERBOSE:+--verbose} "$@"; }
tl train --attention "${ATTENTION:-linrec}" --epochs "${EPOCHS:-3}" --max-len "${MAX_LEN:-200}" --output "$RUN"
tl evaluate --model "$RUN" --protocol full
tl evaluate --model "$RUN" --protocol pop100
tl export --model "$RUN" --base-path "saved_models/$NAME"
version="$(ls saved_models/"$NAME" | grep -E '^[0-9]+$' | sort -n | tail -1)"
tl check-serving "saved_models/$NAME/$version"
echo "done: model in $RUN, SavedModel in saved_models/$NAME/$version"
