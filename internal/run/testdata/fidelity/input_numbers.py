# Asks until it gets whole numbers; errors go to stderr between prompts.
import sys


def ask(prompt):
    while True:
        s = input(prompt)
        try:
            return int(s)
        except ValueError:
            print(f"Error: {s!r} is not a whole number, try again.", file=sys.stderr)


a = ask("First number: ")
b = ask("Second number: ")
print(f"{a} + {b} = {a + b}")
