#!/usr/bin/env bash
# How the GPU results under bench/results/ were made: run by the device tool on the lent
# GPU machine, in the repository root, one call per step (../shared/device/README.md).
#
#   bench/gpu/device_run.sh part NN      copy .device/dali.tar.xz.NN to /tmp/dali-parts
#                                        (part 00 also starts generating the ImageNet-like set)
#   bench/gpu/device_run.sh start [SECS] unpack DALI, start python -m pipelines.gpu_check
#                                        (SKIP="graph_cost ..." leaves steps out)
#   bench/gpu/device_run.sh poll SECS    wait (at most SECS, less once $RUN/DONE exists), then
#                                        pack what is finished into $OUT
#
# The cuda120 build (make gpu-bundle-cu120 leaves its parts in .device/cu120/): its parts
# travel with the first polls, while gpu_check's pytest step runs (a copy takes under a
# second and times nothing then; carried after DONE they cost 2 device minutes); it runs
# once gpu_check is DONE, so that it disturbs no timing:
#   bench/gpu/device_run.sh part120 NN   copy .device/cu120/dali.tar.xz.NN to /tmp/dali120-parts
#                                        (combine with a short poll: part120 NN && poll 20)
#   bench/gpu/device_run.sh cu120 [SECS] unpack it apart, run the probes and pytest -m gpu with it
#
# A call more than 30 s after the last meets a fresh machine: poll and cu120 then exit 3
# at once (nothing started) instead of waiting their whole time. Check the device tool's
# status (budget_left_s) first: the whole plan takes about 25 of the 30 device minutes, and
# the benchmark keeps out/bench/results.partial.json as it goes, in case it is cut off.
#
# Every long job runs under setsid, so it outlives the call that started it while the
# machine stays warm; each call returns logs and results so far.
set -u
RUN=/tmp/gpurun
export PYTHONPATH=/tmp/site:$PWD DALI_CUTMIX_CACHE=/tmp/cache PYTHONUNBUFFERED=1
# 45,000 training images: 175 batches of 256 per epoch, so that every timed window of the
# benchmark (at most 148 batches from a loader's start) lies inside its first epoch.
CLASSES=${CLASSES:-100} PER_CLASS=${PER_CLASS:-450}
# gpu_check's own set (no --data: with it, gpu_check reads a folder as it is and
# generates nothing); its data step waits for the generation that part 00 starts
DATA=/tmp/cache/gpu-check-${CLASSES}x${PER_CLASS}
mkdir -p "$RUN" /tmp/dali-parts

pack() {
  # checkpoints (and one being written, .checkpoint.pth.tmp-*) would not fit what comes back
  tar -C "$RUN" --exclude='*.pth' --exclude='*.pt' --exclude='.*.tmp-*' \
    -czf "$OUT/gpurun.tar.gz" . 2>/dev/null
  cp "$RUN"/gpu_check.log "$OUT/" 2>/dev/null
  ls "$RUN" "$RUN/out" 2>/dev/null | head -40
  tail -n 25 "$RUN"/gpu_check.log 2>/dev/null
  tail -n 2 "$RUN"/smi.csv 2>/dev/null
}

started() {
  # a call more than 30 s after the last one gets a fresh machine, where a poll would wait
  # its whole time for a DONE that never comes
  [ -e "$RUN/STARTED" ] && return 0
  echo "nothing was started on this machine (a fresh one: the last call came too late?): begin again at part 00" >&2
  return 1
}

case "${1:-}" in
part)
  # a part that is not there (a call without its carry) fails the call, and the start after it
  cp ".device/dali.tar.xz.${2:?part number}" /tmp/dali-parts/ || exit 1
  ls -l /tmp/dali-parts
  if [ "$2" = 00 ]; then
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    python3 -c 'import sys, torch, torchvision; print(sys.version, torch.__version__, torch.version.cuda, torchvision.__version__)'
    nproc; free -g | head -2
    setsid nohup python3 -m dali_cutmix.synthetic "$DATA" --classes "$CLASSES" \
      --train-per-class "$PER_CLASS" --val-per-class 10 --no-progress >"$RUN/data.log" 2>&1 &
  fi
  ;;
start)
  rm -f "$RUN/DONE"
  touch "$RUN/STARTED"
  mkdir -p /tmp/site
  cat /tmp/dali-parts/dali.tar.xz.* | python3 -c "import sys,tarfile; tarfile.open(fileobj=sys.stdin.buffer, mode='r|xz').extractall('/tmp/site', filter='fully_trusted')" || exit 1
  python3 -c 'import nvidia.dali as d; print("DALI", d.__version__)' || exit 1
  setsid nohup nvidia-smi --query-gpu=timestamp,memory.used,utilization.gpu,utilization.memory \
    --format=csv -l 1 >"$RUN/smi.csv" 2>&1 &
  setsid nohup bash -c "python3 -m pipelines.gpu_check --out '$RUN/out' --train-dir '$RUN/train-$(date +%H%M%S)' \
    --classes '$CLASSES' --per-class '$PER_CLASS' ${SKIP:+--skip $SKIP} \
    >'$RUN/gpu_check.log' 2>&1;
    touch '$RUN/DONE'" >/dev/null 2>&1 &
  sleep "${2:-20}"
  tail -n 5 "$RUN/data.log"
  pack
  ;;
poll)
  started || exit 3
  for _ in $(seq 1 "${2:-0}"); do [ -f "$RUN/DONE" ] && break; sleep 1; done
  tail -n 3 "$RUN/data.log"
  pack
  ;;
part120)
  mkdir -p /tmp/dali120-parts
  cp ".device/cu120/dali.tar.xz.${2:?part number}" /tmp/dali120-parts/ || exit 1
  ls -l /tmp/dali120-parts
  ;;
cu120)
  started || exit 3
  [ -f "$RUN/DONE" ] || { echo "gpu_check has not finished (or was not started): cu120 waits for it, not to disturb its timings" >&2; exit 2; }
  mkdir -p /tmp/site120 "$RUN/cu120"
  cat /tmp/dali120-parts/dali.tar.xz.* | python3 -c "import sys,tarfile; tarfile.open(fileobj=sys.stdin.buffer, mode='r|xz').extractall('/tmp/site120', filter='fully_trusted')" || exit 1
  export PYTHONPATH=/tmp/site120:$PWD
  python3 -c 'import json, nvidia.dali as d; from pipelines.gpu_check import probe_empty_region as e, probe_other_width as w; print(json.dumps({"dali": d.__version__, "path": d.__file__, "empty_region": e(), "other_width": w()}))' >"$RUN/cu120/probes.json" 2>"$RUN/cu120/probes.log"
  timeout "${2:-400}" python3 -m pytest -q -rs -p no:cacheprovider -m gpu --timeout 300 tests \
    >"$RUN/cu120/pytest.log" 2>&1
  echo "pytest exit $?" >>"$RUN/cu120/pytest.log"
  tail -n 3 "$RUN/cu120/pytest.log"
  pack
  ;;
*)
  echo "usage: $0 part NN | start [SECS] | poll SECS | part120 NN | cu120 [SECS]" >&2
  exit 2
  ;;
esac
