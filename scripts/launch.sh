#!/usr/bin/env bash
# Starts N ranks of a command on this machine with the variables torchrun sets (RANK, WORLD_SIZE,
# LOCAL_RANK, MASTER_ADDR, MASTER_PORT), for machines without a working torchrun (Debian 12's, from
# python3-torch 1.13 on Python 3.11, fails before starting any process). Rank r's output goes to
# <logdir>/rank<r>.log for r > 0, rank 0's to the terminal. Exits with the first non-zero exit code.
#   scripts/launch.sh -n 4 [-p PORT] [-l LOGDIR] -- build/lopt local-sgd --config ... --threads 1
set -uo pipefail
n=""; port="${MASTER_PORT:-29500}"; logdir="runs/launch"
while [ $# -gt 0 ]; do
  case "$1" in
    -n) n="$2"; shift 2 ;;
    -p) port="$2"; shift 2 ;;
    -l) logdir="$2"; shift 2 ;;
    --) shift; break ;;
    *) echo "launch.sh: unknown option $1 (usage: scripts/launch.sh -n N [-p PORT] [-l LOGDIR] -- command ...)" >&2; exit 2 ;;
  esac
done
if ! [[ "$n" =~ ^[1-9][0-9]*$ ]] || [ $# -eq 0 ]; then
  echo "usage: scripts/launch.sh -n N [-p PORT] [-l LOGDIR] -- command ..." >&2; exit 2
fi
mkdir -p "$logdir"
pids=()
for ((r = 0; r < n; r++)); do
  if [ "$r" -eq 0 ]; then
    RANK=$r LOCAL_RANK=$r WORLD_SIZE=$n MASTER_ADDR="${MASTER_ADDR:-127.0.0.1}" MASTER_PORT=$port "$@" &
  else
    RANK=$r LOCAL_RANK=$r WORLD_SIZE=$n MASTER_ADDR="${MASTER_ADDR:-127.0.0.1}" MASTER_PORT=$port "$@" > "$logdir/rank$r.log" 2>&1 &
  fi
  pids+=($!)
done
# Wait for the ranks as they end. When one fails, the others are stopped (SIGTERM, and SIGCONT so
# that a stopped one receives it; SIGKILL after a grace period), then every rank's exit status is
# reported: a rank that hangs or is stopped cannot keep the launcher waiting forever.
declare -A rank_of
for ((r = 0; r < n; r++)); do rank_of[${pids[$r]}]=$r; done
codes=()
remaining=$n; status=0; killer=""
while [ "$remaining" -gt 0 ]; do
  done_pid=""
  wait -n -p done_pid; rc=$?
  [ -z "$done_pid" ] && break                  # no children left
  [ -z "${rank_of[$done_pid]+x}" ] && continue  # the grace-period killer
  r=${rank_of[$done_pid]}; codes[$r]=$rc; remaining=$((remaining - 1))
  if [ "$rc" -ne 0 ] && [ "$status" -eq 0 ]; then
    status=$rc
    echo "launch.sh: rank $r exited with $rc ($([ "$r" -eq 0 ] && echo "output above" || echo "log: $logdir/rank$r.log")); stopping the other ranks" >&2
    alive=()
    for ((q = 0; q < n; q++)); do [ -z "${codes[$q]+x}" ] && alive+=("${pids[$q]}"); done
    kill -TERM "${alive[@]}" 2>/dev/null; kill -CONT "${alive[@]}" 2>/dev/null
    ( sleep "${LAUNCH_GRACE_S:-10}"; kill -KILL "${alive[@]}" 2>/dev/null ) &
    killer=$!
  fi
done
[ -n "$killer" ] && kill "$killer" 2>/dev/null
if [ "$status" -ne 0 ]; then
  for ((r = 0; r < n; r++)); do echo "launch.sh: rank $r exit status ${codes[$r]:-unknown}" >&2; done
fi
exit $status
