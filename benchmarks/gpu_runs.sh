#!/usr/bin/env bash
# What was run on a lent GPU (one call, ~9 minutes), kept so that its numbers can be reproduced:
#   1. benchmarks/bench_train_speed.py: ms/step of mnist-cfg, shapes-cfg and folder-64, fp32 and bf16;
#   2. recipes trained for longer, side by side on the one GPU, through the CLI (RUNS below), with a
#      snapshot every SNAP_EVERY steps.
# Usage: OUT=dir DDPMKIT_DATA=dir-with-MNIST/raw bash benchmarks/gpu_runs.sh DEADLINE_SECONDS
# Everything it writes goes to $OUT: train_speed_cuda.json, logs, NAME-snaps.tar for each run (a snapshot
# per SNAP_EVERY steps, plus NAME-last: the run folder as the deadline left it, which --resume continues on a GPU).
# BENCH=0 skips the speed benchmark; TESTS=1 first runs the GPU-parametrized tests (the CUDA resume).
set -u
deadline=$(( SECONDS + ${1:-480} ))
py=${PYTHON:-python3}
dev=${DEVICE:-cuda}  # cpu: a dry run of this script on a machine without a GPU
export PYTHONUNBUFFERED=1
nvidia-smi -L || true
$py -c "import torch, ddpmkit; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"

# 0. the tests that take a GPU where there is one
[ "${TESTS:-0}" = 0 ] || $py -m pytest -q -p no:cacheprovider tests/test_image_training.py -k resume > "$OUT/tests.log" 2>&1; tail -n 3 "$OUT/tests.log" 2>/dev/null

# 1. speed (alone on the GPU)
[ "${BENCH:-1}" = 0 ] || $py benchmarks/bench_train_speed.py --device "$dev" --steps "${BENCH_STEPS:-100}" --warmup "${BENCH_WARMUP:-30}" --repeats 3 --out "$OUT/train_speed_$dev.json" > "$OUT/bench.log" 2>&1
tail -n 3 "$OUT/bench.log" 2>/dev/null

# 2. longer runs, side by side on the one GPU, each one CLI process until its --iterations or the
#    deadline (then it is stopped; its last checkpoint, every 500 steps, is written atomically).
#    A watcher keeps a snapshot every SNAP_EVERY steps: config, metadata, EMA weights and loss
#    history, without the optimizer (what export and sampling read).
#    RUNS: "NAME:RECIPE:ITERATIONS[:EXTRA FLAGS]" entries separated by ';' (an earlier session ran
#    mnist-cfg and shapes-cfg in resumed segments instead: see this file's git history).
RUNS=${RUNS:-"mnist:mnist-cfg:30000;shapes:shapes-cfg:30000"}
snapper() {  # snapper RUN_DIR DEST_PREFIX EVERY: poll the run's checkpoint, keep one snapshot per EVERY steps
    $py - "$@" <<'PY'
import json, os, shutil, sys, time, torch
run, dest, every = sys.argv[1], sys.argv[2], int(sys.argv[3])
seen = set()
while not os.path.exists(os.path.join(run, "done")):
    time.sleep(2)
    try:
        s = torch.load(os.path.join(run, "checkpoint.pt"), map_location="cpu", weights_only=True)
    except Exception:  # not written yet (the writes are atomic: a partial file is never seen)
        continue
    step = s["step"]
    if step % every or step in seen:
        continue
    seen.add(step)
    s.pop("optimizer"), s.pop("model")
    os.makedirs(f"{dest}-{step}", exist_ok=True)
    shutil.copy(os.path.join(run, "config.json"), f"{dest}-{step}/")
    meta = json.load(open(os.path.join(run, "config.json")))  # the step reached, recorded beside the config
    json.dump({"steps": step, "wall_time_s": s["wall_time"], "iterations_planned": meta["train"]["iterations"]}, open(f"{dest}-{step}/snapshot.json", "w"))
    torch.save(s, f"{dest}-{step}/checkpoint.pt")
    print(f"snapshot {dest}-{step}", flush=True)
PY
}
one_run() {  # one_run NAME RECIPE ITERATIONS [EXTRA FLAGS]
    local name=$1 recipe=$2 it=$3 extra=${4:-}
    local run="$OUT/runs/$name"
    mkdir -p "$OUT/snaps"
    snapper "$run" "$OUT/snaps/$name" "${SNAP_EVERY:-3000}" >> "$OUT/$name.log" 2>&1 &
    local watcher=$!
    # shellcheck disable=SC2086
    timeout $(( deadline - SECONDS )) $py -m ddpmkit train --recipe "$recipe" --device "$dev" --iterations "$it" $extra \
        --out "$run" --no-progress >> "$OUT/$name.log" 2>&1
    echo "$name: stopped (exit $?) at $SECONDS s"
    sleep 3; mkdir -p "$run"; touch "$run/done"; wait $watcher
    rm -f "$run/done"; cp -r "$run" "$OUT/snaps/$name-last"  # the full checkpoint: --resume continues it on a GPU
}
IFS=';' read -ra entries <<< "$RUNS"
for entry in "${entries[@]}"; do
    IFS=':' read -r name recipe it extra <<< "$entry"
    one_run "$name" "$recipe" "$it" "$extra" &
done
wait
for entry in "${entries[@]}"; do  # one file per run (the tool brings back files up to 16 MB)
    name=${entry%%:*}
    ls -d "$OUT/snaps/$name-"* > /dev/null 2>&1 || continue
    (cd "$OUT/snaps" && tar -cf "$OUT/$name-snaps.tar" $name-*)
done
rm -rf "$OUT/runs" "$OUT/snaps"
ls -la "$OUT"
