#!/usr/bin/env bash
# The first-run experience, checked: on a fresh clone of this commit, `make run` (other ports, a private
# Redis database and queue) must fill the local Mailchimp list with exactly the demo's 50 emails, the
# send_events.py command it prints must work as printed (its user joins the list), and 40 more users sent
# 8 at a time must join too (web, worker and beat on one SQLite file), with no error in any log. Then
# everything it started is stopped. Bounded in time; on failure it says what was missing and shows the
# last log lines.
#
#   scripts/smoke-fresh-clone.sh            # or: make smoke   (CI runs it from .ci/run)
#
# SMOKE_TIMEOUT (seconds, default 900: a fresh clone installs its virtualenv), SMOKE_REDIS_DB (default 14),
# SMOKE_WEB_PORT / SMOKE_MAILCHIMP_PORT / SMOKE_BRAZE_PORT / SMOKE_META_PORT (default: free ports), SMOKE_KEEP=1
# keeps the clone.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
commit=$(git -C "$repo" rev-parse HEAD)
timeout=${SMOKE_TIMEOUT:-900}
redis_db=${SMOKE_REDIS_DB:-14}
python=${PYTHON:-python3}
free_port() { "$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
web_port=${SMOKE_WEB_PORT:-$(free_port)}
mailchimp_port=${SMOKE_MAILCHIMP_PORT:-$(free_port)}
braze_port=${SMOKE_BRAZE_PORT:-$(free_port)}
meta_port=${SMOKE_META_PORT:-$(free_port)}
queue="smoke-$(date +%s)-$$"
work=$(mktemp -d "${TMPDIR:-/tmp}/af-smoke.XXXXXX")
clone="$work/clone"
log="$work/make-run.log"
started=$(date +%s)
run_pid=""

say() { echo "smoke: $*"; }
elapsed() { echo $(($(date +%s) - started)); }

# Processes still running from the clone (their working directory is inside it).
leftovers() {
  local pid cwd
  for pid in $(ls /proc | grep -E '^[0-9]+$'); do
    cwd=$(readlink "/proc/$pid/cwd" 2>/dev/null) || continue
    case "$cwd" in "$clone" | "$clone"/*) echo "$pid" ;; esac
  done
}

stop_everything() {
  if [ -n "$run_pid" ] && kill -0 "$run_pid" 2>/dev/null; then
    # make and honcho are one process group (setsid below); honcho stops the processes it started.
    kill -TERM -- "-$run_pid" 2>/dev/null || true
    for _ in $(seq 1 100); do
      [ -z "$(leftovers)" ] && break
      sleep 0.2
    done
  fi
  local left
  left=$(leftovers)
  if [ -n "$left" ]; then
    say "still running after 20 s, killed: $(echo $left | tr '\n' ' ')"
    kill -KILL $left 2>/dev/null || true
  fi
}

finish() {
  local status=$?
  stop_everything
  if [ "$status" != 0 ] && [ -f "$log" ]; then
    echo "---- last 60 lines of make run ($log) ----"
    tail -n 60 "$log"
    echo "----"
  fi
  if [ "${SMOKE_KEEP:-0}" = 1 ] || [ "$status" != 0 ]; then
    say "kept $work"
  else
    rm -rf "$work"
  fi
  exit "$status"
}
trap finish EXIT
trap 'exit 130' INT TERM

fail() {
  say "FAILED after $(elapsed) s: $*"
  exit 1
}

say "fresh clone of $commit in $clone"
git clone --quiet --no-checkout "$repo" "$clone"
git -C "$clone" checkout --quiet "$commit"

say "make run (web :$web_port, local Mailchimp :$mailchimp_port, Braze :$braze_port, Meta :$meta_port, Redis db $redis_db, queue $queue)"
(
  cd "$clone"
  export REDIS_URL="redis://127.0.0.1:6379/$redis_db" CELERY_QUEUE="$queue"
  unset DATABASE_URL SECRET_KEY SECRETS_ENCRYPTION_KEYS SECRETS_ENCRYPTION_KEY DJANGO_SETTINGS_MODULE
  exec setsid make run WEB_PORT="$web_port" LOCAL_MAILCHIMP_PORT="$mailchimp_port" LOCAL_BRAZE_PORT="$braze_port" \
    LOCAL_META_PORT="$meta_port" >"$log" 2>&1 </dev/null
) &
run_pid=$!
sleep 0.2
# setsid made make the leader of its own process group, so stopping it reaches make and honcho.
[ "$(ps -o pgid= -p "$run_pid" | tr -d ' ')" = "$run_pid" ] || fail "make run is not in a process group of its own"

members_url="http://127.0.0.1:$mailchimp_port/3.0/lists/potential-parisians/members?count=1000"
# The list's members, one "email status" per line, sorted; empty when the server does not answer yet.
members() {
  "$python" - "$members_url" <<'PY' 2>/dev/null | sort || true
import base64, json, sys, urllib.request

request = urllib.request.Request(sys.argv[1])
request.add_header("Authorization", "Basic " + base64.b64encode(b"any:d3m0d3m0d3m0d3m0d3m0d3m0d3m0d3m0-us6").decode())
for member in json.load(urllib.request.urlopen(request, timeout=5))["members"]:
    print(member["email_address"], member["status"])
PY
}
expected=$(for n in $(seq 0 49); do printf 'traveller%03d@example.com pending\n' "$n"; done | sort)

wait_for() {  # wait_for DESCRIPTION COMMAND...: until the command succeeds, within the time left
  local what=$1
  shift
  until "$@"; do
    kill -0 "$run_pid" 2>/dev/null || fail "make run exited before $what"
    [ "$(elapsed)" -lt "$timeout" ] || fail "$what: not within ${timeout} s (last list: $(members | wc -l) members)"
    sleep 1
  done
}

demo_list_is_full() { [ "$(members)" = "$expected" ]; }
wait_for "the list holding exactly the demo's 50 emails" demo_list_is_full
say "the list holds exactly the demo's 50 emails, pending ($(elapsed) s)"

# The demo connects Braze and Meta too: Braze holds the 100 members (named by customer id), Meta's Custom
# Audience the 50 hashed emails and 80 advertising ids (its first upload is asked for at once).
partners_held() {
  "$python" - "$braze_port" "$meta_port" <<'PY' 2>/dev/null || echo "unreachable"
import json, sys, urllib.request

braze = json.load(urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/local/users", timeout=5))["users"]
audiences = json.load(urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[2]}/local/audiences", timeout=5))["audiences"]
rows = sum(len(r) for a in audiences for r in a["members"].values())
print(sum(1 for u in braze if u.get("SegmentMembership")), rows)
PY
}
demo_partners_hold_it() { [ "$(partners_held)" = "100 130" ]; }
wait_for "Braze holding the demo's 100 members and Meta 130 rows" demo_partners_hold_it
say "Braze holds the demo's 100 members, Meta's Custom Audience 130 rows ($(elapsed) s)"

# The command make run printed, run as printed (from the clone, as a user would paste it).
command=$(grep -m1 -E '^\s+\.venv/bin/python scripts/send_events\.py ' "$log" | sed -E 's/^\s+//') ||
  fail "make run did not print the send_events.py command"
say "running the printed command: ${command%%--secret=*}--secret=..."
(cd "$clone" && bash -c "$command") >>"$log" 2>&1 || fail "the printed send_events.py command failed"
new_member_joined() { members | grep -qx 'new@example.com pending'; }
wait_for "new@example.com (sent by the printed command) in the list" new_member_joined
say "new@example.com joined the list through the Events API ($(elapsed) s)"

# Web, worker and beat write the one SQLite file at once: 40 more travellers, 8 requests at a time.
key=$(sed -nE 's/.*--key=([^ ]+).*/\1/p' <<<"$command")
secret=$(sed -nE 's/.*--secret=([^ ]+).*/\1/p' <<<"$command")
"$clone/.venv/bin/python" - "$web_port" "$key" "$secret" <<'PY' || fail "concurrent Events API requests failed"
import concurrent.futures, sys, time

import requests

port, key, secret = sys.argv[1:4]


def send(n: int) -> int:
    event = {"event_name": "Destination Intro", "custom_event_type": "media", "custom_attributes": {"city": "Paris"},
             "timestamp_unixtime_ms": int(time.time() * 1000)}
    batch = {"environment": "production", "source_request_id": f"smoke-{n}",
             "user_identities": {"email": f"smoke{n:02d}@example.com"}, "user_attributes": {"status": "Premium"},
             "events": [{"event_type": "custom_event", "data": event}]}
    return requests.post(f"http://127.0.0.1:{port}/v2/events", json=batch, auth=(key, secret), timeout=60).status_code


with concurrent.futures.ThreadPoolExecutor(8) as pool:
    codes = list(pool.map(send, range(40)))
bad = sorted({code for code in codes if code != 202})
sys.exit(f"{sum(code != 202 for code in codes)} of 40 requests answered {bad}" if bad else 0)
PY
all_joined() { [ "$(members | grep -c '^smoke[0-9]*@example.com pending$')" = 40 ] && [ "$(members | wc -l)" = 91 ]; }
wait_for "the 40 concurrent travellers in the list" all_joined
say "40 concurrent travellers joined the list ($(elapsed) s)"
# Braze gets them too (141 users: the demo's 100, new@example.com and the 40), and the worker must be idle
# before everything is stopped: the process group's SIGTERM reaches the pool's children too, and a task they
# run then is logged as lost (redundant deliveries rung by the 40 requests can still be running).
braze_users() { partners_held | cut -d' ' -f1; }
braze_has_all() { [ "$(braze_users)" = 141 ]; }
wait_for "Braze holding the 141 users" braze_has_all
worker_idle() {  # no task received or finished for 2 s
  local before after
  before=$(grep -cE 'celery.worker.strategy Task|celery.app.trace Task' "$log" || true)
  sleep 2
  after=$(grep -cE 'celery.worker.strategy Task|celery.app.trace Task' "$log" || true)
  [ "$before" = "$after" ]
}
wait_for "the worker idle" worker_idle
say "Braze holds the 141 users, the worker is idle ($(elapsed) s)"

stop_everything
[ -z "$(leftovers)" ] || fail "processes left running"
# Nothing went wrong on the way: no traceback, no locked database, no error, no 5xx.
problems=$(sed -n '/honcho start/,$p' "$log" | grep -E 'Traceback|database is locked|[[ ]ERROR[] ]|" 5[0-9][0-9] ' | head -20 || true)
[ -z "$problems" ] || fail "errors in the log of make run:
$problems"
# The private queues' keys (tasks left for the stopped worker, e.g. sweeps): the prefix and its kinds.
"$clone/.venv/bin/python" -c 'import redis, sys; r = redis.Redis.from_url(sys.argv[1]); [r.delete(k) for p in (sys.argv[2] + "*", "_kombu.binding." + sys.argv[2] + "*") for k in r.scan_iter(p)]' \
  "redis://127.0.0.1:6379/$redis_db" "$queue" || true
say "OK in $(elapsed) s: everything make run started is stopped"
