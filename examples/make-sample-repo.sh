#!/usr/bin/env bash
# Makes DEST a git repository holding examples/sample-app as one commit (what `make run` scans).
set -euo pipefail
src="$(cd "$(dirname "$0")" && pwd)/sample-app"
dest="$1"
rm -rf "$dest"
mkdir -p "$dest"
cp -R "$src/." "$dest/"
git -C "$dest" init -q -b main
git -C "$dest" add -A
git -C "$dest" -c user.name=runner -c user.email=runner@localhost commit -q -m "Sample application with planted problems"
