#!/bin/sh
# .deb prerm / .rpm %preun of sealboot-agent: on removal (not on upgrade), delete what the agent
# extracted, so that the package manager can remove the now empty /var/cache/sealboot-agent.
# dpkg passes "remove" (or "upgrade VERSION"); rpm passes the number of versions left: 0 on erase.
set -e
case "${1:-}" in
    remove | purge | 0)
        rm -rf /var/cache/sealboot-agent/* /var/cache/sealboot-agent/.[!.]*
        # The datasource drop-in names a package that is about to go: cloud-init would fail
        # every stage with ModuleNotFoundError. Remove both; the boothook path still works.
        rm -f /etc/cloud/cloud.cfg.d/96-sealboot-datasource.cfg
        for site in /usr/lib/python3/dist-packages /usr/lib/python3*/site-packages; do
            rm -rf "$site/sealboot_cloudinit"
        done
        ;;
esac
exit 0
