#!/usr/bin/env bash
# Install valkey-server from the operating system's packages when it is missing.
# Debian 12 (bookworm): the 8.x package lives in bookworm-backports; the suite is added
# reusing the mirror URI that the machine's existing apt sources already name.
# Newer Debian/Ubuntu: plain `apt-get install valkey-server`.
set -euo pipefail

if command -v valkey-server >/dev/null 2>&1; then
    echo "valkey-server present: $(valkey-server --version | head -n1)"
    exit 0
fi

sudo=""
if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1; then sudo="sudo"; else
        echo "valkey-server is missing and this user cannot install packages." >&2
        echo "Install it (Debian 12: apt-get install -t bookworm-backports valkey-server), or run 'qt valkey start' once it is installed." >&2
        exit 1
    fi
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "valkey-server is missing and this is not a Debian/Ubuntu system: macOS 'brew install valkey'; with Docker 'docker compose -f docker-compose.valkey.yml up -d'." >&2
    exit 1
fi

. /etc/os-release
if [ "${VERSION_CODENAME:-}" = "bookworm" ]; then
    backports=/etc/apt/sources.list.d/qt-bookworm-backports.sources
    if ! grep -rqs "bookworm-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
        # The first Debian mirror URI that the existing sources name (deb822 or one-line style).
        mirror=$(grep -hsE '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null \
                   | awk '{print $2}' | grep -v -- '-security' | grep -m1 debian || true)
        if [ -z "$mirror" ]; then
            mirror=$(grep -hsE '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
                       | grep -v -- '-security' | awk '{ for (i = 2; i <= NF; i++) if ($i ~ /^(https?|file|mirror):/) { print $i; exit } }' \
                       | grep -m1 debian || true)
        fi
        if [ -z "$mirror" ]; then
            echo "could not find a Debian mirror URI in the apt sources to add bookworm-backports" >&2
            exit 1
        fi
        echo "adding bookworm-backports from $mirror"
        printf 'Types: deb\nURIs: %s\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
            "$mirror" | $sudo tee "$backports" >/dev/null
    fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq -t bookworm-backports valkey-server >/dev/null
else
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq valkey-server >/dev/null
fi
# The package starts a system service on some hosts; qt manages its own servers.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet valkey-server 2>/dev/null; then
    $sudo systemctl disable --now valkey-server >/dev/null 2>&1 || true
fi
echo "valkey-server installed: $(valkey-server --version | head -n1)"
