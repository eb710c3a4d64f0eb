#!/bin/bash
# dracut module: make the read-only verity root a normal system before the
# switch to it (kubermesh-sysroot.sh). Installed into the image by image/tree.py.

check() {
    return 255 # only when asked for (image/initrd.py names it)
}

depends() {
    echo systemd
}

installkernel() {
    hostonly='' instmods ext4 overlay loop squashfs dm-verity
}

install() {
    inst_multiple systemd-repart mkfs.ext4 e2fsck mount mkdir cp mv tr readlink \
        basename dirname grep udevadm modprobe losetup blkid
    inst_script "$moddir/kubermesh-sysroot.sh" /usr/lib/kubermesh/kubermesh-sysroot.sh
    inst_simple "$moddir/kubermesh-sysroot.service" \
        "$systemdsystemunitdir/kubermesh-sysroot.service"
    inst_simple "$moddir/kubermesh-netroot.service" \
        "$systemdsystemunitdir/kubermesh-netroot.service"
    $SYSTEMCTL -q --root "$initdir" add-wants initrd-fs.target kubermesh-sysroot.service
    $SYSTEMCTL -q --root "$initdir" add-wants sysinit.target kubermesh-netroot.service
}
