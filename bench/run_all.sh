#!/usr/bin/env bash
# Run every benchmark in sequence with modest durations, then write bench/results/summary.md.
#
#   bash bench/run_all.sh            # about 20 minutes in all, more for a first image build
#                                    # (each step has a time limit)
#
# Each script is bounded by `timeout` (it stops its own servers on SIGTERM); a script that
# fails or times out is reported and the others still run. Needs wrk (Debian: apt-get
# install -y wrk) and the project's virtualenv at .venv (or PYTHON=...).
set -u
cd "$(dirname "$0")/.." || exit 2

PY=${PYTHON:-.venv/bin/python}
if ! command -v wrk >/dev/null 2>&1; then
    echo "wrk is not installed. It is the Debian package wrk: apt-get update && apt-get install -y wrk" >&2
    exit 2
fi
mkdir -p bench/results

failed=()
names=()
run() {  # run NAME SECONDS SCRIPT ARGS...
    local name=$1 budget=$2
    shift 2
    echo
    echo "=== $name ($PY $*; at most ${budget}s)"
    local started=$SECONDS
    rm -f "bench/results/$name.md" "bench/results/$name.json"  # no stale result if this one fails
    if timeout --kill-after=20 "$budget" "$PY" "$@"; then
        names+=("$name")
    else
        echo "=== $name FAILED (exit $?)" >&2
        failed+=("$name")
    fi
    echo "=== $name took $((SECONDS - started))s"
}

# Read: real files, then the same lookups on a registry of 1,000 x 350 more. Each run
# against its reference, three times alternating; the median counts (other work on the
# machine moves single runs by 10-20%).
run read 360 bench/read.py --duration 4 --warmup 1 --repeat 3
run read_1000x350 330 bench/read.py --duration 4 --warmup 1 --repeat 3 --nodes 1000 --components 350
# Start-up: a first load of 1,000 x 350 (about 93 MB of JSON), then restarts on its database.
run startup 180 bench/startup.py --nodes 1000 --components 350 --restarts 3 --timeout 60
run reconcile 300 bench/reconcile.py --files 10000 --changes 50 --visible-changes 200
run burst 150 bench/burst.py --files 500 --duration 5
# Lost events: 20,000 files made under SIGSTOP, served after SIGCONT (target 10 s).
run lost_events 300 bench/lost_events.py --files 20000 --repeat 3
# Probes and lookups while 10 clients search a registry of 1,000 x 350 for 30 s.
run search_load 300 bench/search_load.py --duration 30
# The executor client (client/): lookups from memory, change to answer, a 30 s outage and a
# replica switch, memory on 1,000 x 350 (needs `.venv/bin/pip install -e client`).
run client 480 bench/client.py
# Soak, short: 1,000 effective commits under readers, a searcher, long-polls and streams
# (the README's row is the full run: `bench/soak.py`, 10,000 commits, about an hour; soak.md).
run soak_1000 600 bench/soak.py --commits 1000 --name soak_1000
# Issue 14: 1,000 / 5,000 / 10,000 followers (half event streams, half long-polls), a file renamed.
run fanout 900 bench/fanout.py --followers 1000,5000,10000 --rounds 8
# The container image (needs podman, runc and mmdebstrap; skipped without podman).
if command -v podman >/dev/null 2>&1; then
    run container 1800 bench/container.py --runs 5 --changes 50
else
    echo "=== container skipped: podman is not installed" >&2
fi

"$PY" bench/summarize.py --command "bash bench/run_all.sh" "${names[@]}" >/dev/null \
    && echo && echo "written bench/results/summary.md"
if [ ${#failed[@]} -gt 0 ]; then
    echo "failed: ${failed[*]}" >&2
    exit 1
fi
