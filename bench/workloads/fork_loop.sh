#!/bin/sh
# Workload: a shell loop that forks and execs N short commands.   fork_loop.sh N
i=0
while [ "$i" -lt "$1" ]; do
    /bin/true
    i=$((i + 1))
done
