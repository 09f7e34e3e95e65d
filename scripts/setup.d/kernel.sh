#!/bin/bash
# Guest kernel for the vm runtime: Debian's own bookworm linux-image-6.1.*-amd64, fetched with
# `apt-get download` (nothing is installed on the host) and unpacked into <root>/.deps/kernel/.
# We keep vmlinuz and the few modules the initramfs loads (virtio transport, virtio-net and its
# failover helpers, console/blk/rng); the rest of the 400 MB module tree is dropped.
# Idempotent: does nothing when the unpacked package matches the current candidate.
set -euo pipefail

root="$(pwd)"
dest="$root/.deps/kernel"
stamp="$dest/package"

# Fast path: an unpacked kernel is kept until CRBENCH_KERNEL_REFRESH=1 asks for the current
# candidate (apt-cache on every set-up costs ~40 s and a guest kernel rarely needs to move).
if [ -z "${CRBENCH_KERNEL_REFRESH:-}" ] && [ -f "$stamp" ] && [ -e "$dest/vmlinuz" ]; then
  echo "kernel.sh: $(cat "$stamp") already unpacked in $dest (CRBENCH_KERNEL_REFRESH=1 to update)"
  exit 0
fi

# Resolve the versioned package from the meta-package's dependency on the bookworm 6.1 line.
# backports' 6.12 meta-package is never chosen: we only take a dependency named linux-image-6.1.*.
pkg=""
for ver in $(apt-cache madison linux-image-amd64 | awk -F'|' '{gsub(/ /,"",$2); print $2}'); do
  dep=$(apt-cache depends "linux-image-amd64=$ver" 2>/dev/null |
        awk '/Depends: linux-image-6\.1\.[0-9]+-[0-9]+-amd64$/ {print $2; exit}')
  if [ -n "$dep" ]; then pkg="$dep"; break; fi
done
if [ -z "$pkg" ]; then
  echo "kernel.sh: no linux-image-6.1.*-amd64 found behind linux-image-amd64 (run apt-get update)" >&2
  exit 1
fi
want="$pkg $(apt-cache policy "$pkg" | awk '/Candidate:/ {print $2}')"

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -e "$dest/vmlinuz" ]; then
  echo "kernel.sh: $want already unpacked in $dest"
  exit 0
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "kernel.sh: downloading $want"
# apt's _apt sandbox user cannot write into a root-owned mktemp dir; downloading as root is fine
# since we only unpack files, never run maintainer scripts.
(cd "$tmp" && apt-get download -q -o APT::Sandbox::User=root "$pkg")
mkdir -p "$tmp/x"
dpkg -x "$tmp"/"$pkg"_*.deb "$tmp/x"

kver="${pkg#linux-image-}"
src="$tmp/x/lib/modules/$kver"
new="$dest.new"
rm -rf "$new"
mkdir -p "$new/boot" "$new/lib/modules/$kver"
cp "$tmp/x/boot/vmlinuz-$kver" "$new/boot/"
ln -s "boot/vmlinuz-$kver" "$new/vmlinuz"
keep=(
  kernel/drivers/virtio
  kernel/drivers/net/virtio_net.ko
  kernel/drivers/net/net_failover.ko
  kernel/net/core/failover.ko
  kernel/drivers/char/virtio_console.ko
  kernel/drivers/block/virtio_blk.ko
  kernel/drivers/char/hw_random/virtio-rng.ko
  modules.builtin
  modules.builtin.modinfo
  modules.order
)
for k in "${keep[@]}"; do
  if [ -e "$src/$k" ]; then
    mkdir -p "$new/lib/modules/$kver/$(dirname "$k")"
    cp -a "$src/$k" "$new/lib/modules/$kver/$k"
  fi
done
echo "$kver" > "$new/kernel-release"
echo "$want" > "$new/package"
rm -rf "$dest.old"
[ -e "$dest" ] && mv "$dest" "$dest.old"
mv "$new" "$dest"
rm -rf "$dest.old"
echo "kernel.sh: $want unpacked into $dest (vmlinuz + virtio modules)"
