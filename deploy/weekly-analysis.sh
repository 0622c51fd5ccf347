#!/usr/bin/env bash
# The reference deployment's weekly analysis: run `fraiseql-cli analyze` on the metrics database,
# count the high-priority suggestions with the deployment's jq filter, and post a summary to a
# chat webhook (Slack-compatible `{"text": …}`). Run it from cron or the Kubernetes CronJob of
# deploy/k8s/weekly-analysis.yaml.
#
# Environment:
#   FRAISEQL_ANALYZE_DATABASE_URL  metrics database (a fraiseql_analyst login); default
#                                  FRAISEQL_METRICS_DATABASE_URL
#   FRAISEQL_CHAT_WEBHOOK_URL      where to post (not needed with --dry-run)
#   FRAISEQL_CLI                   the command line to run (default: fraiseql-cli)
#   FRAISEQL_CHAT_RETRIES          retries of a failed post (default 3)
# Options:
#   --dry-run        print the message that would be posted, post nothing
#   --report FILE    post about a saved `analyze --format json` report instead of running analyze
#   --window W       analysis window (default 7d)
# Exit codes: 0 posted (or dry run), 1 analysis or post failed, 2 usage or configuration error.
# Neither the database URL nor the webhook URL (both hold secrets) is ever printed.
set -euo pipefail

die() { printf 'weekly-analysis: %s\n' "$1" >&2; exit "${2:-1}"; }

dry_run=0
report_file=""
window=7d
while (($#)); do
    case $1 in
        --dry-run) dry_run=1 ;;
        --report) report_file=${2:?--report needs a file}; shift ;;
        --window) window=${2:?--window needs a value}; shift ;;
        -h | --help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument: $1 (see --help)" 2 ;;
    esac
    shift
done
command -v jq >/dev/null || die "jq is required" 2

if [[ -n $report_file ]]; then
    report=$(cat -- "$report_file") || die "cannot read $report_file" 2
else
    URL=${FRAISEQL_ANALYZE_DATABASE_URL:-${FRAISEQL_METRICS_DATABASE_URL:-}}
    [[ -n $URL ]] || die "set FRAISEQL_ANALYZE_DATABASE_URL (or FRAISEQL_METRICS_DATABASE_URL)" 2
    read -r -a cli <<<"${FRAISEQL_CLI:-fraiseql-cli}"
    report=$("${cli[@]}" analyze --database "$URL" --window "$window" --format json) \
        || die "fraiseql-cli analyze failed"
fi

# The reference deployment's filter, unchanged.
high=$(jq '.suggestions | map(select(.priority == "high" or .priority == "critical")) | length' \
    <<<"$report") || die "the analysis is not the JSON of analyze --format json"

# Up to five high-priority suggestions, one line each. Names come from the analyzed workload:
# jq builds the JSON payload, so they cannot break it.
text=$(jq -r --argjson high "$high" '
    "FraiseQL weekly analysis (\(.window.start // "?") .. \(.window.end // "?")): "
    + "\($high) high-priority suggestion(s), \(.suggestions | length) in all, "
    + "\(.metrics.total_executions // 0 | floor) queries analyzed."
    + ([.suggestions[]
        | select(.priority == "high" or .priority == "critical")][:5]
        | map("\n- [\(.priority)] \(.type) on \(.table): ~\(.impact.estimated_speedup // "?")x for "
              + "\(.impact.queries_per_day // 0 | floor) queries/day")
        | join(""))
' <<<"$report")
payload=$(jq -n --arg text "$text" '{text: $text}')

if ((dry_run)); then
    printf '%s\n' "$payload"
    exit 0
fi
webhook=${FRAISEQL_CHAT_WEBHOOK_URL:-}
[[ -n $webhook ]] || die "set FRAISEQL_CHAT_WEBHOOK_URL (or use --dry-run)" 2
# The URL reaches curl through its config on stdin, not argv: a webhook URL is a credential and
# argv is visible to every user of the machine (ps).
printf 'url = "%s"\n' "${webhook//\"/\\\"}" \
    | curl --silent --show-error --fail --max-time 30 --retry "${FRAISEQL_CHAT_RETRIES:-3}" --config - \
        -H 'Content-Type: application/json' --data-binary "$payload" -o /dev/null \
    || die "posting to the chat webhook failed"
printf 'weekly-analysis: posted (%s high-priority suggestion(s))\n' "$high"
