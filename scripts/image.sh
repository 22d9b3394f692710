#!/usr/bin/env bash
# Builds the platform image from ./Dockerfile and proves it runs.
#
# With a Docker daemon: `docker build`. Without one (these build machines): buildah, rootless
# of any registry (--pull-never). Base images that are not in local storage are replaced by
# stand-ins made here: the Rust build image from `debootstrap --variant=minbase bookworm` plus
# gcc, with the host's Rust toolchain mounted read-only; the runtime image with only the files
# of the packages distroless/cc ships (glibc, libgcc, ca-certificates, tzdata, netbase) and its
# `nonroot` user (65532). Then it checks `platform --help`, that the image runs as a non-root
# uid, and that `platform users` starts and answers /health/live.
#
# Environment: IMAGE (default platform:local), RUST_IMAGE, RUNTIME_IMAGE (Dockerfile defaults),
# BUILDAH_STORAGE_DRIVER (default overlay; vfs works everywhere but is slower), BUILD_STAGE (tag
# of the build stage, default localhost/platform-build:cache). Untagged images of earlier
# buildah builds are removed after a build passes.
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE="${IMAGE:-platform:local}"
RUST_IMAGE="${RUST_IMAGE:-docker.io/library/rust:1.95-slim-bookworm}"
RUNTIME_IMAGE="${RUNTIME_IMAGE:-gcr.io/distroless/cc-debian12:nonroot}"
REVISION="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
VERSION="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)"
WORK="target/image"
# The tag of the build stage (buildah path), which keeps the layer cache reachable.
BUILD_STAGE="${BUILD_STAGE:-localhost/platform-build:cache}"
CHECK_PORT="${CHECK_PORT:-39331}"

log() { echo "image: $*" >&2; }
die() { echo "image: error: $*" >&2; exit 1; }

wait_live() { # url
  for _ in $(seq 100); do
    if curl -fsS --max-time 1 "$1" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  return 1
}

if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
  log "building $IMAGE with docker"
  docker build --build-arg "VERSION=$VERSION" --build-arg "REVISION=$REVISION" -t "$IMAGE" .
  docker run --rm "$IMAGE" --help >/dev/null
  user="$(docker image inspect --format '{{.Config.User}}' "$IMAGE")"
  cid="$(docker run -d --rm -p "127.0.0.1:$CHECK_PORT:3001" "$IMAGE" users --redis-url redis://127.0.0.1:1)"
  trap 'docker rm -f "$cid" >/dev/null 2>&1 || true' EXIT
  wait_live "http://127.0.0.1:$CHECK_PORT/health/live" || die "platform users in the image did not answer /health/live"
  size="$(docker image ls --format '{{.Size}}' "$IMAGE" | head -1)"
