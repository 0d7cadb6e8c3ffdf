#!/usr/bin/env bash
# Watch provisioning live until it settles: one tenant, or every tenant you may see.
#
#   MORAN_EMAIL=you@example.com MORAN_PASSWORD=… scripts/monitor_provisioning.sh [TENANT_ID]
#
# Prints a line whenever a tenant's status, step count or current step changes, and stops when no run is active
# (no tenant IN_PROGRESS). TENANT_ID is the tenant's id or slug; without it, every tenant is watched.
# Environment: MORAN_URL (default http://localhost:4000); MORAN_EMAIL and MORAN_PASSWORD, or MORAN_TOKEN (a token
# from POST /api/auth/login); MORAN_INTERVAL seconds between polls (default 2); MORAN_TIMEOUT seconds (default 900).
# Exit codes: 0 everything settled COMPLETED (or PENDING); 1 something settled PARTIAL, FAILED or CANCELLED;
# 2 bad usage, log-in refused, unknown tenant or server unreachable; 3 still running at MORAN_TIMEOUT.
set -euo pipefail

MORAN_URL="${MORAN_URL:-http://localhost:4000}"
MORAN_URL="${MORAN_URL%/}"
INTERVAL="${MORAN_INTERVAL:-2}"
TIMEOUT="${MORAN_TIMEOUT:-900}"
TENANT_ID="${1:-}"

if [ "$#" -gt 1 ]; then
  echo "usage: $0 [TENANT_ID]   (credentials in MORAN_EMAIL and MORAN_PASSWORD, or MORAN_TOKEN)" >&2
  exit 2
fi
for tool in curl jq; do
  command -v "$tool" >/dev/null || { echo "error: $tool is required" >&2; exit 2; }
done

# get URL: prints the body, then the HTTP status on the last line.
get() {
  curl -sS "$1" -H "Accept: application/json" -H "Authorization: Bearer $TOKEN" -w '\n%{http_code}'
}

fail() {
  echo "error: $(jq -r '.detail // .error // "unexpected answer"' <<<"$1" 2>/dev/null || echo "unexpected answer")" >&2
  exit 2
}

TOKEN="${MORAN_TOKEN:-}"
if [ -z "$TOKEN" ]; then
  if [ -z "${MORAN_EMAIL:-}" ] || [ -z "${MORAN_PASSWORD:-}" ]; then
    echo "error: set MORAN_EMAIL and MORAN_PASSWORD (or MORAN_TOKEN)" >&2
    exit 2
  fi
  LOGIN_BODY=$(jq -n --arg email "$MORAN_EMAIL" --arg password "$MORAN_PASSWORD" '{email: $email, password: $password}')
  if ! ANSWER=$(printf '%s' "$LOGIN_BODY" | curl -sS -X POST "$MORAN_URL/api/auth/login" \
      -H "Content-Type: application/json" --data-binary @- -w '\n%{http_code}'); then
    echo "error: cannot reach $MORAN_URL (is the server running? make serve)" >&2
    exit 2
  fi
  [ "$(tail -n1 <<<"$ANSWER")" = 200 ] || fail "$(sed '$d' <<<"$ANSWER")"
  TOKEN=$(sed '$d' <<<"$ANSWER" | jq -r .access_token)
fi

# snapshot: one line per tenant, "<slug>\t<status>\t<done>/<total>\t<progress>\t<current step>\t<last error>".
snapshot() {
  local answer code body
  if [ -n "$TENANT_ID" ]; then
    answer=$(get "$MORAN_URL/api/provisioning/tenants/$TENANT_ID/status") || return 1
    code=$(tail -n1 <<<"$answer"); body=$(sed '$d' <<<"$answer")
    [ "$code" = 200 ] || fail "$body"
    jq -r '[.tenant, .status, "\(.steps_completed)/\(.total_steps)", "\(.progress) %", (.current_step // "-"),
            (.errors[-1] // null | if . then "\(.step): \(.type): \(.message)" else "" end)] | @tsv' <<<"$body"
    return
  fi
  local url="$MORAN_URL/api/tenants?page_size=500"
  while [ -n "$url" ] && [ "$url" != null ]; do
    answer=$(get "$url") || return 1
    code=$(tail -n1 <<<"$answer"); body=$(sed '$d' <<<"$answer")
    [ "$code" = 200 ] || fail "$body"
    jq -r '.results[] | [.slug, .onboarding.status,
            "\(.onboarding.steps_completed)/\(.onboarding.total_steps)", "\(.onboarding.progress) %",
            (.onboarding.current_step // "-"), ""] | @tsv' <<<"$body"
    url=$(jq -r .next <<<"$body")
  done
}

declare -A SEEN=()
START=$SECONDS
echo "Watching ${TENANT_ID:-every tenant} on $MORAN_URL (every $INTERVAL s, Ctrl-C to stop)"
while true; do
  # snapshot returns 1 when the server cannot be reached; an error answer has been printed already (exit 2).
  LINES=$(snapshot) || {
    [ "$?" -eq 1 ] && echo "error: cannot reach $MORAN_URL" >&2
    exit 2
  }
  ACTIVE=0 ATTENTION=0 TOTAL=0
  while IFS=$'\t' read -r slug status steps progress current error; do
    [ -n "$slug" ] || continue
    TOTAL=$((TOTAL + 1))
    case "$status" in
      IN_PROGRESS) ACTIVE=$((ACTIVE + 1)) ;;
      PARTIAL | FAILED | CANCELLED) ATTENTION=$((ATTENTION + 1)) ;;
    esac
    line=$(printf '%-24s %-12s %6s %6s  %-26s %s' "$slug" "$status" "$steps" "$progress" "$current" "$error")
    if [ "${SEEN[$slug]:-}" != "$line" ]; then
      SEEN[$slug]=$line
      printf '%s  %s\n' "$(date -u +%H:%M:%S)" "$line"
    fi
  done <<<"$LINES"
  if [ "$ACTIVE" -eq 0 ]; then
    echo "Settled: $TOTAL tenant(s), $ATTENTION needing attention (PARTIAL, FAILED or CANCELLED)."
    [ "$ATTENTION" -eq 0 ] && exit 0
    echo "See scripts/check_provisioning_status.sh EMAIL PASSWORD TENANT_ID and docs/runbook.md."
    exit 1
  fi
  if [ $((SECONDS - START)) -ge "$TIMEOUT" ]; then
    echo "Still running after $TIMEOUT s: $ACTIVE tenant(s) IN_PROGRESS." >&2
    exit 3
  fi
  sleep "$INTERVAL"
done
