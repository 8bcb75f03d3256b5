#!/usr/bin/env bash
# deploy/systemd/check.sh — renders peftd.service.in as `make install PREFIX=/usr` does and
# scores it with `systemd-analyze security --offline=yes` (systemd >= 252); fails above
# MAX (default 3.0).
set -euo pipefail
cd "$(dirname "$0")"
MAX=${MAX:-3.0}
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
sed -e 's|@BINDIR@|/usr/bin|g' -e 's|@SYSCONFDIR@|/etc|g' peftd.service.in > "$tmp/peftd.service"
out=$(systemd-analyze security --offline=yes --threshold=100 "$tmp/peftd.service")
score=$(printf '%s\n' "$out" | sed -n 's/.*Overall exposure level for peftd.service: \([0-9.]*\).*/\1/p')
echo "systemd-analyze security: peftd.service exposure $score (max $MAX)"
[ -n "$score" ] && awk -v s="$score" -v m="$MAX" 'BEGIN { exit !(s <= m) }'
