#!/usr/bin/env bash
# Show where one tenant's provisioning stands, what went wrong, and what to do next.
#
#   scripts/check_provisioning_status.sh EMAIL PASSWORD TENANT_ID      (TENANT_ID: the tenant's id or slug)
#
# MORAN_URL overrides the server (default http://localhost:4000). Needs bash, curl and jq.
# Exit codes: 0 COMPLETED, PENDING or IN_PROGRESS; 1 PARTIAL, FAILED or CANCELLED (needs an operator);
# 2 bad usage, log-in refused, unknown tenant or server unreachable.
set -euo pipefail

MORAN_URL="${MORAN_URL:-http://localhost:4000}"
MORAN_URL="${MORAN_URL%/}"

if [ "$#" -ne 3 ]; then
  echo "usage: $0 EMAIL PASSWORD TENANT_ID" >&2
  exit 2
fi
EMAIL="$1" PASSWORD="$2" TENANT_ID="$3"
for tool in curl jq; do
  command -v "$tool" >/dev/null || { echo "error: $tool is required" >&2; exit 2; }
done

# request METHOD PATH [JSON-BODY]: prints the body, then the HTTP status on the last line.
request() {
  local args=(-sS -X "$1" "$MORAN_URL$2" -H "Accept: application/json" -w '\n%{http_code}')
  [ -n "${TOKEN:-}" ] && args+=(-H "Authorization: Bearer $TOKEN")
  [ "$#" -ge 3 ] && args+=(-H "Content-Type: application/json" --data-binary @-)
  if [ "$#" -ge 3 ]; then printf '%s' "$3" | curl "${args[@]}"; else curl "${args[@]}"; fi
}

# fail BODY: the API's error message (never the password or the token), then exit 2.
fail() {
  echo "error: $(jq -r '.detail // .error // "unexpected answer"' <<<"$1" 2>/dev/null || echo "unexpected answer")" >&2
  exit 2
}

# Log in. The password goes to curl on stdin, so it never shows in `ps`.
LOGIN_BODY=$(jq -n --arg email "$EMAIL" --arg password "$PASSWORD" '{email: $email, password: $password}')
if ! ANSWER=$(request POST /api/auth/login "$LOGIN_BODY"); then
  echo "error: cannot reach $MORAN_URL (is the server running? make serve)" >&2
  exit 2
fi
CODE=$(tail -n1 <<<"$ANSWER"); BODY=$(sed '$d' <<<"$ANSWER")
[ "$CODE" = 200 ] || fail "$BODY"
TOKEN=$(jq -r .access_token <<<"$BODY")

ANSWER=$(request GET "/api/provisioning/tenants/$TENANT_ID/status")
CODE=$(tail -n1 <<<"$ANSWER"); STATUS_BODY=$(sed '$d' <<<"$ANSWER")
[ "$CODE" = 200 ] || fail "$STATUS_BODY"

jq -r '
  "Tenant:          \(.tenant) (\(.tenant_id))",
  "Status:          \(.status)",
  "Steps completed: \(.steps_completed)/\(.total_steps)",
  "Progress:        \(.progress) %",
  "Current step:    \(.current_step // "-")",
  "Run:             \(.run_id // "none active")",
  "Errors:          \(if (.errors | length) == 0 then "none" else (.errors | length | tostring) end)",
  (.errors[] | "  - \(.step): \(.type): \(.message)\(if .engine_status then " (engine HTTP \(.engine_status))" else "" end) at \(.at // "?")"),
  "Steps:",
  (.total_steps as $total | .steps | to_entries[] | .value as $s |
    "  [\((.key + 1 | tostring | ("  " + .)[-2:]))/\($total)] \(($s.name + "                          ")[0:26]) \(($s.status + "         ")[0:9]) attempts \($s.attempts)\(if $s.optional then " (optional)" else "" end)")
' <<<"$STATUS_BODY"

# The last lines of the log (newest last): the last page of 8 lines and the one before it, trimmed to 8.
LOGS="/api/provisioning/tenants/$TENANT_ID/logs"
ANSWER=$(request GET "$LOGS?page_size=1")
if [ "$(tail -n1 <<<"$ANSWER")" = 200 ]; then
  COUNT=$(sed '$d' <<<"$ANSWER" | jq -r .count)
  LAST=$(((COUNT + 7) / 8))
  echo "Last log lines:"
  for PAGE in $((LAST - 1)) "$LAST"; do
    if [ "$PAGE" -ge 1 ]; then request GET "$LOGS?page_size=8&page=$PAGE" | sed '$d' | jq -c '.results[]'; fi
  done | jq -rs '.[-8:][] | "  \(.at) \(.level | ascii_upcase) \(if .step == "" then "-" else .step end): \(.message)"'
fi

STATUS=$(jq -r .status <<<"$STATUS_BODY")
SLUG=$(jq -r .tenant <<<"$STATUS_BODY")
echo "What to do:"
case "$STATUS" in
  COMPLETED) echo "  nothing: every step is done."; exit 0 ;;
  IN_PROGRESS) echo "  wait: a run is active. Watch it: scripts/monitor_provisioning.sh $SLUG"; exit 0 ;;
  PENDING) echo "  provisioning has not started: POST $MORAN_URL/api/provisioning/tenants/$SLUG/retry"; exit 0 ;;
  PARTIAL | CANCELLED)
    echo "  fix the cause of the errors above (docs/runbook.md), then continue from the first unfinished step:"
    echo "  curl -X POST $MORAN_URL/api/provisioning/tenants/$SLUG/continue -H \"Authorization: Bearer \$TOKEN\""
    exit 1 ;;
  FAILED)
    echo "  no step completed: fix the engine or its credentials (docs/runbook.md), then retry:"
    echo "  curl -X POST $MORAN_URL/api/provisioning/tenants/$SLUG/retry -H \"Authorization: Bearer \$TOKEN\""
    exit 1 ;;
  *) echo "  unknown status $STATUS"; exit 1 ;;
esac
