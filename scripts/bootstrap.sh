#!/bin/bash
# Create the virtualenv and install sealboot with its test tools. Idempotent.
set -euo pipefail
python="${PYTHON:-python3}"
venv="${VENV:-.venv}"

if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 9))' 2>/dev/null; then
    echo "bootstrap: $python is missing or older than 3.9" >&2
    exit 1
fi
if [ ! -x "$venv/bin/python" ]; then
    if ! "$python" -m venv "$venv" 2>/dev/null; then
        # Debian ships venv/ensurepip separately.
        rm -rf "$venv"
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
            ver="$("$python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
            echo "bootstrap: installing python${ver}-venv with apt-get" >&2
            apt-get update -qq
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "python${ver}-venv" >/dev/null
            "$python" -m venv "$venv"
        else
            echo "bootstrap: '$python -m venv' failed; install python3-venv" >&2
            exit 1
        fi
    fi
fi
echo "bootstrap: installing sealboot and test tools into $venv" >&2
"$venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
"$venv/bin/python" -m pip install -q --disable-pip-version-check -r requirements-dev.txt -e .
