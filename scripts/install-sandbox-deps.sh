#!/usr/bin/env bash
# The OS packages the code sandbox needs (idempotent): bubblewrap (namespaces) and libseccomp
# (the syscall filter; its Python bindings come from envs/cpu.txt). Debian/Ubuntu via apt-get,
# as root or with sudo. Elsewhere, or without the rights, it says what to install and goes on:
# the sandbox then reports isolated=false (see README, "Code sandbox and graders").
set -euo pipefail
missing=()
command -v bwrap >/dev/null 2>&1 || missing+=(bubblewrap)
ldconfig -p 2>/dev/null | grep -q 'libseccomp\.so\.2' || missing+=(libseccomp2)
command -v setpriv >/dev/null 2>&1 || missing+=(util-linux)
[ ${#missing[@]} -eq 0 ] && exit 0
if command -v apt-get >/dev/null 2>&1; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo -n"; else
      echo "install-sandbox-deps: need root to install ${missing[*]}; the sandbox will say it cannot isolate" >&2
      exit 0
    fi
  fi
  echo "install-sandbox-deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1 || {
    $SUDO apt-get update -qq >/dev/null && $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null; }
else
  echo "install-sandbox-deps: install ${missing[*]} with your package manager; the sandbox will say it cannot isolate" >&2
fi
