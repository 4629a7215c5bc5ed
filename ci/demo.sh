#!/usr/bin/env bash
# The main job: start vhost-user-mali, boot a Linux guest under QEMU 10
# (TCG) with the daemon attached as its virtio-gpu, and show both sides: what
# the guest's driver and probe report, then the daemon's log of the same
# boot, command by command.
#
# Installs what it needs on first use (see ci/guest-build.sh). Extra
# arguments go to ci/e2e.sh (for example --timeout 300).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash ci/e2e.sh --boots 1 --daemon-arg --log-level --daemon-arg debug "$@"

printf '\n==> What the daemon did during that boot (ci/out/daemon.log)\n'
# The vhost-user library's own debug lines are noise here; keep the
# daemon's.
grep -E 'vhost_user_mali' ci/out/daemon.log | sed -e 's/^\[[^ ]* //'
printf '\nThe guest console is in ci/out/console-1.log.\n'
