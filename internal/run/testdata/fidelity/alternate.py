# Alternates stdout and stderr 1,000 times, flushing each line.
import sys

for i in range(1000):
    print("out", i, flush=True)
    print("err", i, file=sys.stderr, flush=True)
