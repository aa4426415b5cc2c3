#!/usr/bin/env bash
# Install the Coact agent on a Linux host as a systemd service, then enroll it.
#
#   sudo installers/install-agent.sh --relay https://relay.example.com --code XXXXX-XXXXX-XXXXX-XXXXX \
#        --sandbox /srv/coact-sandbox
#
# What it does, and nothing more: creates the `coact` system user, a virtualenv in
# /opt/coact/venv with this checkout installed, the data directory
# /var/lib/coact-agent (0700), enrolls the device (the private key is generated here
# and never leaves it), writes a sandbox policy, installs and starts the unit.
set -euo pipefail

relay="" code="" sandbox=""
while [ $# -gt 0 ]; do
  case "$1" in
    --relay) relay="$2"; shift 2 ;;
    --code) code="$2"; shift 2 ;;
    --sandbox) sandbox="$2"; shift 2 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "unknown option: $1" >&2; exit 2 ;;
  esac
done
[ -n "$relay" ] && [ -n "$code" ] && [ -n "$sandbox" ] || { echo "need --relay, --code and --sandbox" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "run as root (it creates a system user and a service)" >&2; exit 1; }

here=$(cd "$(dirname "$0")/.." && pwd)
data=/var/lib/coact-agent
id coact >/dev/null 2>&1 || useradd --system --home-dir "$data" --shell /usr/sbin/nologin coact
python3 -m venv /opt/coact/venv
/opt/coact/venv/bin/pip install --quiet "$here"
install -d -m 0700 -o coact -g coact "$data"
install -d -m 0750 -o coact -g coact "$sandbox"
sudo -u coact /opt/coact/venv/bin/coact agent enroll --relay "$relay" --code "$code" --data-dir "$data"
sudo -u coact /opt/coact/venv/bin/coact policy init --sandbox "$sandbox" --data-dir "$data"
sed "s#^ReadWritePaths=.*#ReadWritePaths=$data $sandbox#" "$here/installers/systemd/coact-agent.service" \
  > /etc/systemd/system/coact-agent.service
systemctl daemon-reload
systemctl enable --now coact-agent
echo "Coact agent installed and running; check with: sudo -u coact /opt/coact/venv/bin/coact agent status --data-dir $data"
