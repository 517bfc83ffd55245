"""sealboot's cloud-init datasource package (``datasource_pkg_list: [sealboot_cloudinit]``)."""
