#!/bin/sh
# Install the Debian packages the tests use, leaving the machine's services as they were:
#   - no recommends (prometheus would bring node-exporter and smartmontools);
#   - a policy-rc.d answering 101 while apt runs, so no postinst starts a service
#     (written only when none exists, removed after);
#   - every systemd unit a NEWLY installed package enabled is disabled again:
#     the tests start their own unbound, redis-server, prometheus, ... on free ports.
#     Outside a dpkg run deb-systemd-helper refuses and systemctl may not reach a
#     systemd, so the enablement links the install added (*.wants/, *.requires/
#     under /etc/systemd/system) are also removed directly; masks are kept.
# Packages already installed are not reinstalled; when a dependency forces an upgrade of
# one, the script names it first. Needs root (apt-get); uses sudo otherwise.
# Usage: tests/support/debian-packages.sh PACKAGE...
set -eu
missing=""
for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
[ -n "$missing" ] || exit 0
SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
echo "installing Debian packages (services neither started nor enabled):$missing"
before=$(mktemp); links=$(mktemp); trap 'rm -f "$before" "$links"' EXIT
dpkg-query -W -f '${Package}\n' | sort > "$before"
find /etc/systemd/system -type l 2>/dev/null | sort > "$links"
guard=""
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
  $SUDO chmod +x /usr/sbin/policy-rc.d
  guard=1
fi
status=0
$SUDO apt-get update -q || status=$?
if [ $status = 0 ]; then
  # Say so when a dependency forces an upgrade of something already installed (apt
  # marks those "Inst pkg [old version] (new version ...)"): that changes the machine too.
  upgrades=$(apt-get install -s -q --no-install-recommends $missing 2>/dev/null | sed -n 's/^Inst \([^ ]*\) \[.*/\1/p' | tr '\n' ' ')
  [ -z "$upgrades" ] || echo "note: installing these upgrades already installed packages: $upgrades"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends $missing || status=$?
fi
[ -z "$guard" ] || $SUDO rm -f /usr/sbin/policy-rc.d
[ $status = 0 ] || exit $status
new_units=""
for pkg in $(dpkg-query -W -f '${Package}\n' | sort | comm -13 "$before" -); do
  for unit in $(dpkg -L "$pkg" 2>/dev/null | grep -E '^/(usr/)?lib/systemd/system/[^/@]+\.(service|socket|timer)$' || true); do
    name=$(basename "$unit")
    $SUDO deb-systemd-helper disable "$name" >/dev/null 2>&1 || $SUDO systemctl disable "$name" >/dev/null 2>&1 || true
    new_units="$new_units $pkg:$name"
  done
done
# Enablement links the install created, whoever created them (a postinst of a new package).
find /etc/systemd/system -type l 2>/dev/null | sort | comm -13 "$links" - | while read -r link; do
  case "$link" in
    */*.wants/*|*/*.requires/*)
      $SUDO rm -f "$link"
      echo "  removed enablement link $link"
      ;;
  esac
done
for entry in $new_units; do
  name=${entry#*:}
  if [ -n "$(find /etc/systemd/system -path '*.wants/*' -name "$name" 2>/dev/null)" ]; then
    echo "  ${entry%%:*}: $name is still enabled (it was before this install)"
  else
    echo "  ${entry%%:*}: $name not enabled"
  fi
done
