#!/bin/sh
# Runs in the initrd once the dm-verity root is mounted on /sysroot, before the
# switch to it. It makes the read-only root a normal system:
#   /var        persistent: a partition in the boot disk's free space, made on
#               first boot by systemd-repart and found again by its label; RAM
#               when the root is not on a disk (netboot) or the disk is full
#   /var        then filled with whatever the image's /var had that it lacks
#   /etc        writable: a RAM overlay over the image's /etc; changes last one
#               boot, so /etc is always the image's plus what this boot made
#   machine-id  kept on /var, so a node keeps it across reboots
#   the site    from the disk's own site partition into RAM, root only: the root
#               is served to neighbours and holds no secret (image/disk.py)
set -eu
SYSROOT=/sysroot
STATE=$SYSROOT/var/lib/kubermesh
LABEL=kubermesh-var
SITE_LABEL=kubermesh-site
SITE=/run/kubermesh/site.toml

say() { echo "kubermesh-sysroot: $*"; }

# The whole disk under the dm-verity root's partitions, if it is on a disk.
root_disk() {
    dm=$(basename "$(readlink -f /dev/mapper/root)")
    for s in /sys/class/block/"$dm"/slaves/*; do
        [ -e "$s/partition" ] || return 1
        basename "$(dirname "$(readlink -f "$s")")"
        return 0
    done
    return 1
}

# The partition of disk $1 whose GPT label is $2. Read from the disk itself: a
# partition systemd-repart has just added is known to the kernel without its label.
partition() {
    for p in /sys/class/block/"$1"/"$1"*; do
        [ -e "$p/partition" ] || continue
        dev="/dev/$(basename "$p")"
        if [ "$(blkid -p -o value -s PART_ENTRY_NAME "$dev" 2>/dev/null)" = "$2" ]; then
            echo "$dev"
            return 0
        fi
    done
    return 1
}

mount_var() {
    if disk=$(root_disk); then
        if ! dev=$(partition "$disk" $LABEL); then
            say "first boot: making /var in the free space of /dev/$disk"
            modprobe -q loop || :
            systemd-repart --dry-run=no --no-pager --seed=random \
                --definitions=$SYSROOT/usr/lib/kubermesh/repart.d "/dev/$disk" \
                || say "systemd-repart could not make /var on /dev/$disk"
            udevadm settle --timeout=30 || :
            dev=$(partition "$disk" $LABEL) || dev=""
        fi
        if [ -n "$dev" ]; then
            rc=0
            e2fsck -p "$dev" || rc=$?
            [ $rc -le 1 ] || say "e2fsck $dev: status $rc"
            if mount -t ext4 "$dev" $SYSROOT/var; then
                say "/var is $dev"
                return 0
            fi
        fi
        say "no usable /var partition on /dev/$disk: /var is in RAM"
    else
        say "the root is not on a disk: /var is in RAM"
    fi
    mount -t tmpfs -o mode=0755 tmpfs $SYSROOT/var
}

install_site() {
    if ! disk=$(root_disk) || ! dev=$(partition "$disk" $SITE_LABEL); then
        say "no site partition: the node has no site until it is approved"
        return 0
    fi
    mkdir -p -m 0755 /run/kubermesh
    (umask 077; tr -d '\000' < "$dev" > $SITE.tmp && mv $SITE.tmp $SITE)
    say "the site is from $dev"
}

mount_var
install_site
cp -a -n $SYSROOT/usr/share/factory/var/. $SYSROOT/var/

mkdir -p /run/kubermesh/etc/upper /run/kubermesh/etc/work
mount -t overlay overlay \
    -o lowerdir=$SYSROOT/etc,upperdir=/run/kubermesh/etc/upper,workdir=/run/kubermesh/etc/work \
    $SYSROOT/etc

mkdir -p $STATE
if [ ! -s $STATE/machine-id ]; then
    tr -d '-' < /proc/sys/kernel/random/uuid > $STATE/machine-id
fi
cp $STATE/machine-id $SYSROOT/etc/machine-id
say "machine-id $(cat $STATE/machine-id)"
