#!/usr/bin/env sh
# The training commands behind the shipped checkpoints (batmann/checkpoints/), one per line.
# A run folder that already holds a run is continued with --resume, so the same line can be
# re-run across sessions:   nohup sh scripts/train_shipped.sh NAME > runs/NAME.out 2>&1 &
# Then ship:  .venv/bin/python scripts/ship_checkpoint.py runs/NAME NAME
#             .venv/bin/batmann evaluate --checkpoint NAME --episodes 1000
#             .venv/bin/python scripts/results_table.py --write README.md
set -eu
cd "$(dirname "$0")/.."
B=.venv/bin/batmann
COMMON="--val-interval 250 --val-episode 100 --test-episode 1000 --checkpoint-interval 50 --seed 0 --no-progress"
run() {  # run NAME ARGS...: train into runs/NAME (ARGS override COMMON), resuming if it exists
  name=$1; shift
  if [ -f "runs/$name/last.safetensors" ]; then set -- "$@" --resume; fi
  $B train $COMMON "$@" --run-dir "runs/$name"
}
case "${1:-}" in
  20w5s-binary) run 20w5s-binary --controller xnor --ways 20 --shots 5 --episodes 6000 --lr 5e-4 --lr-step 2000 --lr-gamma 0.5 ;;
  # 20w5s-fp, two stages: stage 1 from scratch with the seed's loss (shipped as 20w5s-fp until 2026-11-27;
  # 5w1s-fp and the 100-way fp stages start from it), stage 2 continues with --loss nll on new episodes
  20w5s-fp-stage1) run 20w5s-fp-stage1 --controller fp --ways 20 --shots 5 --episodes 6000 --lr 5e-4 --lr-step 2000 --lr-gamma 0.5 ;;
  20w5s-fp)     run 20w5s-fp --init-from runs/20w5s-fp-stage1 --loss nll --controller fp --ways 20 --shots 5 --episodes 2000 --lr 1e-4 --lr-step 1000 --lr-gamma 0.5 --test-episode 0 --checkpoint-interval 25 --seed 1 ;;
  # 5-way 1-shot and 100-way 5-shot: fine-tuned from the shipped 20-way 5-shot checkpoints
  5w1s-binary)  run 5w1s-binary --init-from 20w5s-binary --controller xnor --ways 5 --shots 1 --episodes 1500 --lr 1e-4 --lr-step 1000 --lr-gamma 0.5 --val-episode 400 ;;
  5w1s-fp)      run 5w1s-fp --init-from runs/20w5s-fp-stage1 --controller fp --ways 5 --shots 1 --episodes 1500 --lr 1e-4 --lr-step 1000 --lr-gamma 0.5 --val-episode 400 ;;
  # 100-way: one training query per class, 600 images per episode; tested by `batmann evaluate` once shipped.
  # Three stages: stage 1 fine-tunes the 20-way checkpoint, stage 2 continues from stage 1's best weights
  # (both with the seed's loss), stage 3 continues from stage 2's with --loss nll (new episodes: --seed 1).
  100w5s-binary-stage1) run 100w5s-binary-stage1 --init-from 20w5s-binary --controller xnor --ways 100 --shots 5 --queries-train 1 --episodes 600 --lr 2e-4 --lr-step 200 --lr-gamma 0.5 --val-interval 100 --val-episode 20 --checkpoint-interval 10 --test-episode 0 ;;
  100w5s-binary-stage2) run 100w5s-binary-stage2 --init-from runs/100w5s-binary-stage1 --controller xnor --ways 100 --shots 5 --queries-train 1 --episodes 600 --lr 1e-4 --lr-step 300 --lr-gamma 0.5 --val-interval 50 --val-episode 20 --checkpoint-interval 10 --test-episode 0 ;;
  100w5s-binary) run 100w5s-binary --init-from runs/100w5s-binary-stage2 --loss nll --controller xnor --ways 100 --shots 5 --queries-train 1 --episodes 600 --lr 1e-4 --lr-step 300 --lr-gamma 0.5 --val-interval 100 --val-episode 30 --checkpoint-interval 10 --test-episode 0 --seed 1 ;;
  100w5s-fp-stage1)    run 100w5s-fp-stage1 --init-from runs/20w5s-fp-stage1 --controller fp --ways 100 --shots 5 --queries-train 1 --episodes 900 --lr 2e-4 --lr-step 300 --lr-gamma 0.5 --val-interval 100 --val-episode 20 --checkpoint-interval 10 --test-episode 0 ;;
  100w5s-fp-stage2) run 100w5s-fp-stage2 --init-from runs/100w5s-fp-stage1 --controller fp --ways 100 --shots 5 --queries-train 1 --episodes 1500 --lr 1e-4 --lr-step 500 --lr-gamma 0.5 --val-interval 100 --val-episode 20 --checkpoint-interval 10 --test-episode 0 ;;
  100w5s-fp)    run 100w5s-fp --init-from runs/100w5s-fp-stage2 --loss nll --controller fp --ways 100 --shots 5 --queries-train 1 --episodes 1500 --lr 1e-4 --lr-step 500 --lr-gamma 0.5 --val-interval 100 --val-episode 50 --checkpoint-interval 10 --test-episode 0 --seed 1 ;;
  20w5s-binary-lake) run 20w5s-binary-lake --split lake --controller xnor --ways 20 --shots 5 --episodes 6000 --lr 5e-4 --lr-step 2000 --lr-gamma 0.5 ;;
  20w5s-fp-lake) run 20w5s-fp-lake --split lake --controller fp --ways 20 --shots 5 --episodes 6000 --lr 5e-4 --lr-step 2000 --lr-gamma 0.5 ;;
  *) echo "usage: $0 20w5s-binary|20w5s-fp-stage1|20w5s-fp|5w1s-binary|5w1s-fp|100w5s-binary-stage1|100w5s-binary-stage2|100w5s-binary|100w5s-fp-stage1|100w5s-fp-stage2|100w5s-fp|20w5s-binary-lake|20w5s-fp-lake" >&2; exit 2 ;;
esac
