"""`make bench`: boot-path latency, boot storm, bulk seal and agent footprint on the local stack."""
