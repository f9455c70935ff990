#!/usr/bin/env bash
# Installs the system tools arledger's build needs, and only those missing:
#   java (17+) runs the local Kafka broker; mvn fetches its jars (`make jars`);
#   PostgreSQL's server binaries run the PostgreSQL event-store tests (initdb, pg_ctl);
#   openssl makes the throwaway certificates of the TLS cluster tests;
#   chromium + chromium-driver run the web workspace's browser tests (headless, Debian's own driver:
#   selenium is pointed at it and never downloads one).
# Debian's default-jre-headless is Java 17 on bookworm and 21 on trixie: both fit.
# Called by the Makefile before anything that needs them; a no-op when present.
set -euo pipefail

packages=()
command -v java >/dev/null 2>&1 || packages+=(default-jre-headless)
command -v mvn >/dev/null 2>&1 || packages+=(maven)
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || packages+=(postgresql)
command -v openssl >/dev/null 2>&1 || packages+=(openssl)  # throwaway TLS certificates of the cluster tests
command -v chromium >/dev/null 2>&1 || packages+=(chromium)  # the web workspace's browser tests
command -v chromedriver >/dev/null 2>&1 || packages+=(chromium-driver)

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        echo "install-system-deps: need root (or sudo) to run: $*" >&2
        exit 1
    fi
}

if [ "${#packages[@]}" -gt 0 ]; then
    echo "install-system-deps: installing ${packages[*]} with apt-get" >&2
    export DEBIAN_FRONTEND=noninteractive
    as_root apt-get update -q
    as_root apt-get install -y -q --no-install-recommends "${packages[@]}"
fi

# Only a warning here: `arledger broker start` refuses an old Java with a clear message.
major=$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -n1)
if [ -n "$major" ] && [ "$major" -lt 17 ]; then
    echo "install-system-deps: java on PATH is version $major; Kafka 4 needs 17+" >&2
fi
