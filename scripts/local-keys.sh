#!/usr/bin/env bash
# make run's own local keys: generated once into var/local.env (mode 600, never committed: var/ is
# ignored), then printed on demand, so `make run` exports them explicitly. The settings have no
# default key; production sets its own (README, "Production").
#
#   scripts/local-keys.sh SECRET_KEY    # prints the value (creating var/local.env first if needed)
#   . var/local.env                     # the same keys in a shell, for manage.py commands
set -euo pipefail
cd "$(dirname "$0")/.."
file=var/local.env
if [ ! -s "$file" ]; then
  mkdir -p var
  umask 077
  # 50 random bytes for Django; a Fernet key is 32 random bytes, url-safe base64.
  python=${PYTHON:-python3}
  secret_key=$("$python" -c 'import secrets; print(secrets.token_urlsafe(50))')
  fernet_key=$("$python" -c 'import base64, os; print(base64.urlsafe_b64encode(os.urandom(32)).decode())')
  printf '# Local keys of `make run` (made %s). Not for production.\nexport SECRET_KEY=%s\nexport SECRETS_ENCRYPTION_KEYS=%s\n' \
    "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$secret_key" "$fernet_key" > "$file.tmp"
  mv "$file.tmp" "$file"
fi
if [ $# -gt 0 ]; then
  value=$(sed -n "s/^export $1=//p" "$file")
  [ -n "$value" ] || { echo "ERROR: $1 is not in $file" >&2; exit 1; }
  printf '%s\n' "$value"
fi
