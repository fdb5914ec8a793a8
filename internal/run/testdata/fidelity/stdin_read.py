# Reads all of stdin at once.
import sys

data = sys.stdin.read()
print(len(data), "characters,", data.count("\n"), "newlines")
print(data[::-1])
