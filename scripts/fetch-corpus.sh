#!/usr/bin/env bash
# Fetches Blyan's training corpus from Debian's package archive and writes it as
# data/corpus/kjv.tsv: one verse per line, "Book C:V<TAB>text".
#
# Source: the King James Version of the Bible from Debian's `bible-kjv-text` package
# (the text is in the public domain), decoded by the `bible` program of `bible-kjv`.
# Nothing is installed system-wide: both packages are downloaded and unpacked in a
# temporary directory. Needs apt-get (Debian or Ubuntu) and a route to a Debian mirror.
#
# Usage: scripts/fetch-corpus.sh [OUT]    (default: data/corpus/kjv.tsv)
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:-$root/data/corpus/kjv.tsv}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

cd "$work"
apt-get download bible-kjv bible-kjv-text >/dev/null 2>&1 \
    || { echo "apt-get download bible-kjv bible-kjv-text failed" >&2; exit 1; }
for deb in ./*.deb; do dpkg-deb -x "$deb" unpacked; done

# -l with a huge width puts every verse on one line. Headings are "Book N"; verses are
# "  V text".
unpacked/usr/bin/bible -p unpacked/usr/lib -l1000000 "Gen1:1-Rev22:21" \
    | awk '
        /^$/ { next }
        /^  *[0-9]+ / {
            v = $1; sub(/^ *[0-9]+ /, ""); sub(/[ \t]+$/, "")
            printf "%s:%s\t%s\n", heading, v, $0
            next
        }
        { heading = $0 }
    ' > "$work/kjv.tsv"

lines=$(wc -l < "$work/kjv.tsv")
if [ "$lines" -ne 31102 ]; then
    echo "expected 31102 verses, got $lines" >&2
    exit 1
fi
mkdir -p "$(dirname "$out")"
mv "$work/kjv.tsv" "$out"
echo "wrote $out ($lines verses, sha256 $(sha256sum "$out" | cut -d' ' -f1))"
