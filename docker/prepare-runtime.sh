#!/bin/sh
# Runtime stage of the Dockerfile (runs as root, once): the distribution's python3 (and
# tini, in the same apt transaction) when the base has no Python, the non-root user,
# and the directories the daemon writes.  Touches apt only when Python is missing.
set -eu
uid=${SHMPIPED_UID:-10001}

if ! command -v python3 >/dev/null 2>&1; then
    command -v apt-get >/dev/null 2>&1 || { echo "prepare-runtime: the base has no python3 and no apt-get" >&2; exit 1; }
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends python3 tini ca-certificates >/dev/null
    apt-get clean
    rm -rf /var/lib/apt/lists/*
fi

if ! getent group "$uid" >/dev/null 2>&1; then
    if command -v groupadd >/dev/null 2>&1; then
        groupadd --system --gid "$uid" shmpiped
    else
        echo "shmpiped:x:$uid:" >>/etc/group
    fi
fi
if ! getent passwd "$uid" >/dev/null 2>&1; then
    if command -v useradd >/dev/null 2>&1; then
        useradd --system --uid "$uid" --gid "$uid" --home-dir /var/lib/shmpiped --no-create-home \
            --shell /usr/sbin/nologin shmpiped
    else
        echo "shmpiped:x:$uid:$uid:shmpiped:/var/lib/shmpiped:/usr/sbin/nologin" >>/etc/passwd
    fi
fi

# /run/shmpiped: the control socket (SHMPIPED_CONTROL_SOCKET).  Sticky and writable by all, like
# /tmp, so that `docker run --user UID:GID` (the host user who reads the streams) can create it too.
# /var/lib/shmpiped: the working directory; /etc/shmpiped: where the pipeline file is mounted.
install -d -m 1777 -o "$uid" -g "$uid" /run/shmpiped
install -d -m 0755 -o "$uid" -g "$uid" /var/lib/shmpiped
install -d -m 0755 /etc/shmpiped
chmod 0755 /usr/local/bin/shmpiped-entrypoint
chmod 0644 /usr/local/lib/shmpiped/healthcheck.py
