# Shared by scripts/*: logging and idempotent installation of what the
# project needs from Debian and rustup. Sourced, not run.

set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}

say() { printf '\n==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    die "need root to run: $*"
  fi
}

# missing_packages PKG...: prints those of PKG that are not installed.
missing_packages() {
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || echo "$pkg"
  done
}

# ensure_packages PKG...: installs the Debian packages that are missing.
# Installing some can remove others (a backported qemu-utils goes when
# Debian's qemu-system-x86 comes in): those are installed again, from the
# versions that fit.
ensure_packages() {
  local missing
  mapfile -t missing < <(missing_packages "$@")
  [ ${#missing[@]} -eq 0 ] && return 0
  say "installing Debian packages: ${missing[*]}"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
  mapfile -t missing < <(missing_packages "$@")
  [ ${#missing[@]} -eq 0 ] && return 0
  say "installing Debian packages the first install removed: ${missing[*]}"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
  mapfile -t missing < <(missing_packages "$@")
  [ ${#missing[@]} -eq 0 ] || die "these Debian packages could not be installed: ${missing[*]}"
}

# ensure_rust_targets TARGET...: adds the rustup targets that are missing.
ensure_rust_targets() {
  command -v rustup >/dev/null || die "rustup is required (https://rustup.rs)"
  local installed
  installed=$(rustup target list --installed)
  for target in "$@"; do
    grep -qx "$target" <<<"$installed" || { say "adding rust target $target"; rustup target add "$target"; }
  done
}

# What building and testing Berth needs from Debian: a C toolchain for
# crates with build scripts, the shells and process tools the tests drive.
BUILD_PACKAGES=(build-essential pkg-config)
TEST_PACKAGES=(bash dash procps busybox-static runc docker-registry skopeo apache2-utils openssl bsdutils
  qemu-system-x86 qemu-utils nftables iproute2 python3 openssh-server openssh-client util-linux)

# What the cross checks of the CLI need for the C in its crypto (ring's
# build script compiles C even for `cargo check`): MinGW for Windows, and
# clang for macOS, with a few freestanding headers in place of Apple's SDK.
CROSS_PACKAGES=(clang gcc-mingw-w64-x86-64)

# cross_c_env TARGET: exports the C compiler settings `cargo check
# --target TARGET` needs here.
cross_c_env() {
  case "$1" in
    aarch64-apple-darwin)
      local stubs="$ROOT/target/cross-stubs/darwin"
      mkdir -p "$stubs"
      # Only what ring's C includes; declarations, no code.
      printf '#pragma once\n#define TARGET_OS_MAC 1\n#define TARGET_OS_OSX 1\n#define TARGET_OS_IPHONE 0\n#define TARGET_OS_IOS 0\n#define TARGET_OS_TV 0\n#define TARGET_OS_WATCH 0\n#define TARGET_OS_SIMULATOR 0\n' >"$stubs/TargetConditionals.h"
      printf '#pragma once\n#define assert(x) ((void)0)\n' >"$stubs/assert.h"
      printf '#pragma once\n#include <stddef.h>\nvoid *memcpy(void *, const void *, size_t);\nvoid *memset(void *, int, size_t);\nint memcmp(const void *, const void *, size_t);\nvoid *memmove(void *, const void *, size_t);\nsize_t strlen(const char *);\n' >"$stubs/string.h"
      export CC_aarch64_apple_darwin=clang
      export CFLAGS_aarch64_apple_darwin="-ffreestanding -nostdinc -isystem $(clang -print-resource-dir)/include -I$stubs"
      ;;
    x86_64-pc-windows-gnu)
      export CC_x86_64_pc_windows_gnu=x86_64-w64-mingw32-gcc
      ;;
  esac
}

# ensure_docker_cli: the stock docker client the Engine API is tested
# against; Debian's docker.io when none is on PATH.
ensure_docker_cli() {
  command -v docker >/dev/null && return 0
  ensure_packages docker.io
}

ensure_toolchain() {
  command -v cargo >/dev/null || die "cargo is required (https://rustup.rs)"
  ensure_packages "${BUILD_PACKAGES[@]}"
}

# ensure_moto: moto's EC2 server and boto3 (PyPI moto[server]) in a venv
# of the project's, target/moto-venv, for the ec2 driver's tests.
ensure_moto() {
  local venv="$ROOT/target/moto-venv"
  [ -x "$venv/bin/moto_server" ] && return 0
  say "installing moto[server] into $venv"
  if ! python3 -m venv "$venv" 2>/dev/null; then
    ensure_packages python3-venv
    rm -rf "$venv"
    /usr/bin/python3 -m venv "$venv"
  fi
  "$venv/bin/pip" install -q --disable-pip-version-check 'moto[server]'
}
