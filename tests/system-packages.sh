#!/usr/bin/env bash
# The Debian packages the tests drive for real: PostgreSQL (tests/test_team.py), Chromium
# (tests/test_ui.py; Playwright's own browser download cannot work here) and nginx
# (tests/test_serving.py). `make test` runs this first: it installs what is missing when it can
# (root, or passwordless sudo, and apt-get), and otherwise says in one line what to install.
set -euo pipefail

missing=()
compgen -G '/usr/lib/postgresql/*/bin/pg_ctl' >/dev/null || command -v pg_ctl >/dev/null || missing+=(postgresql)
command -v chromium >/dev/null || missing+=(chromium)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx)
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -eq 0 ]; then
  as_root=()
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
  as_root=(sudo -n)
else
  echo "make test: the tests need Debian's ${missing[*]}: run \`sudo apt-get install ${missing[*]}\`, then \`make test\` again" >&2
  exit 1
fi
if ! command -v apt-get >/dev/null; then
  echo "make test: the tests need ${missing[*]} (Debian package names), and this system has no apt-get: install them, then \`make test\` again" >&2
  exit 1
fi
echo "make test: installing Debian's ${missing[*]} for the tests that drive them"
"${as_root[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${as_root[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
