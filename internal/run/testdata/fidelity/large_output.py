# About 560 KB on stdout with progress lines on stderr.
import sys

for i in range(20000):
    print(f"{i:06d} " + "x" * 20)
    if i % 2500 == 0:
        print(f"progress {i}", file=sys.stderr)
print("done", file=sys.stderr)
