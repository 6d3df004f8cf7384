#!/usr/bin/env bash
# Times each step of `make demo` (after the install) and writes bench/results/demo.json: the seconds
# each command took, in order, and their total. Run it on an idle machine from a clone whose .venv exists.
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf runs/demo
out=bench/results/demo.json
steps=()
while read -r line; do
    start=$(date +%s.%N)
    bash -c "$line" >/dev/null 2>&1
    seconds=$(echo "$(date +%s.%N) - $start" | bc)
    command=$(echo "$line" | sed -E 's#^\.venv/bin/textloc --threads 1 ([a-z]+).*#\1#')
    steps+=("{\"command\": \"$command\", \"seconds\": $seconds}")
done < <(make -n demo | grep "textloc --threads")
{
    echo "{\"cores\": $(nproc), \"load_after\": \"$(cut -d' ' -f1-3 /proc/loadavg)\", \"steps\": ["
    (IFS=,; echo "${steps[*]}")
    echo "]}"
} | .venv/bin/python -c "import json, sys; d = json.load(sys.stdin); d['total_seconds'] = sum(s['seconds'] for s in d['steps']); print(json.dumps(d, indent=2))" > "$out"
cat "$out"
