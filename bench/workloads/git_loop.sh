#!/bin/sh
# Workload: git init, commit N files, edit them all, diff, commit again.   git_loop.sh DIR N
set -e
cd "$1"
rm -rf repo
mkdir repo
cd repo
git init -q .
i=0
while [ "$i" -lt "$2" ]; do
    printf 'line one of file %s\nline two\n' "$i" > "file_$i.txt"
    i=$((i + 1))
done
git add -A
git commit -q -m "first"
i=0
while [ "$i" -lt "$2" ]; do
    printf 'an edit to file %s\n' "$i" >> "file_$i.txt"
    i=$((i + 1))
done
git diff --stat > /dev/null
git diff > /dev/null
git commit -q -a -m "second"
git log --oneline > /dev/null
