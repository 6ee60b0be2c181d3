#!/usr/bin/env bash
# Print the interpreter the Makefile should build .venv with: python3.12 when it
# really runs (a pyenv shim can exist and still fail), else python3.
set -u
try() { "$@" -c 'import sys; assert sys.version_info >= (3, 11)' >/dev/null 2>&1; }
if try python3.12; then echo python3.12; exit 0; fi
if command -v pyenv >/dev/null 2>&1; then
  v=$(pyenv versions --bare 2>/dev/null | grep -E '^3\.12(\.[0-9]+)?$' | sort -V | tail -1)
  if [ -n "$v" ]; then
    p=$(PYENV_VERSION="$v" pyenv which python3.12 2>/dev/null)
    if [ -n "$p" ] && try "$p"; then echo "$p"; exit 0; fi
  fi
fi
echo python3