else
  command -v buildah >/dev/null 2>&1 || die "neither a Docker daemon nor buildah is available (install buildah: scripts/ci-tools.sh)"
  B=(buildah --storage-driver "${BUILDAH_STORAGE_DRIVER:-overlay}")
  have_image() { "${B[@]}" inspect --type image "$1" >/dev/null 2>&1; }
  mkdir -p "$WORK"

  debootstrap_root() { # dir extra-packages
    local dir="$1" include="$2"
    if [ ! -f "$dir/.complete" ]; then
      command -v debootstrap >/dev/null 2>&1 || die "debootstrap is missing (scripts/ci-tools.sh installs it)"
      rm -rf "$dir"
      log "debootstrap bookworm into $dir (+ $include)"
      debootstrap --variant=minbase --include="$include" bookworm "$dir" http://deb.debian.org/debian >"$dir.log" 2>&1 \
        || die "debootstrap failed, see $dir.log"
      rm -rf "$dir/var/cache/apt/archives/"*.deb "$dir/var/lib/apt/lists/"*
      touch "$dir/.complete"
    fi
  }

  if ! have_image "$RUST_IMAGE"; then
    log "$RUST_IMAGE is not in local storage: making a stand-in from debootstrap + the host toolchain"
    root="$WORK/rootfs-build"
    debootstrap_root "$root" gcc,libc6-dev,ca-certificates
    ctr="$("${B[@]}" from scratch)"
    mnt="$("${B[@]}" mount "$ctr")"
    cp -a "$root/." "$mnt/"
    rm -f "$mnt/.complete"
    # Trust what this host trusts (a network may intercept TLS with its own CA): cargo
    # downloads crates inside the build.
    if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
      cp /etc/ssl/certs/ca-certificates.crt "$mnt/etc/ssl/certs/ca-certificates.crt"
    fi
    "${B[@]}" umount "$ctr" >/dev/null
    "${B[@]}" config \
      --env PATH=/usr/local/cargo/bin:/opt/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
      --env CARGO_HOME=/usr/local/cargo \
      --label org.opencontainers.image.description="stand-in for $RUST_IMAGE: toolchain mounted at /opt/rust" \
      "$ctr"
    "${B[@]}" commit --quiet "$ctr" "$RUST_IMAGE" >/dev/null
    "${B[@]}" rm "$ctr" >/dev/null
  fi

  if ! have_image "$RUNTIME_IMAGE"; then
    log "$RUNTIME_IMAGE is not in local storage: making a distroless-like stand-in"
    root="$WORK/rootfs-runtime"
    debootstrap_root "$root" ca-certificates,tzdata,netbase
    list="$WORK/runtime-files"
    : >"$list"
    # First the merged-/usr symlinks (/lib64 -> usr/lib64, ...): package paths go through them.
    for l in bin lib lib64 sbin; do
      if [ -L "$root/$l" ]; then echo "./$l" >>"$list"; fi
    done
    for pkg in base-files libc6 libgcc-s1 ca-certificates tzdata netbase; do
      f=""
      for candidate in "$root/var/lib/dpkg/info/$pkg.list" "$root/var/lib/dpkg/info/$pkg:"*.list; do
        if [ -f "$candidate" ]; then f="$candidate"; break; fi
      done
      [ -n "$f" ] || die "package $pkg not found in $root"
      # Files and symlinks only (directories come with them); skip docs and manuals.
      while IFS= read -r p; do
        case "$p" in /usr/share/doc/*|/usr/share/man/*|/usr/share/lintian/*) continue ;; esac
        if [ -f "$root$p" ] || [ -L "$root$p" ]; then echo ".$p"; fi
      done <"$f" >>"$list"
    done
    ls -d "$root/etc/ssl/certs/ca-certificates.crt" >/dev/null || die "no CA bundle in $root"
    echo "./etc/ssl/certs/ca-certificates.crt" >>"$list"
    ctr="$("${B[@]}" from scratch)"
    mnt="$("${B[@]}" mount "$ctr")"
    for l in bin lib lib64 sbin; do
      if [ -L "$root/$l" ]; then mkdir -p "$mnt/$(readlink "$root/$l")"; fi
    done
    tar -C "$root" --no-recursion -cf - -T "$list" | tar -C "$mnt" -xf -
    mkdir -p "$mnt/tmp" "$mnt/home/nonroot" "$mnt/etc"
    chmod 1777 "$mnt/tmp"
    chown 65532:65532 "$mnt/home/nonroot"
    printf 'root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$mnt/etc/passwd"
    printf 'root:x:0:\nnobody:x:65534:\nnonroot:x:65532:\n' >"$mnt/etc/group"
    "${B[@]}" umount "$ctr" >/dev/null
    "${B[@]}" config \
      --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
      --env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
      --user 65532:65532 --workingdir /home/nonroot \
      --label org.opencontainers.image.description="stand-in for $RUNTIME_IMAGE" \
      "$ctr"
    "${B[@]}" commit --quiet "$ctr" "$RUNTIME_IMAGE" >/dev/null
    "${B[@]}" rm "$ctr" >/dev/null
  fi

  toolchain="$(rustc --print sysroot)"
  log "building $IMAGE with buildah (toolchain $toolchain mounted at /opt/rust)"
  bud() {
    "${B[@]}" bud --isolation chroot --pull-never --layers \
      --build-arg "RUST_IMAGE=$RUST_IMAGE" --build-arg "RUNTIME_IMAGE=$RUNTIME_IMAGE" \
      --build-arg "VERSION=$VERSION" --build-arg "REVISION=$REVISION" \
      -v "$toolchain:/opt/rust:ro" "$@" .
  }
  # The build stage first, tagged: it holds the layer cache (dependencies compiled once per
  # Cargo.lock), which stays reachable through the tag when untagged images are removed below.
  bud --target build -t "$BUILD_STAGE"
  bud -t "$IMAGE"

  user="$("${B[@]}" inspect --type image --format '{{.OCIv1.Config.User}}' "$IMAGE")"
  ctr="$("${B[@]}" from --pull-never "$IMAGE")"
  pid=""
  cleanup() {
    if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
    "${B[@]}" rm "$ctr" >/dev/null 2>&1 || true
  }
  trap cleanup EXIT
  # The ENTRYPOINT as written (`platform`, found on the image's PATH), as `docker run IMAGE --help` would.
  entry="$("${B[@]}" inspect --type image --format '{{index .OCIv1.Config.Entrypoint 0}}' "$IMAGE")"
  "${B[@]}" run --isolation chroot "$ctr" -- "$entry" --help >/dev/null || die "'$entry --help' failed in the image"
  "${B[@]}" run --isolation chroot "$ctr" -- platform users --host 127.0.0.1 --port "$CHECK_PORT" \
    --redis-url redis://127.0.0.1:1 >"$WORK/users.log" 2>&1 &
  pid=$!
  wait_live "http://127.0.0.1:$CHECK_PORT/health/live" || { cat "$WORK/users.log" >&2; die "platform users in the image did not answer /health/live"; }
  # The process really runs as the image's uid (not just the config saying so).
  listener="$(ss -Hltnp "sport = :$CHECK_PORT" | sed -n 's/.*pid=\([0-9]*\).*/\1/p' | head -1)"
  [ -n "$listener" ] || die "no process listens on :$CHECK_PORT"
  running_uid="$(awk '/^Uid:/ {print $2}' "/proc/$listener/status")"
  [ "$running_uid" = "${user%%:*}" ] || die "platform runs as uid $running_uid, the image says $user"
  size="$("${B[@]}" images --noheading --format '{{.Size}}' "$IMAGE" | head -1)"

  # Every untagged image left now is an earlier build's (a previous $IMAGE or build stage):
  # this build's two are tagged. Removing them keeps local storage from growing ~1 GB a build.
  removed=0
  for id in $("${B[@]}" images --quiet --filter dangling=true 2>/dev/null || true); do
    if "${B[@]}" rmi "$id" >/dev/null 2>&1; then removed=$((removed + 1)); fi
  done
  [ "$removed" -eq 0 ] || log "removed $removed untagged image(s) of earlier builds"
fi

case "$user" in
  ''|0|0:*|root|root:*) die "the image runs as root (USER '$user')" ;;
  [0-9]*) ;;
  *) die "USER '$user' is not numeric: Kubernetes cannot check runAsNonRoot" ;;
esac
log "ok: $IMAGE runs as uid ${user%%:*}, --help works, users answers /health/live"
log "size: $size"
