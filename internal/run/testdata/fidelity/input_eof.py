# Reads lines until end of input.
import sys

count = 0
while True:
    try:
        line = input(f"[{count}] ")
    except EOFError:
        print()
        print("EOF after", count, "lines", file=sys.stderr)
        break
    count += 1
    print(line.upper())
