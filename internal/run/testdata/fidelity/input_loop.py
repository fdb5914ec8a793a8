# A calculator loop: prompts on stdout, complaints on stderr.
import sys

print("Calculator. Type 'quit' to stop.")
total = 0
while True:
    line = input("> ")
    if line == "quit":
        break
    try:
        total += float(line)
    except ValueError:
        print(f"not a number: {line!r}", file=sys.stderr)
        continue
    print("total:", total)
print("bye, total", total)
