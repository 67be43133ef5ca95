#!/usr/bin/env bash
# What was run on a lent GPU (one call, ~9 minutes), kept so that its numbers can be reproduced:
#   1. benchmarks/bench_train_speed.py: ms/step of mnist-cfg, shapes-cfg and folder-64, fp32 and bf16;
#   2. the mnist-cfg and shapes-cfg recipes trained for longer, side by side on the one GPU, through
#      the CLI, in segments (--resume is exact, so the segments make one run); after each segment a
#      snapshot of the run (config, metadata, EMA weights and loss history) is kept.
# Usage: OUT=dir DDPMKIT_DATA=dir-with-MNIST/raw bash benchmarks/gpu_runs.sh DEADLINE_SECONDS
# Everything it writes goes to $OUT: train_speed_cuda.json, logs, mnist-snaps.tar, shapes-snaps.tar (each a
# snapshot per segment, plus NAME-last: the run folder as the deadline left it, which --resume continues on a GPU).
set -u
deadline=$(( SECONDS + ${1:-480} ))
py=${PYTHON:-python3}
dev=${DEVICE:-cuda}  # cpu: a dry run of this script on a machine without a GPU
export PYTHONUNBUFFERED=1
nvidia-smi -L || true
$py -c "import torch, ddpmkit; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"

# 1. speed (alone on the GPU)
[ "${BENCH:-1}" = 0 ] || $py benchmarks/bench_train_speed.py --device "$dev" --steps "${BENCH_STEPS:-100}" --warmup "${BENCH_WARMUP:-30}" --repeats 3 --out "$OUT/train_speed_$dev.json" > "$OUT/bench.log" 2>&1
tail -n 3 "$OUT/bench.log" 2>/dev/null

# 2. longer runs, in segments, until the deadline
snap() {  # snap RUN_DIR DEST: the run without its optimizer state (what export and sampling read)
    mkdir -p "$2" && cp "$1/config.json" "$1/metadata.json" "$2/"
    $py -c "import sys, torch; s = torch.load(sys.argv[1], weights_only=True); s.pop('optimizer'); s.pop('model'); torch.save(s, sys.argv[2])" \
        "$1/checkpoint.pt" "$2/checkpoint.pt"
}
segments() {  # segments NAME RECIPE STEP...
    local name=$1 recipe=$2; shift 2
    local run="$OUT/runs/$name" first=1
    for it in "$@"; do
        left=$(( deadline - SECONDS ))
        [ "$left" -gt 20 ] || break
        if [ $first = 1 ]; then args=(--recipe "$recipe" --device "$dev"); else args=(--resume); fi
        timeout "$left" $py -m ddpmkit train "${args[@]}" --iterations "$it" --out "$run" --no-progress >> "$OUT/$name.log" 2>&1 || break
        first=0
        snap "$run" "$OUT/snaps/$name-$it"
        echo "$name: $it steps at $SECONDS s"
    done
}
segments mnist mnist-cfg ${MNIST_STEPS:-6000 12000 18000 24000 30000 40000 50000} &
segments shapes shapes-cfg ${SHAPES_STEPS:-5000 11000 15000 20000 25000 30000} &
wait
for name in mnist shapes; do  # one file per run (the tool brings back files up to 16 MB): the snapshots,
    # and the last full checkpoint (optimizer included) so that a later GPU session can resume the run
    [ -d "$OUT/snaps" ] && ls -d "$OUT/snaps/$name-"* > /dev/null 2>&1 || continue
    cp -r "$OUT/runs/$name" "$OUT/snaps/$name-last"
    (cd "$OUT/snaps" && tar -cf "$OUT/$name-snaps.tar" $name-*)
done
rm -rf "$OUT/runs" "$OUT/snaps"
ls -la "$OUT"
