# Counts lines until end of input (Ctrl-D on a terminal).
import sys

lines = [line.rstrip("\n") for line in sys.stdin]
print(len(lines), "lines:", lines)
