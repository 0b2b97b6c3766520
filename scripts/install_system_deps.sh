#!/usr/bin/env bash
# Installs the Debian packages ShotStream needs, only those missing. Safe to re-run.
#   bash scripts/install_system_deps.sh             # packages.txt: what the demo needs (a Space installs the same)
#   bash scripts/install_system_deps.sh chromium    # ... and the named extras (make test: the browser test;
#                                                   #     make space-bundle: git-lfs)
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
for pkg in $(grep -v '^#' packages.txt) "$@"; do
  # A command of the package's name counts too: ffmpeg, chromium and git-lfs may come from elsewhere.
  command -v "$pkg" >/dev/null && continue
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" && continue
  need+=("$pkg")
done
if [ ${#need[@]} -eq 0 ]; then exit 0; fi
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
echo "installing system packages: ${need[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
