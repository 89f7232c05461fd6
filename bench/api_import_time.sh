#!/bin/bash
# import time of `import vggtune`: the package before (669e419's __init__) and after (this branch), 20 runs each
# OLD: a folder holding vggtune/__init__.py of the commit before the API (git show 669e419:src/vggtune/__init__.py)
. ${VENV:-.venv}/bin/activate
cd /tmp
for label in before after; do
  if [ $label = before ]; then export PYTHONPATH=${OLD:-/tmp/old}; else unset PYTHONPATH; fi
  python -c "import vggtune; print('$label', vggtune.__file__)"
  for i in $(seq 20); do python -X importtime -c "import vggtune" 2>&1 | awk -F'|' '/ vggtune$/ {print $2}'; done | sort -n | awk '{a[NR]=$1} END {print "  self+children us: min", a[1], "median", a[int((NR+1)/2)], "max", a[NR]}'
  for i in $(seq 10); do /usr/bin/time -f "%e" python -c "import vggtune" 2>&1; done | sort -n | awk '{a[NR]=$1} END {print "  whole python -c import vggtune (s): min", a[1], "median", a[int((NR+1)/2)]}'
done
unset PYTHONPATH
for i in $(seq 5); do /usr/bin/time -f "%e" vggtune --version 2>&1 >/dev/null; done | sort -n | awk '{a[NR]=$1} END {print "vggtune --version (s, after): min", a[1], "median", a[int((NR+1)/2)]}'
lscpu | grep -E "Model name"
