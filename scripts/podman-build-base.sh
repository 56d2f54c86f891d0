#!/usr/bin/env bash
# Build a local Debian bookworm base image with Python 3.11 without any container registry:
# mmdebstrap a minimal rootfs from the Debian mirror this machine's apt uses, then
# `podman import` it. Usage:
#
#   scripts/podman-build-base.sh [IMAGE]        # default: localhost/majordomo-base:bookworm
#
# Environment:
#   MIRROR        Debian mirror        (default: the first deb.debian.org-style URI in apt's sources, else http://deb.debian.org/debian)
#   SECURITY      security mirror      (default: the matching debian-security URI, else http://deb.debian.org/debian-security)
#   EXTRA_CA_DIR  extra CA certificates (*.crt) to trust inside the image (default:
#                 /usr/local/share/ca-certificates, i.e. whatever this host trusts on top of
#                 Debian's bundle; set it empty to skip). Needed where HTTPS goes through an
#                 intercepting proxy, or pip/uv in the build cannot reach PyPI.
#
# Needs root (or fakeroot-capable mmdebstrap modes), mmdebstrap and podman:
#   apt-get install -y mmdebstrap podman runc
set -euo pipefail

IMAGE="${1:-localhost/majordomo-base:bookworm}"
SUITE=bookworm

sources_uri() {  # first URI in apt's sources matching $1 (a path suffix like /debian)
    local suffix="$1"
    cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null \
        | grep -v '^\s*#' \
        | grep -oE '(https?|file)://[^ ]+' \
        | grep -E "${suffix}/?\$" | head -n1 || true
}
MIRROR="${MIRROR:-$(sources_uri /debian)}"
MIRROR="${MIRROR:-http://deb.debian.org/debian}"
SECURITY="${SECURITY:-$(sources_uri /debian-security)}"
SECURITY="${SECURITY:-http://deb.debian.org/debian-security}"
EXTRA_CA_DIR="${EXTRA_CA_DIR-/usr/local/share/ca-certificates}"

for tool in mmdebstrap podman; do
    command -v "$tool" >/dev/null || { echo "$0: $tool is missing (apt-get install -y $tool)" >&2; exit 1; }
done

work="$(mktemp -d /tmp/majordomo-base.XXXXXX)"
trap 'rm -rf "$work"' EXIT

hooks=()
if [[ -n "$EXTRA_CA_DIR" ]] && compgen -G "$EXTRA_CA_DIR/*.crt" >/dev/null; then
    mkdir -p "$work/ca"
    cp "$EXTRA_CA_DIR"/*.crt "$work/ca/"
    echo "trusting extra CA certificates from $EXTRA_CA_DIR: $(cd "$work/ca" && echo *.crt)"
    hooks+=(
        --customize-hook="mkdir -p \"\$1/usr/local/share/ca-certificates\" && cp $work/ca/*.crt \"\$1/usr/local/share/ca-certificates/\""
        --customize-hook="chroot \"\$1\" update-ca-certificates"
    )
fi

echo "mmdebstrap $SUITE from $MIRROR (+ $SECURITY) ..."
# --variant=apt: essential packages + apt (so derived images can apt-get install).
# Docs, man pages and apt lists are dropped to keep the image small.
mmdebstrap \
    --variant=apt \
    --include=python3,python3-venv,python3-pip,ca-certificates \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    "${hooks[@]}" \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin' \
    "$SUITE" "$work/rootfs.tar" \
    "deb $MIRROR $SUITE main" \
    "deb $MIRROR $SUITE-updates main" \
    "deb $SECURITY $SUITE-security main"

# SSL_CERT_FILE / PIP_CERT: uv and pip use their own CA bundles by default; point them at the
# system bundle (which includes EXTRA_CA_DIR's certificates).
podman import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
    --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
    --change 'CMD ["/bin/bash"]' \
    --message "Debian $SUITE + python3 from $MIRROR (scripts/podman-build-base.sh)" \
    "$work/rootfs.tar" "$IMAGE"

podman image ls "$IMAGE"
