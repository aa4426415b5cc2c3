#!/usr/bin/env bash
# Install the Coact agent for the current macOS user as a LaunchAgent, then enroll it.
#
#   installers/install-agent-macos.sh --relay https://relay.example.com --code XXXXX-XXXXX-XXXXX-XXXXX \
#        --sandbox ~/CoactSandbox
#   installers/install-agent-macos.sh --print-plist     # the LaunchAgent as it would be installed
#
# Per user, no root: a virtualenv and the data directory (0700) under
# ~/Library/Application Support/Coact, logs in ~/Library/Logs/Coact, the device enrolled
# (its private key is generated here and never leaves it), a sandbox policy, and
# ~/Library/LaunchAgents/dev.coact.agent.plist written with absolute paths (launchd
# expands neither ~ nor $HOME) and loaded.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
template="$here/installers/launchd/dev.coact.agent.plist"

render_plist() {
  [ -n "${HOME:-}" ] && [ "${HOME#/}" != "$HOME" ] || { echo "HOME must be an absolute path" >&2; exit 1; }
  # '#' cannot occur in the template, and a home containing it is refused rather than mangled.
  case "$HOME" in *'#'*|*'&'*|*'\'*) echo "HOME contains a character this installer does not handle: $HOME" >&2; exit 1 ;; esac
  sed "s#@HOME@#$HOME#g" "$template"
}

relay="" code="" sandbox="" print=0
while [ $# -gt 0 ]; do
  case "$1" in
    --relay) relay="$2"; shift 2 ;;
    --code) code="$2"; shift 2 ;;
    --sandbox) sandbox="$2"; shift 2 ;;
    --print-plist) print=1; shift ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "unknown option: $1" >&2; exit 2 ;;
  esac
done
if [ "$print" = 1 ]; then render_plist; exit 0; fi
[ -n "$relay" ] && [ -n "$code" ] && [ -n "$sandbox" ] || { echo "need --relay, --code and --sandbox" >&2; exit 2; }
[ "$(id -u)" != 0 ] || { echo "run as the user whose device this is, not as root (a LaunchAgent is per user)" >&2; exit 1; }

base="$HOME/Library/Application Support/Coact"
plist="$HOME/Library/LaunchAgents/dev.coact.agent.plist"
install -d -m 0700 "$base" "$base/agent" "$HOME/Library/Logs/Coact"
install -d -m 0750 "$sandbox"
python3 -m venv "$base/venv"
"$base/venv/bin/pip" install --quiet "$here"
"$base/venv/bin/coact" agent enroll --relay "$relay" --code "$code" --data-dir "$base/agent"
"$base/venv/bin/coact" policy init --sandbox "$sandbox" --data-dir "$base/agent"
install -d "$HOME/Library/LaunchAgents"
render_plist > "$plist.tmp"
plutil -lint "$plist.tmp" >/dev/null
mv "$plist.tmp" "$plist"
launchctl bootout "gui/$(id -u)/dev.coact.agent" 2>/dev/null || true
launchctl bootstrap "gui/$(id -u)" "$plist"
echo "Coact agent installed and running; check with: \"$base/venv/bin/coact\" agent status --data-dir \"$base/agent\""
