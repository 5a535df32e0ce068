#!/usr/bin/env bash
# peak_rss.sh PID: samples the process's private resident memory (RssAnon: heap and work memory,
# not the shared buffers it maps) five times a second until it exits; prints the peak in KiB.
set -uo pipefail
pid=$1
peak=0
while rss=$(awk '/^RssAnon:/ {print $2}' "/proc/$pid/status" 2>/dev/null) && [ -n "$rss" ]; do
    [ "$rss" -gt "$peak" ] && peak=$rss
    sleep 0.2
done
echo "$peak"
