#!/bin/bash
# libvirt for the `libvirt` engine. Nothing to configure: crbench uses a running libvirtd at
# qemu:///system when there is one, and otherwise starts its own virtlogd + libvirtd (no systemd
# needed) with sockets in /run/crbench/libvirtd (0700), stopping them after the run.
# This only checks that the binaries the engine starts are present after the package install, and
# makes sure the directories a privileged libvirtd expects exist (a container image may lack them).
set -euo pipefail
for b in /usr/sbin/libvirtd /usr/sbin/virtlogd; do
  if [ ! -x "$b" ]; then
    echo "libvirt.sh: $b missing: install libvirt-daemon-system from bookworm-backports" >&2
    exit 1
  fi
done
install -d -m 0755 /var/lib/libvirt /var/log/libvirt
install -d -m 0755 /var/log/libvirt/qemu
echo "libvirt.sh: libvirtd $(/usr/sbin/libvirtd --version | awk '{print $NF}') present"
