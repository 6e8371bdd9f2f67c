#!/usr/bin/env bash
# Make the serving image's base (the Dockerfile's PYTHON_IMAGE) where it cannot be pulled.
#
#   sudo docker/make-base-image.sh                          # the Dockerfile's default base
#   sudo docker/make-base-image.sh python:3.11-slim-bookworm
#
# Nothing happens when the image is already there or `docker pull` gets it. Otherwise (no
# route to Docker Hub, as on this project's build machines) it builds an equivalent from
# Debian's own packages: debootstrap of the Debian release the tag names (bookworm), with
# Debian's python3 (3.11 on bookworm), venv and pip, imported with `docker import` and
# tagged with the image name, so the Dockerfile builds unchanged. It checks that Debian's
# python3 is the version the tag names. Needs root (debootstrap), debootstrap and docker.
# The base it makes also trusts the certificate authorities this machine added locally
# (/usr/local/share/ca-certificates, e.g. a TLS-inspecting proxy's), so that pip inside the
# build reaches the package index the way the machine does. Settings: DOCKER (default
# /usr/bin/docker when present), DEBIAN_MIRROR (default http://deb.debian.org/debian),
# EXTRA_CA_DIR (default /usr/local/share/ca-certificates; empty: none).
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
DOCKER=${DOCKER:-$(command -v /usr/bin/docker || command -v docker || true)}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
EXTRA_CA_DIR=${EXTRA_CA_DIR-/usr/local/share/ca-certificates}

log() { printf '[make-base-image] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

[ -n "$DOCKER" ] || die "no docker client found (install docker.io)"
IMAGE=${1:-$(sed -n 's/^ARG PYTHON_IMAGE=//p' "$REPO/Dockerfile" | head -n 1)}
[ -n "$IMAGE" ] || die "no image named, and no 'ARG PYTHON_IMAGE=' default in Dockerfile"

if "$DOCKER" image inspect "$IMAGE" >/dev/null 2>&1; then
    log "$IMAGE is already there"
    exit 0
fi
if "$DOCKER" pull "$IMAGE" >/dev/null 2>&1; then
    log "$IMAGE pulled"
    exit 0
fi

# python:3.11-slim-bookworm -> Python 3.11 on Debian bookworm.
tag=${IMAGE##*:}
[[ "$IMAGE" == python:* && "$tag" =~ ^([0-9]+\.[0-9]+)-slim-([a-z]+)$ ]] ||
    die "$IMAGE cannot be pulled and is not of the form python:X.Y-slim-SUITE, which this script can make"
python_version=${BASH_REMATCH[1]}
suite=${BASH_REMATCH[2]}

[ "$(id -u)" = 0 ] || die "$IMAGE cannot be pulled; making it with debootstrap needs root"
command -v debootstrap >/dev/null || die "$IMAGE cannot be pulled; install debootstrap to make it"

log "$IMAGE cannot be pulled: making it from Debian $suite's packages ($DEBIAN_MIRROR)"
root=$(mktemp -d /var/tmp/vsepp-base.XXXXXX)
trap 'rm -rf "$root"' EXIT
# minbase: essential packages and apt only. python3-venv brings ensurepip's pip wheel, which
# is what the Dockerfile's `python -m venv` needs; python-is-python3 gives `python`, as the
# official image has; ca-certificates lets pip reach an index over HTTPS.
debootstrap --variant=minbase \
    --include=python3,python3-venv,python-is-python3,ca-certificates \
    "$suite" "$root" "$DEBIAN_MIRROR" >&2
found=$(chroot "$root" python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
[ "$found" = "$python_version" ] ||
    die "Debian $suite's python3 is $found, not $python_version as $IMAGE says"
if [ -n "$EXTRA_CA_DIR" ] && compgen -G "$EXTRA_CA_DIR/*.crt" >/dev/null; then
    log "adding this machine's local certificate authorities from $EXTRA_CA_DIR"
    cp "$EXTRA_CA_DIR"/*.crt "$root/usr/local/share/ca-certificates/"
    chroot "$root" update-ca-certificates >&2
fi
chroot "$root" apt-get clean
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/log/*.log \
    "$root"/tmp/* "$root"/root/.cache

# The official image's environment, so that RUN lines behave the same.
tar --numeric-owner -C "$root" -c . | "$DOCKER" import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change "LABEL org.opencontainers.image.description=\"Debian $suite with Debian's python$python_version, made by docker/make-base-image.sh\"" \
    --change 'CMD ["python3"]' \
    - "$IMAGE" >/dev/null
log "$IMAGE made ($("$DOCKER" image inspect -f '{{.Size}}' "$IMAGE") bytes)"
