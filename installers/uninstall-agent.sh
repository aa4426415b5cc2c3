#!/usr/bin/env bash
# Stop and remove the Coact agent service. Keeps /var/lib/coact-agent (key, audit outbox)
# unless --purge is given: unsent audit records live there.
set -euo pipefail
purge=no
[ "${1:-}" = "--purge" ] && purge=yes
[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }
systemctl disable --now coact-agent 2>/dev/null || true
rm -f /etc/systemd/system/coact-agent.service
systemctl daemon-reload
rm -rf /opt/coact/venv
if [ "$purge" = yes ]; then rm -rf /var/lib/coact-agent; fi
echo "Coact agent removed${purge/yes/ (data purged)}${purge/no/ (data kept in /var/lib/coact-agent)}"
