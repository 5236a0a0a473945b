#!/bin/sh
# The toolchains tests/test_portable_builds.py builds fastloss with, besides the default
# compiler: clang with LLVM's OpenMP runtime (libomp), and the aarch64 cross compiler.
# Installed with apt-get (Debian, Ubuntu) when they are missing and this user may
# (root, or sudo without a password); elsewhere nothing is installed and those tests
# are skipped with the reason.  Never fails: the tests say what is missing.
PACKAGES="clang libomp-dev gcc-aarch64-linux-gnu libc6-dev-arm64-cross"

missing=""
for package in $PACKAGES; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" \
        || missing="$missing $package"
done
[ -z "$missing" ] && exit 0

if ! command -v apt-get >/dev/null 2>&1; then
    echo "tests/toolchains.sh: no apt-get here; install$missing by hand for the portable-build tests" >&2
    exit 0
fi
if [ "$(id -u)" = 0 ]; then
    as_root=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    as_root="sudo -n"
else
    echo "tests/toolchains.sh: not root; install$missing for the portable-build tests" >&2
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
echo "tests/toolchains.sh: installing$missing" >&2
$as_root apt-get install -y -q --no-install-recommends $missing >/dev/null \
    || { $as_root apt-get update -q >/dev/null && \
         $as_root apt-get install -y -q --no-install-recommends $missing >/dev/null; } \
    || echo "tests/toolchains.sh: could not install$missing; the portable-build tests that need them are skipped" >&2
exit 0
