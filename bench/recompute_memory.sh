#!/usr/bin/env bash
# Peak memory of the recompute at 100,000 and 1,000,000 profiles (generates the data when missing).
set -euo pipefail
cd "$(dirname "$0")"
PY=../.venv/bin/python
for n in 100000 1000000; do
  if ! psql -h 127.0.0.1 -U postgres -lqt | cut -d'|' -f1 | grep -qw "af_bench_$n"; then
    $PY generate.py --profiles "$n"
  fi
  $PY recompute.py --profiles "$n" | tee "/tmp/recompute_$n.json"
done
$PY - <<'PY'
import json
small, large = (json.load(open(f"/tmp/recompute_{n}.json")) for n in (100000, 1000000))
print(f"peak RSS 100k: {small['peak_rss_mb']} MiB, 1M: {large['peak_rss_mb']} MiB, "
      f"growth {100 * (large['peak_rss_mb'] / small['peak_rss_mb'] - 1):.1f}%")
PY
