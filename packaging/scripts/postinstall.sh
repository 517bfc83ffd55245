#!/bin/sh
# .deb postinst / .rpm %post of sealboot-agent: check the interpreter, pre-extract and byte-compile
# the agent for it, drop extractions of older builds. The same step as packaging/install.sh.
set -e
exec /usr/lib/sealboot/install.sh --prepare
